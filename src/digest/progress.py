"""Progress of a long `digest send`, `fetch` or `subscribers import`, on standard error: a rich bar
when standard error is a terminal, else a log line (INFO) every `every` seconds. Short jobs show
nothing: a job is long once it has run MIN_SECONDS (or `every`, if shorter), or, for a send, has
more than MIN_TOTAL deliveries; its first log line is written then. No line says a job is done:
the command's own summary follows at once.

No thread is started, not even rich's refresh thread (auto_refresh=False: the bar is redrawn on each
update): `digest send` starts its sender processes with fork only while it has a single thread
(delivery.pool.start_method), and forkserver costs it ~15% of its speed and ~70 MB."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

log = logging.getLogger("digest.progress")

MIN_SECONDS = 2.0  # a job done sooner is not worth a bar
MIN_TOTAL = 1000  # an edition to more recipients than this gets one from the start
LOG_EVERY = 10.0  # seconds between two log lines when standard error is not a terminal


class Meter:
    """Counts of one job, shown as `describe(done, total)`: a bar on a terminal, a log line otherwise."""

    def __init__(self, label: str, describe: Callable[[int, int | None], str], *, every: float = LOG_EVERY,
                 min_total: int | None = None, terminal: bool | None = None) -> None:
        self.label = label  # the bar's text ("sending edition 3")
        self.describe = describe  # the log line's text
        self.every = every
        self.min_total = min_total  # more items than this: long from the start
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.started = time.monotonic()
        self.logged: float | None = None  # when the last log line was written
        self.bar: Progress | None = None
        self.task = TaskID(0)

    def update(self, done: int, total: int | None = None, label: str | None = None) -> None:
        now = time.monotonic()
        if label is not None:
            self.label = label
        long_job = now - self.started >= min(MIN_SECONDS, self.every) or (
            self.min_total is not None and (total or 0) > self.min_total
        )
        if self.terminal:
            if self.bar is None and long_job:
                # markup=False: the label holds data (a feed URL, an edition number) never read as markup
                console = Console(stderr=True, markup=False, emoji=False, highlight=False)
                self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                                    MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                                    auto_refresh=False)
                self.bar.start()
                self.task = self.bar.add_task(self.label, total=total)
            if self.bar is not None:
                self.bar.update(self.task, completed=done, total=total, description=self.label, refresh=True)
        elif long_job and (total is None or done < total) and (
            self.logged is None or now - self.logged >= self.every
        ):
            self.logged = now
            log.info("%s", self.describe(done, total))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@contextmanager
def meter(label: str, describe: Callable[[int, int | None], str], *, every: float = LOG_EVERY) -> Iterator[Meter]:
    m = Meter(label, describe, every=every)
    try:
        yield m
    finally:
        m.close()


@contextmanager
def watch(poll: Callable[[], tuple[str, int, int | None, str] | None], *, every: float = LOG_EVERY,
          tick: float = 0.5, terminal: bool | None = None) -> Iterator[Callable[[], None]]:
    """A `tick()` for a job whose counts are in the database (a send, which may run in other
    processes), to be called from the loop that already runs while the job does (the sender pool's
    wait for its processes, or once a batch): at most every `tick` seconds it calls `poll()`, which
    returns (label, done, total, log line) or None when there is nothing to show. The send gains no
    call per message, and no thread."""
    last: list[tuple[str, int, int | None, str]] = []  # the newest counts shown
    m = Meter("", lambda done, total: last[0][3] if last else "", every=every, min_total=MIN_TOTAL, terminal=terminal)
    polled = time.monotonic()

    def on_tick() -> None:
        nonlocal polled
        now = time.monotonic()
        if now - polled < tick:
            return
        polled = now
        got = poll()
        if got is not None:
            last[:] = [got]
            label, done, total, _ = got
            m.update(done, total, label)

    try:
        yield on_tick
    finally:
        if m.bar is not None and last:
            # The bar ends on the final counts; an edition no longer being sent has every delivery done.
            label, _, total, _ = last[0]
            got = poll()
            if got is not None and got[0] == label:
                m.update(got[1], got[2], label)
            else:
                m.update(total or 0, total, label)
        m.close()
