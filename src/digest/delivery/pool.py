"""Sender processes: one edition sent over several SMTP connections at once, with a stop that
reaches all of them.

`deliver_in_pool` renders each variant once, then starts `smtp.connections` sender processes
(`pool_sender`), each with its own database session, SMTP connection, sender id and journal, all
running the same claim -> send -> record loop (`sender.run_sender`) on the edition.

Underneath, `run_processes(target, jobs, stop)` starts one process per job, each calling
``target(job, stop)``, and returns their results in order. The processes' own ``stop()`` turns
true when:

- the caller's ``stop()`` turns true (the parent polls it and sends each process SIGTERM);
- a process receives SIGTERM or SIGINT itself (a service manager signalling the whole process
  group, or Ctrl-C in a terminal): it finishes the message in flight and returns;
- the parent process disappears (killed, even with SIGKILL): the processes notice within
  ``PARENT_CHECK`` seconds and stop the same way, so no orphan keeps mailing.

Start method: ``fork`` when the calling process has a single thread (the CLI: cheapest, nothing
is pickled or imported again), else ``forkserver`` (forking a multi-threaded process can
deadlock the child on a lock another thread held), which needs the jobs to be picklable.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, TypeVar

from sqlmodel import Session

from digest.clock import Clock
from digest.content.editions import edition_view
from digest.delivery.claims import new_sender_id
from digest.delivery.journal import settle_dead_senders
from digest.delivery.ledger import SQLLedger
from digest.delivery.sender import DeliveryReport, SenderSettings, run_sender
from digest.delivery.variants import RenderedVariants, Variants, VariantSettings
from digest.errors import DeliveryError, DigestError
from digest.mail.mailer import Mailer
from digest.store.database import make_engine
from digest.store.database import session as new_session
from digest.store.models import Edition, as_utc, parse_topics, stored_id

log = logging.getLogger(__name__)

PARENT_CHECK = 0.25  # seconds between checks that the parent is still there
POLL = 0.1  # seconds between the parent's polls of stop()
TICK = 0.5  # seconds between two calls of the parent's tick() (the progress of a send)

Job = TypeVar("Job")


@dataclass
class ProcessResult:
    """What became of one process: its target's return value, or one line saying what went wrong."""

    ok: bool
    value: object = None  # target's return value when ok
    error: str = ""  # one line when not ok
    exitcode: int | None = None


def can_share(database_url: str) -> bool:
    """Whether other processes can open this database (not an in-memory SQLite)."""
    if database_url.startswith("sqlite"):
        rest = database_url.split("://", 1)[-1]
        return rest not in ("", "/") and ":memory:" not in rest and "mode=memory" not in rest
    return True


def start_method() -> str:
    methods = mp.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


class CannotStart(Exception):
    """The jobs cannot be handed to processes started this way (not picklable)."""


def run_processes(target: Callable[[Job, Callable[[], bool]], object], jobs: Sequence[Job], stop: Callable[[], bool], *,
                  method: str | None = None, tick: Callable[[], None] | None = None) -> list[ProcessResult]:
    """Run ``target(job, stop)`` for each job in its own process; the results, in order.
    CannotStart (before any process starts) when the jobs would have to be pickled and cannot.
    ``tick()`` is called about every TICK seconds while the parent waits for the processes (a
    thread for it would make the next start method forkserver)."""
    method = method or start_method()
    log.debug("starting %d processes with %s", len(jobs), method)
    if method != "fork":
        try:
            pickle.dumps((target, list(jobs)))
        except Exception as exc:  # noqa: BLE001 PicklingError, TypeError, AttributeError: a lambda, a socket...
            raise CannotStart(f"cannot hand the job to a {method} process: {exc}") from None
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload([target.__module__])  # the target's module, loaded once in the server
    procs: list[tuple[BaseProcess, Connection[Any, Any]]] = []
    frozen = method == "fork"
    if frozen:
        gc.freeze()  # keep the collector from touching (and so copying) the parent's objects
    try:
        for job in jobs:
            reader, writer = ctx.Pipe(duplex=False)
            # typeshed gives get_context(str) the BaseContext, which declares no Process
            p = ctx.Process(target=_child, args=(target, job, writer), daemon=True,  # type: ignore[attr-defined]
                            name="digest-sender")
            p.start()
            writer.close()
            procs.append((p, reader))
    except BaseException:
        _signal_all([p for p, _ in procs])
        for p, _ in procs:
            p.join()
        raise
    finally:
        if frozen:
            gc.unfreeze()

    outcomes: list[ProcessResult | None] = [None] * len(procs)
    signalled = False
    interrupted: BaseException | None = None
    ticked = time.monotonic()
    while any(o is None for o in outcomes):
        try:
            if tick is not None and time.monotonic() - ticked >= TICK:
                ticked = time.monotonic()
                tick()
            if not signalled and stop():
                _signal_all([p for p, _ in procs])
                signalled = True
            waiting = [i for i, o in enumerate(outcomes) if o is None]
            wait([procs[i][1] for i in waiting] + [procs[i][0].sentinel for i in waiting], timeout=POLL)
            for i in waiting:
                p, reader = procs[i]
                if reader.poll():
                    try:
                        outcomes[i] = _outcome(reader.recv())
                    except (EOFError, OSError):
                        p.join()
                        outcomes[i] = _died(p)
                elif not p.is_alive():
                    outcomes[i] = _died(p)
        except KeyboardInterrupt as exc:  # Ctrl-C: the processes got SIGINT too; make sure, then wait
            interrupted = exc
            if not signalled:
                _signal_all([p for p, _ in procs])
                signalled = True
    done = [o for o in outcomes if o is not None]  # all of them: the loop above ran until then
    for (p, reader), outcome in zip(procs, done, strict=True):
        p.join()
        reader.close()
        outcome.exitcode = p.exitcode
    if interrupted is not None:
        raise interrupted
    return done


def _signal_all(procs: Sequence[BaseProcess]) -> None:
    for p in procs:
        if p.is_alive() and p.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)


def _outcome(message: tuple[str, Any]) -> ProcessResult:
    kind, payload = message
    if kind == "ok":
        return ProcessResult(True, payload)
    return ProcessResult(False, error=payload)


def _died(p: BaseProcess) -> ProcessResult:
    code = p.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    return ProcessResult(False, error=f"sender process {p.pid} died ({how}); its unfinished work stays pending")


def _signal_when_parent_dies(signum: int) -> None:
    """Linux: have the kernel send `signum` to this process when its parent exits, however it
    exits (prctl PR_SET_PDEATHSIG). Elsewhere the polling in stop() does it, a little later."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signum, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child(target: Callable[[Job, Callable[[], bool]], object], job: Job, conn: Connection[Any, Any]) -> None:
    stopping = False
    checked = time.monotonic()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parent = mp.parent_process()
    ppid = os.getppid()
    _signal_when_parent_dies(signal.SIGTERM)
    if os.getppid() != ppid:  # it died before the line above
        stopping = True

    def stop() -> bool:
        nonlocal stopping, checked
        if stopping:
            return True
        now = time.monotonic()
        if now - checked >= PARENT_CHECK:
            checked = now
            # Reparented (the parent, or the fork server, is gone) or the parent's pipe closed.
            if os.getppid() != ppid or (parent is not None and not parent.is_alive()):
                stopping = True
        return stopping

    try:
        result = target(job, stop)
    except BaseException as exc:  # noqa: BLE001 reported to the parent, which decides
        if isinstance(exc, DigestError):
            message = ("error", str(exc))
        else:
            message = ("error", f"sender process {os.getpid()} failed: {exc!r}\n{traceback.format_exc()}")
        with contextlib.suppress(OSError):
            conn.send(message)
        return
    with contextlib.suppress(OSError):
        conn.send(("ok", result))


# ---------------------------------------------------------------------------------------------
# The sender pool


@dataclass
class SenderJob:
    """What a sender process needs; picklable (the pool may start processes with forkserver)."""

    sender: SenderSettings
    variants: VariantSettings
    database_url: str
    edition_id: int
    subject: str
    date: datetime
    rendered: RenderedVariants
    mailer_factory: Callable[[], Mailer]
    clock: Clock
    rate: float


def deliver_in_pool(session: Session, edition: Edition, variants: Variants, factory: Callable[[], Mailer],
                    clock: Clock, cfg: SenderSettings, variant_cfg: VariantSettings, *, database_url: str,
                    rate_limit: float, stop: Callable[[], bool], n: int,
                    tick: Callable[[], None] | None = None) -> DeliveryReport:
    """Send `edition` from `n` sender processes, each over its own `factory()` mailer, sharing
    `rate_limit` (messages a second, 0: none). Falls back to this process and one connection when
    the job cannot go to another process. `tick()`: see run_processes."""
    ledger = SQLLedger(session)
    edition_id = stored_id(edition)
    # Render, here and once, every variant the pending deliveries need (a sender process that
    # meets another one renders it itself).
    for topics, catch_up_from in ledger.pending_variants(edition_id):
        variants.render(variants.key(parse_topics(topics), catch_up_from))
    session.commit()  # hold no transaction while the senders write
    job = SenderJob(cfg, variant_cfg, database_url, edition_id, edition.subject, variants.date, variants.rendered,
                    factory, clock, rate_limit / n)
    try:
        results = run_processes(pool_sender, [job] * n, stop, tick=tick)
    except CannotStart as exc:
        log.warning("sending from this process over one connection: %s", exc)
        mailer = factory()
        try:
            return run_sender(ledger, edition_id, edition.number, variants, mailer, clock, cfg,
                              sender=new_sender_id(), stop=stop, rate=rate_limit, tick=tick)
        finally:
            mailer.close()
    report = DeliveryReport(edition.number)
    errors: list[str] = []
    for result in results:
        if result.ok:
            report.merge(result.value)  # type: ignore[arg-type]
        else:
            errors.append(result.error)
    if errors:
        # A sender that died leaves its journal and its claims: settle them now.
        settle_dead_senders(ledger, cfg.journal_dir)
        if ledger.count_due(edition_id, as_utc(clock())):
            raise DeliveryError(errors[0])
    return report


def pool_sender(job: SenderJob, stop: Callable[[], bool]) -> DeliveryReport:
    """Runs in a sender process: its own engine, session, mailer and sender id."""
    engine = make_engine(job.database_url)
    try:
        with new_session(engine) as s:
            edition = s.get(Edition, job.edition_id)
            if edition is None:  # the parent read it in the same database before starting this process
                raise DeliveryError(f"edition {job.edition_id} is not in the database")
            variant_cfg = job.variants
            variants = Variants(
                lambda catch_up_from: edition_view(s, edition, variant_cfg.sections, catch_up_from=catch_up_from),
                job.subject,
                variant_cfg.newsletter,
                variant_cfg.renderer,
                job.date,
                variant_cfg.signer(),
                job.rendered,
            )
            mailer = job.mailer_factory()
            try:
                return run_sender(SQLLedger(s), job.edition_id, edition.number, variants,
                                  mailer, job.clock, job.sender,
                                  sender=new_sender_id(), stop=stop, rate=job.rate)
            finally:
                mailer.close()
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# A process beside a polling one


class Companion:
    """A process forked beside this one by `start_companion`, running its target until close(),
    a SIGTERM or SIGINT of its own, or this process's end (it dies with it, like the sender
    processes). `wake()` cuts its current wait short."""

    def __init__(self, process: BaseProcess, waker: Connection[Any, Any], results: Connection[Any, Any]):
        self.process = process
        self._waker = waker
        self._results = results

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._waker.send_bytes(b"")

    def close(self, timeout: float) -> ProcessResult:
        """Stop it after the work in flight (it gets `timeout` seconds, then SIGKILL); what became of it."""
        _signal_all([self.process])
        self._waker.close()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        try:
            outcome = _outcome(self._results.recv()) if self._results.poll() else _died(self.process)
        except (EOFError, OSError):
            outcome = _died(self.process)
        self._results.close()
        outcome.exitcode = self.process.exitcode
        return outcome


def start_companion(target: Callable[[Callable[[], bool], Callable[[float], None]], object], *,
                    name: str) -> Companion | None:
    """Fork a process that runs ``target(stop, wait)``: `stop()` turns true as in run_processes (or
    when this process closes the wake pipe), `wait(seconds)` sleeps until then, a wake() or a stop.
    None when this process has more than one thread: forking it could deadlock the child, and with
    a thread alive the sender pool cannot fork anyway (the caller may as well use a thread).

    Started before any thread (a polling `digest worker` does it first), it keeps this process
    single-threaded, so that its sender processes are forked: forkserver costs ~15 % of the
    throughput and ~70 MB (docs/delivery.md)."""
    if start_method() != "fork":
        return None
    ctx = mp.get_context("fork")
    wake_reader, waker = ctx.Pipe(duplex=False)
    reader, writer = ctx.Pipe(duplex=False)

    def run(_job: None, parent_stop: Callable[[], bool]) -> object:
        waker.close()  # the child's copy: the parent's closing (or dying) leaves the reader at EOF
        reader.close()
        closed = False

        def stop() -> bool:
            return closed or parent_stop()

        def wait(seconds: float) -> None:
            nonlocal closed
            deadline = time.monotonic() + seconds
            while not stop() and (left := deadline - time.monotonic()) > 0:
                if wake_reader.poll(min(left, PARENT_CHECK)):  # (stop() checks the parent every PARENT_CHECK)
                    try:
                        while wake_reader.poll():
                            wake_reader.recv_bytes()
                    except (EOFError, OSError):
                        closed = True
                    return

        return target(stop, wait)

    p = ctx.Process(target=_child, args=(run, None, writer), daemon=True, name=name)
    p.start()
    wake_reader.close()
    writer.close()
    return Companion(p, waker, reader)
