"""The `digest` command. Thin: parse arguments, call a service, print the result."""

from __future__ import annotations

import functools
import gc
import inspect
import logging
import sys
from collections.abc import Callable
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from digest import progress
from digest.clock import utc_now
from digest.config import (
    Settings,
    config_path,
    feed_location_problem,
    initial_value,
    load_settings,
    render_config,
    warn_plaintext_credentials,
    write_config_file,
)
from digest.content import editions as editions_svc
from digest.content import sources
from digest.delivery.webhooks import Events
from digest.errors import ConfigError, DigestError
from digest.links import PublicUrls
from digest.mail.mailer import SMTPMailer
from digest.service import apikeys, workers
from digest.service import pipeline as jobs
from digest.service import slots as schedule_svc
from digest.service import subscribers as subs
from digest.service.cadences import Cadences
from digest.store import schema
from digest.store.database import database_error, display_url, make_engine, session
from digest.store.models import SubscriberStatus


# Help in click's plain layout (rich_markup_mode=None): Typer's rich layout gives every flag a type
# column reading "<bool>" (and "--help <bool>"), which no metavar can remove.
def group(help: str, **kwargs: Any) -> typer.Typer:
    return typer.Typer(help=help, rich_markup_mode=None, **kwargs)


app = group(
    "digest: turn a blog's feeds into an email newsletter.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
subscribers_app = group("Manage the subscriber list.", no_args_is_help=True)
editions_app = group("List editions, or show one with `digest editions show N`.", invoke_without_command=True)
bounces_app = group("Process bounce messages (DSNs).", no_args_is_help=True)
dkim_app = group("DKIM signing keys and the DNS record to publish.", no_args_is_help=True)
db_app = group("The database schema: `digest db upgrade` after installing a new version.", no_args_is_help=True)
admin_app = group("Who may sign in to /admin in `digest serve`.", no_args_is_help=True)
api_key_app = group("Keys for the HTTP API at /api/v1 (see docs/api.md).", no_args_is_help=True)
app.add_typer(subscribers_app, name="subscribers")
app.add_typer(editions_app, name="editions")
app.add_typer(bounces_app, name="bounces")
app.add_typer(dkim_app, name="dkim")
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")
app.add_typer(api_key_app, name="api-key")

# Neither console ever reads markup or emoji codes: what they print comes from subscribers (the
# public form), feeds, SMTP and HTTP servers, and "[/]" or ":zap:" in it is text, not a style.
# Colour is given as Text styles instead.
out = Console(markup=False, emoji=False, highlight=False, soft_wrap=True)
err = Console(stderr=True, markup=False, emoji=False, highlight=False, soft_wrap=True)

CadenceOpt = Annotated[
    str | None,
    typer.Option("--cadence", metavar="NAME", show_default=False,
                 help="A cadence of schedule.cadences (default: the main one, schedule.cron)."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", metavar="PATH", show_default=False,
        help="Config file (default: $DIGEST_CONFIG, else ./digest.toml).",
    ),
]


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


LogLevelOpt = Annotated[
    LogLevel | None,
    typer.Option(
        "--log-level",
        metavar="LEVEL",
        help="debug, info, warning or error (default: info for serve, warning otherwise).",
        show_default=False,
        case_sensitive=False,
    ),
]


class State:
    config: Path | None = None
    log_level: LogLevel | None = None
    progress_every: float = progress.LOG_EVERY


state = State()


def version_text() -> str:
    """`digest <version>`: the installed distribution's, else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"digest {version('digest-mailer')}"
    except PackageNotFoundError:
        from digest import __version__

        return f"digest {__version__}"


def _print_version(wanted: bool) -> None:
    if wanted:
        out.print(version_text())
        raise typer.Exit(0)


@app.callback()
def _main(
    config: ConfigOpt = None,
    log_level: LogLevelOpt = None,
    version: Annotated[bool, typer.Option(
        "--version", help="Print digest's version and exit.", callback=_print_version, is_eager=True
    )] = False,
    progress_every: Annotated[float, typer.Option(
        "--progress-every", min=0.01, hidden=True, help="Seconds between two progress log lines (tests)."
    )] = progress.LOG_EVERY,
) -> None:
    state.config = config
    state.log_level = log_level
    state.progress_every = progress_every
    setup_logging(log_level or "warning")
    if log_level is None:
        # The progress lines of a long job (INFO) are shown unless a --log-level says otherwise.
        logging.getLogger(progress.log.name).setLevel(logging.INFO)


def _use_config(config: Path | None) -> None:
    """`--config` given after the command name. Given on both sides with two different files, it is
    an error naming both rather than a silent choice of one."""
    if config is None:
        return
    if state.config is not None and state.config != config:
        raise DigestError(f"--config given twice: {state.config} and {config}; give one")
    state.config = config


def command(group: typer.Typer, name: str | None = None, **kwargs: Any) -> Callable[[Callable[..., None]], Any]:
    """`group.command(name)`, with `--config PATH` accepted after the command name too
    (`digest send --config x.toml` as `digest --config x.toml send`)."""

    def register(fn: Callable[..., None]) -> Any:
        signature = inspect.signature(fn, eval_str=True)
        config = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigOpt)

        @functools.wraps(fn)
        def run(*args: Any, config: Path | None = None, **values: Any) -> None:
            _use_config(config)
            fn(*args, **values)

        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*signature.parameters.values(), config]
        )
        run.__annotations__ = {**fn.__annotations__, "config": ConfigOpt}
        return group.command(name, **kwargs)(run)

    return register


def setup_logging(level: LogLevel | str) -> None:
    """Log lines to standard error (the journal, under systemd): time, level, message."""
    numeric = getattr(logging, LogLevel(level).value.upper())
    logging.basicConfig(
        level=numeric,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S%z",
        stream=sys.stderr,
        force=True,
    )
    # APScheduler reports every job start at INFO; keep its warnings (missed runs), errors and debug.
    logging.getLogger("apscheduler").setLevel(numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING))


def settings() -> Settings:
    return load_settings(state.config)


def smtp_mailer(cfg: Settings) -> SMTPMailer:
    """The mailer of a command that sends; first, a warning if it would send the SMTP password in clear."""
    warn_plaintext_credentials(cfg.smtp)
    return SMTPMailer(cfg.smtp)


@contextmanager
def database_errors(url: str):
    """A database that cannot be reached or written (down, read-only, disk full) is a one-line error."""
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except OperationalError as exc:
        raise database_error(url, exc) from None


@contextmanager
def engine_for(url: str):
    """An engine on the database at `url` (database.url), disposed at the end."""
    engine = make_engine(url)
    try:
        with database_errors(url):
            yield engine
    finally:
        engine.dispose()


@contextmanager
def db(url: str):
    """A session on the database at `url`, at the current schema: an empty database is created;
    one that needs `digest db upgrade` is refused (exit 2)."""
    with engine_for(url) as engine:
        schema.ready(engine)
        with session(engine) as s:
            yield s


# --- init / fetch / send --------------------------------------------------------------------


@command(app)
def init(
    name: Annotated[str, typer.Option(metavar="NAME", help="Newsletter name.")] = initial_value("newsletter", "name"),
    from_: Annotated[
        str, typer.Option("--from", metavar="ADDR", help="From address, 'Name <addr>'.")
    ] = initial_value("newsletter", "from"),
    feed: Annotated[list[str] | None, typer.Option(metavar="URL", help="Feed URL or path (repeatable).")] = None,
    public_url: Annotated[
        str, typer.Option(metavar="URL", help="Base URL of `digest serve`.")
    ] = initial_value("newsletter", "public_url"),
    first_edition_days: Annotated[
        int, typer.Option(min=0, metavar="DAYS", help="On a new install only posts this recent are sent (0: all).")
    ] = initial_value("edition", "first_edition_days"),
) -> None:
    """Write a commented config (with a new secret key) and create the database."""
    path = config_path(state.config)
    for location in feed or []:
        problem = feed_location_problem(location)
        if problem:  # refused before anything is written, not at the next command
            raise ConfigError(f"--feed {location!r}: {problem}")
    if path.exists():
        out.print(f"Config exists, left as it is: {path}")
    else:
        text = render_config(
            name=name, from_=from_, feeds=feed, public_url=public_url, first_edition_days=first_edition_days
        )
        try:
            write_config_file(path, text)
        except OSError as exc:
            raise DigestError(f"cannot write {path}: {exc.strerror or exc}") from None
        out.print(f"Wrote {path} (readable by its owner only: it holds the secret key)")
    cfg = load_settings(path)
    with db(cfg.database_url):
        pass
    out.print(f"Database ready: {display_url(cfg.database_url)}")


@command(app)
def fetch() -> None:
    """Poll every source and store new and updated posts."""
    cfg = settings()
    stop = _stop_on_sigterm()
    with db(cfg.database_url) as s, _fetch_meter(len(cfg.feed_locations())) as done:
        reports = jobs.poll(s, cfg, utc_now, stop=stop, on_fetched=done)
    _print_poll(reports)
    if stop():
        err.print("Stopped by SIGTERM; feeds not fetched yet are fetched on the next run.")
        raise typer.Exit(143)
    if reports and all(not r.ok for r in reports):
        raise typer.Exit(1)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """"1 post", "2 posts", "0 posts"; `nouns` for a plural that is not noun + "s" ("addresses")."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


def _print_poll(reports: list[sources.SourceReport]) -> None:
    for r in reports:
        if r.error:
            err.print(Text("failed", style="red"), r.error)
        elif r.not_modified:
            out.print(f"{r.url}: not modified")
        else:
            out.print(f"{r.url}: {r.new} new, {r.updated} updated, {r.unchanged} unchanged")


@command(app)
def send(
    preview: Annotated[
        bool, typer.Option("--preview", help="Render the next edition to files; record and send nothing.")
    ] = False,
    out_dir: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Where --preview writes preview.html and preview.txt.")
    ] = Path("."),
    to: Annotated[
        list[str] | None, typer.Option(
            "--to", metavar="ADDR", help="With --preview: mail it to this address only (repeatable).")
    ] = None,
    open_: Annotated[bool, typer.Option("--open", help="With --preview: open preview.html in a browser.")] = False,
    latest: Annotated[
        int | None, typer.Option(
            "--latest", min=1, metavar="N", help="With --preview: the newest N posts, sent or not.")
    ] = None,
    no_fetch: Annotated[bool, typer.Option("--no-fetch", help="Do not poll the feeds first.")] = False,
    cadence: CadenceOpt = None,
) -> None:
    """Fetch, finish any unfinished edition, then build and deliver the next one."""
    cfg = settings()
    if not preview and (to or open_ or latest):
        raise typer.BadParameter("--to, --open and --latest go with --preview")
    cadences = Cadences(cfg.schedule)
    name = cadences.named(cadence).name  # an unknown name: one line naming the choices, before any work
    with db(cfg.database_url) as s:
        if preview:
            _preview(s, cfg, out_dir, to or [], open_, latest, not no_fetch, name)
            return
        stop = _stop_on_sigterm()
        # Each feed's report is printed before anything is sent: an SMTP server that cannot be
        # reached ends the command with an error, and what the feeds said is not lost with it.
        if no_fetch:
            polled = []
        else:
            with _fetch_meter(len(cfg.feed_locations())) as done:
                polled = jobs.poll(s, cfg, utc_now, stop=stop, on_fetched=done)
        _print_poll(polled)
        mailer = smtp_mailer(cfg)
        try:
            # With delivery.mode = "workers" this process sends nothing: the workers show their own.
            with _send_progress(cfg.database_url) if cfg.delivery.mode != "workers" else _nothing() as tick:
                result = jobs.send(s, cfg, mailer, fetch=False, stop=stop, tick=tick, cadence=name)
        finally:
            mailer.close()
    for q in result.queued:
        out.print(f"Edition {q.edition_number} is still being sent by the workers: {q.pending} pending")
    label = _edition_label(cadences, result.cadence)
    if result.new_queued is not None:
        q = result.new_queued
        out.print(f"{label} {q.edition_number}: {plural(result.post_count, 'post')},"
                  f" {plural(q.pending, 'delivery', 'deliveries')} queued for `digest worker`")
    for r in result.resumed:
        out.print(f"Resumed edition {r.edition_number}: {r.sent} delivered, {r.failed} failed, {r.pending} pending")
        _print_failures(r)
    if result.edition is not None:
        r = result.edition
        out.print(
            f"{label} {r.edition_number}: {plural(result.post_count, 'post')}, {r.sent} delivered, {r.failed} failed"
            + (f", {r.pending} pending (will retry)" if r.pending else "")
        )
        _print_failures(r)
    if stop():
        err.print("Stopped by SIGTERM between messages; the rest stays pending for the next run.")
        raise typer.Exit(143)
    if polled and all(not p.ok for p in polled):
        # As `digest fetch`: a run in which no feed could be read is a failure, even if older
        # posts went out, so that cron (or whoever runs it) hears about it.
        err.print(f"every feed failed ({', '.join(p.url for p in polled)}): nothing new was fetched")
        raise typer.Exit(1)
    if result.edition is None and result.new_queued is None:
        out.print("Nothing new to send." if cadences.named(name).main
                  else f"Nothing to send for {name}: nothing new, or no active reader chose it.")


def _edition_label(cadences: Cadences, name: str) -> str:
    """"Edition", or "Daily edition" when readers have a choice of cadence (each numbers its own)."""
    return f"{name.capitalize()} edition" if cadences.choice else "Edition"


@contextmanager
def _nothing():
    yield None


@contextmanager
def _fetch_meter(feed_count: int):
    """A callable to call once per feed fetched, which shows the progress of a long fetch."""
    with progress.meter("fetching feeds", lambda done, total: f"fetched {done} of {plural(total or 0, 'feed')}",
                        every=state.progress_every) as m:
        count = {"done": 0}

        def fetched() -> None:
            count["done"] += 1
            m.update(count["done"], feed_count)

        yield fetched


@contextmanager
def _send_progress(url: str):
    """A tick() for deliver() that shows the progress of the edition being sent, read from its
    deliveries on an engine of its own, in the main thread: the send (in this process or in the
    sender processes) gains no call per message, and this process no thread (with one, the sender
    processes would be started with forkserver: slower, and ~70 MB more)."""
    engine = make_engine(url)

    from sqlalchemy.exc import SQLAlchemyError

    def poll() -> tuple[str, int, int | None, str] | None:
        try:
            with session(engine) as s:
                got = editions_svc.sending_counts(s)
        except SQLAlchemyError as exc:  # a query that fails (a database busy) never ends the send
            logging.getLogger(__name__).debug("progress query failed: %s", exc)
            return None
        if got is None:
            return None
        number, c = got
        total = c["pending"] + c["sent"] + c["failed"] + c["skipped"]
        return (f"sending edition {number}", total - c["pending"], total,
                f"edition {number}: {c['sent']:,} of {total:,} sent, {c['failed']:,} failed")

    try:
        with progress.watch(poll, every=state.progress_every, tick=min(0.5, state.progress_every)) as tick:
            yield tick
    finally:
        engine.dispose()


def _stop_on_sigterm():
    """A stop() for the services: true once SIGTERM arrived (messages in flight still finish)."""
    import signal

    flag = {"stop": False}

    def on_term(_signum, _frame) -> None:
        flag["stop"] = True

    signal.signal(signal.SIGTERM, on_term)
    return lambda: flag["stop"]


def _print_failures(r) -> None:
    for address, reply in r.failures[:20]:
        err.print(f"  failed {address}: {reply}")
    if r.failed > 20:
        err.print(f"  ... and {r.failed - 20} more (digest editions show {r.edition_number})")
    if getattr(r, "bounced", 0):
        err.print(f"  {plural(r.bounced, 'address', 'addresses')} {'does' if r.bounced == 1 else 'do'} not exist"
                  " (5.1.x): marked bounced")


def _preview(s, cfg: Settings, out_dir: Path, to: list[str], open_: bool, latest: int | None, fetch: bool,
             cadence: str) -> None:
    if fetch:
        _print_poll(jobs.poll(s, cfg, utc_now))
    p = jobs.preview(s, cfg, latest=latest, fetch=False, cadence=cadence)
    if p is None:
        out.print("Nothing new to send: every post is already in an edition."
                  " Use --latest N to preview the newest posts.")
        return
    html, text = p.message.parts_for(jobs.preview_recipient(PublicUrls(cfg.newsletter.public_url)))
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, text_path = out_dir / "preview.html", out_dir / "preview.txt"
    html_path.write_text(html, encoding="utf-8")
    text_path.write_text(text, encoding="utf-8")
    out.print(f"Subject: {p.subject}")
    out.print(f"{plural(p.view.post_count, 'post')} in {plural(len(p.view.sections), 'section')}: " + ", ".join(
        f"{sec.name} ({len(sec.posts)})" for sec in p.view.sections))
    if p.message.rendered.more:
        out.print(f"The email shows {p.view.post_count - p.message.rendered.more} of them and links to the other "
                  f"{p.message.rendered.more} on the web: with all of them it would be clipped by Gmail (102 KB)")
    out.print(f"Wrote {html_path.resolve()}")
    out.print(f"Wrote {text_path.resolve()}")
    if to:
        for address, reply in jobs.send_preview(p, to, smtp_mailer(cfg), cfg):
            if reply.ok:
                out.print(f"Sent preview to {address}")
            else:
                err.print(Text(f"Preview to {address} refused:", style="red"), f"{reply.code} {reply.text}")
    if open_:
        import webbrowser

        webbrowser.open(html_path.resolve().as_uri())


# --- serve / schedule -------------------------------------------------------------------------


@command(app)
def serve(
    host: Annotated[str | None, typer.Option(
        metavar="HOST", show_default=False,
        help=f"Address to listen on (default: web.host, {initial_value('web', 'host')}).",
    )] = None,
    port: Annotated[int | None, typer.Option(
        min=1, max=65535, metavar="PORT", show_default=False,
        help=f"Port (default: web.port, {initial_value('web', 'port')}).",
    )] = None,
    no_scheduler: Annotated[
        bool, typer.Option("--no-scheduler", help="Do not send on schedule (web app only).")
    ] = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Run the service: the web app readers use, the scheduled send and feed polling.

    Stops on SIGTERM or Ctrl-C after the message in flight; the next start resumes the edition."""
    from digest.service import process, web  # the web stack loads only for this command
    from digest.service.scheduler import Scheduler

    cfg = settings()
    setup_logging(log_level or state.log_level or "info")
    warn_plaintext_credentials(cfg.smtp)  # the schedule and the confirmation mails both send
    with database_errors(cfg.database_url):
        code = process.serve(
            None if no_scheduler else Scheduler(cfg),
            web=lambda stop: web.serve(web.create_app(cfg), cfg.web, host=host, port=port, stop=stop),
        )
    raise typer.Exit(code)


@command(app, "schedule")
def schedule_cmd(
    count: Annotated[int, typer.Option("--count", "-n", min=1, metavar="N", help="How many send times to show.")] = 5,
) -> None:
    """Show the next send times of each cadence (in the configured zone and in UTC) and its last edition."""
    cfg = settings()
    sched = cfg.schedule
    cadences = Cadences(sched)
    with db(cfg.database_url) as s:
        states = [(c, schedule_svc.status(s, c.cron, utc_now, count, c.key)) for c in cadences.all]
    for i, (cadence, st) in enumerate(states):
        if i:
            out.print()
        _print_schedule(cadence.cron, st, sched.misfire_grace_hours, sched.poll_minutes,
                        f"{cadence.name}{' (the main cadence)' if cadence.main else ''}" if cadences.choice else None)


def _print_schedule(cron, st: schedule_svc.Status, grace_hours: float, poll_minutes: int, name: str | None) -> None:
    from digest.service.scheduler import is_utc, when

    out.print(("Schedule" if name is None else f"Schedule {name}") + f": \"{cron.expr}\" in {cron.tz_name}"
              f" (catch-up within {grace_hours:g} h; "
              + (f"feeds polled every {poll_minutes} min)" if poll_minutes else "no polling between sends)"))
    out.print("Next sends:")
    clock = "%H:%M:%S" if cron.has_seconds else "%H:%M"
    for t in st.upcoming:
        local = cron.local(t)
        # In UTC (UTC, Etc/UTC, Zulu...) the time in UTC would be the same time said twice.
        out.print(f"  {local:%a %Y-%m-%d {clock} %Z}" + ("" if is_utc(local) else f"  =  {t:%Y-%m-%d {clock}} UTC"))
    if st.last_edition is None:
        out.print("Last edition: none yet")
    else:
        e = st.last_edition
        out.print(f"Last edition: {e.number}, built {when(cron, e.created_at)}, {e.status.value}"
                  + (" (scheduled)" if e.slot else " (digest send)"))
    if st.last_run is not None:
        r = st.last_run
        what = {"edition": f"edition {st.last_run_edition.number}" if st.last_run_edition else "edition",
                "before start": "not sent: before the schedule first ran",
                "no readers": "not sent: no active reader chose it (its posts wait)"}.get(r.outcome, r.outcome)
        out.print(f"Last scheduled send: {when(cron, r.slot)}: {what}")


# --- workers ----------------------------------------------------------------------------------


@command(app)
def worker(
    once: Annotated[
        bool, typer.Option("--once", help="Exit when nothing is left to claim, instead of polling.")
    ] = False,
    batch: Annotated[
        int | None, typer.Option(
            "--batch", min=1, metavar="N", help="Deliveries claimed at a time (default: delivery.batch_size).")
    ] = None,
) -> None:
    """Send the pending deliveries of every edition, alongside any number of other workers.

    Polls every delivery.poll_seconds until SIGTERM or Ctrl-C (finishing the message in flight and
    handing back its claims); with --once, exits when nothing is left that it can claim."""
    import signal
    import threading

    cfg = settings()
    if batch is not None:
        cfg.delivery.batch_size = batch
    stopping = threading.Event()

    def _stop(signum, _frame):
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    with db(cfg.database_url) as s:
        mailer = smtp_mailer(cfg)
        if not once:
            out.print(f"Worker started; polling every {cfg.delivery.poll_seconds:g} s (stop with SIGTERM)")
        report = workers.run(
            s, cfg, mailer, utc_now,
            once=once,
            stop=stopping.is_set,
            wait=stopping.wait,
            progress=(lambda r: None) if once else _print_progress,
            on_error=lambda message: err.print(f"error: {message} (retrying in {cfg.delivery.poll_seconds:g} s)"),
        )
    if not report.editions and not report.mails.claimed and not report.webhooks.claimed:
        out.print("Nothing to send.")
    if report.mails.claimed:
        m = report.mails
        out.print(f"Confirmation mails: {m.sent} sent, {m.failed} failed, {m.retrying} to retry"
                  + (f", {m.skipped} no longer needed" if m.skipped else ""))
    if report.webhooks.claimed:
        w = report.webhooks
        out.print(f"Webhooks: {w.sent} sent, {w.failed} failed, {w.retrying} to retry"
                  + (f", {w.skipped} no longer configured" if w.skipped else ""))
    for r in report.editions.values():
        out.print(f"Edition {r.edition_number}: {r.sent} delivered, {r.failed} failed"
                  + (f", {r.skipped} skipped" if r.skipped else "") + f", {r.pending} pending")
        _print_failures(r)


def _print_progress(r) -> None:
    out.print(f"Edition {r.edition_number}: {r.sent} delivered, {r.failed} failed, {r.pending} pending")


# --- db ---------------------------------------------------------------------------------------


@command(db_app, "upgrade")
def db_upgrade() -> None:
    """Bring the database schema up to this version of digest (back it up first)."""
    with engine_for(settings().database_url) as engine:
        before, after = schema.upgrade(engine)
    if before == after:
        out.print(f"Database schema is up to date (revision {after}).")
    else:
        out.print(f"Database schema upgraded from {before or 'nothing'} to revision {after}.")


@command(db_app, "current")
def db_current() -> None:
    """Show the database's schema revision and this version's newest one."""
    with engine_for(settings().database_url) as engine:
        st = schema.state(engine)
    out.print(f"database: {st.current or ('empty' if st.empty else 'no revision (made before migrations)')}")
    out.print(f"newest:   {st.head}")
    if not st.up_to_date:
        out.print(schema.describe(st) if not st.empty else "run `digest init` or `digest db upgrade` to create it")
        raise typer.Exit(2 if not st.empty else 0)


@command(db_app, "copy")
def db_copy(
    target: Annotated[str, typer.Argument(envvar="DIGEST_COPY_TO", show_default=False,
                                          help="SQLAlchemy URL of a new, empty database (or set DIGEST_COPY_TO).")],
) -> None:
    """Copy everything into a new, empty database (SQLite -> PostgreSQL): subscribers with their
    ids (links in sent emails keep working), posts, editions and the delivery ledger."""
    from sqlalchemy.exc import ArgumentError, OperationalError

    from digest.delivery.journal import settle_dead_senders
    from digest.delivery.ledger import SQLLedger
    from digest.store import copy as dbcopy

    cfg = settings()
    try:
        dest = make_engine(target)
    except ArgumentError:
        raise DigestError(f"not a database URL: {target!r} (e.g. postgresql+psycopg://user@host/dbname)") from None
    source = make_engine(cfg.database_url)
    try:
        report = dbcopy.copy_database(source, dest, utc_now(),
                                      settle=lambda s: settle_dead_senders(SQLLedger(s), cfg.journal_dir))
    except OperationalError as exc:
        raise DigestError(f"database error: {str(exc.orig or exc).strip().splitlines()[0]}") from None
    finally:
        source.dispose()
        dest.dispose()
    if report.replayed:
        out.print(f"Recorded {plural(report.replayed, 'acceptance')} left in the journal first.")
    rows = ", ".join(f"{name} {n}" for name, n in report.rows.items())
    out.print(f"Copied to {display_url(target)} (rows per table): {rows}")
    out.print("Point database.url (or DIGEST_DATABASE__URL) at it; the old database is unchanged.")


@command(db_app, "revision", hidden=True)
def db_revision(
    message: Annotated[str, typer.Option("-m", "--message", metavar="TEXT", help="What the migration does.")],
) -> None:
    """(Developers) Write a migration for the difference between the models and the newest revision."""
    path = schema.revision(message)
    out.print(f"Wrote {path}: review it, then run the test suite on SQLite and PostgreSQL")


# --- subscribers ------------------------------------------------------------------------------


def _smtputf8_note(count: int, who: str) -> str:
    """Non-ASCII addresses are stored, but only a relay offering SMTPUTF8 takes them: say so now
    rather than at send time."""
    one = count == 1
    return (f"{who} {'is a non-ASCII address' if one else 'are non-ASCII addresses'}:"
            f" {'it needs' if one else 'they need'}"
            f" an SMTP relay that offers SMTPUTF8 (through one that does not, {'its' if one else 'their'}"
            " deliveries fail with 553 5.6.7)")


@command(subscribers_app, "add")
def subscribers_add(
    email: str,
    name: Annotated[str | None, typer.Option(metavar="NAME", help="The subscriber's name.")] = None,
    welcome: Annotated[bool, typer.Option("--welcome", help="Also mail them the welcome a reader gets on"
                                          " confirming (once per subscriber).")] = False,
    cadence: CadenceOpt = None,
) -> None:
    """Add a confirmed subscriber (or reactivate one)."""
    cfg = settings()
    if welcome and not cfg.welcome.enabled:
        raise DigestError("--welcome: welcome.enabled is false in the configuration, so no welcome mail is sent")
    chosen = None if cadence is None else Cadences(cfg.schedule).named(cadence)
    with db(cfg.database_url) as s:
        known = subs.find(s, email)
        welcomed_before = known is not None and known.welcomed_at is not None
        sub, created = subs.add(s, email, utc_now, name=name, welcome_mail=welcome,
                                events=Events.from_settings(cfg, utc_now), cadence=chosen)
    out.print(f"{'Added' if created else 'Updated'} {sub.email} ({sub.status.value})")
    if welcome:
        out.print(f"{sub.email} had their welcome mail already: none queued" if welcomed_before else
                  "Welcome mail queued: `digest serve` or `digest worker` sends it")
    if subs.needs_smtputf8(sub.email):
        out.print(_smtputf8_note(1, sub.email))


@command(subscribers_app, "import")
def subscribers_import(file: Annotated[Path, typer.Argument(help="CSV with columns email[,name].")],
                       cadence: CadenceOpt = None) -> None:
    """Import confirmed subscribers from CSV; bad rows are reported, the rest imported."""
    import io

    cfg = settings()
    chosen = Cadences(cfg.schedule).named(cadence)
    text = subs.read_csv(file)
    rows = text.count("\n")  # about the number of rows (a quoted cell may hold a line break)
    with db(cfg.database_url) as s, progress.meter(
        f"importing {file.name}", lambda done, total: f"{file}: {done:,} of about {total or 0:,} rows read",
        every=state.progress_every,
    ) as m:
        report = subs.import_csv(s, io.StringIO(text, newline=""), utc_now, source=str(file),
                                 on_rows=lambda done: m.update(done, rows), cadence=chosen.key)
    for line, reason in report.errors:
        err.print(f"{file}:{line}: {reason}")
    out.print(f"Imported {report.imported}, skipped {report.skipped} already subscribed,"
              f" {plural(len(report.errors), 'bad row')}")
    if report.smtputf8:
        out.print(_smtputf8_note(report.smtputf8, f"{report.smtputf8} of them"))


STATUS_HELP = "Only this status: pending, active, unsubscribed, bounced or suspended."


@command(subscribers_app, "export")
def subscribers_export(
    status: Annotated[SubscriberStatus | None, typer.Option(metavar="STATUS", help=STATUS_HELP)] = None,
) -> None:
    """Write the list as CSV to standard output."""
    cfg = settings()
    import csv

    writer = csv.writer(sys.stdout, lineterminator="\n")
    with db(cfg.database_url) as s:
        for row in subs.export_rows(s, status, Cadences(cfg.schedule)):
            writer.writerow(row)


@command(subscribers_app, "list")
def subscribers_list(
    status: Annotated[SubscriberStatus | None, typer.Option(metavar="STATUS", help=STATUS_HELP)] = None,
) -> None:
    """List subscribers."""
    cfg = settings()
    from rich.table import Table

    # At 80 columns an address is folded onto more lines, never cut short with an ellipsis: the
    # whole address is what an operator copies into `subscribers remove`.
    table = Table()
    table.add_column("email", overflow="fold", ratio=3)
    table.add_column("name", overflow="fold", ratio=2)
    table.add_column("status", no_wrap=True)
    table.add_column("since", no_wrap=True)
    table.add_column("topics", overflow="fold", ratio=1)
    cadences = Cadences(cfg.schedule)
    if cadences.choice:
        table.add_column("cadence", no_wrap=True)
    n = 0
    with db(cfg.database_url) as s:
        for sub in subs.iterate(s, status):
            n += 1
            # One topic a line (a name may hold a comma), as Text: names come from feeds, not markup.
            topics = "all" if sub.topics is None else Text("\n".join(sub.topics))
            table.add_row(sub.email, sub.name or "", sub.status.value, f"{sub.created_at:%Y-%m-%d}", topics,
                          *([cadences.of(sub.cadence).name] if cadences.choice else []))
    out.print(table)
    out.print(plural(n, "subscriber"))


@command(subscribers_app, "remove")
def subscribers_remove(email: str) -> None:
    """Unsubscribe an address (its history is kept)."""
    cfg = settings()
    with db(cfg.database_url) as s:
        sub = subs.get(s, email)
        changed = subs.unsubscribe(s, sub, utc_now, Events.from_settings(cfg, utc_now))
    out.print(f"Unsubscribed {sub.email}" if changed else f"{sub.email} was already unsubscribed")


@command(subscribers_app, "delete")
def subscribers_delete(
    email: str, yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False
) -> None:
    """Erase everything stored about an address (asks first; --yes when there is no terminal)."""
    cfg = settings()
    with db(cfg.database_url) as s:
        sub = subs.get(s, email)
        if not yes:
            # An answer read from a pipe or a file is not a person saying yes: without a terminal
            # to ask on, only --yes erases.
            if not sys.stdin.isatty():
                raise DigestError(f"not erasing {sub.email}: no terminal to ask on; pass --yes to erase")
            typer.confirm(f"Erase {sub.email} and their data?", abort=True)
        subs.erase(s, sub)
    out.print(f"Erased {email}")


# --- admin ------------------------------------------------------------------------------------


def _read_password(from_stdin: bool) -> str:
    """The new password: the first line of standard input (--password-stdin), else asked twice
    at the terminal, never echoed. Never an argument: those show in `ps` and shell history."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise DigestError("no terminal to ask for the password on; pipe it in with --password-stdin")
    import getpass

    password = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != password:
        raise DigestError("the two passwords differ; nothing changed")
    return password


@command(admin_app, "add")
def admin_add(
    email: str,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from the first line of standard input.")] = False,
) -> None:
    """Add an admin, or set a new password for one (their sessions end)."""
    from digest.service.admin import accounts

    password = _read_password(password_stdin)
    cfg = settings()
    with db(cfg.database_url) as s:
        admin, created = accounts.add(s, email, password, utc_now)
    out.print(f"{'Added' if created else 'New password for'} admin {admin.email}")


@command(admin_app, "remove")
def admin_remove(email: str) -> None:
    """Remove an admin; their sessions end at once."""
    from digest.service.admin import accounts

    cfg = settings()
    with db(cfg.database_url) as s:
        admin = accounts.remove(s, email)
    out.print(f"Removed admin {admin.email}")


@command(admin_app, "list")
def admin_list() -> None:
    """List the admins: address, added, last sign-in (UTC)."""
    from digest.service.admin import accounts

    cfg = settings()
    with db(cfg.database_url) as s:
        admins = accounts.listing(s)
    for a in admins:
        last = f"{a.last_login_at:%Y-%m-%d %H:%M}" if a.last_login_at else "never signed in"
        out.print(f"{a.email}  added {a.created_at:%Y-%m-%d}  last sign-in {last}")
    out.print(plural(len(admins), "admin"))


# --- editions ---------------------------------------------------------------------------------


@editions_app.callback()
def editions_list(ctx: typer.Context, config: ConfigOpt = None, cadence: CadenceOpt = None) -> None:
    """List editions: number, date, posts, delivered / failed / pending (of every cadence, or of --cadence)."""
    _use_config(config)
    if ctx.invoked_subcommand is not None:
        return
    cfg = settings()
    from rich.table import Table

    cadences = Cadences(cfg.schedule)
    only = None if cadence is None else cadences.named(cadence).key
    # Counts never wrap; the subject folds (at 80 columns every column keeps its whole value).
    table = Table()
    if cadences.choice:
        table.add_column("cadence", no_wrap=True)
    for heading in ("#", "created (UTC)", "status"):
        table.add_column(heading, no_wrap=heading != "created (UTC)")
    for heading in ("posts", "delivered", "failed", "pending"):
        table.add_column(heading, no_wrap=True, justify="right")
    table.add_column("subject", overflow="fold", ratio=1)
    with db(cfg.database_url) as s:
        rows = editions_svc.summaries(s, only)
    for e, c in rows:
        first = [cadences.of(e.cadence).name] if cadences.choice else []
        table.add_row(*first, str(e.number), f"{e.created_at:%Y-%m-%d %H:%M}", e.status.value, str(c["posts"]),
                      str(c["sent"]), str(c["failed"]), str(c["pending"]), e.subject)
    out.print(table if rows else "No editions yet.")


@command(editions_app, "show")
def editions_show(number: int, cadence: CadenceOpt = None) -> None:
    """Show one edition: its posts, counts, and every failed delivery with the server's reply."""
    cfg = settings()
    cadences = Cadences(cfg.schedule)
    chosen = cadences.named(cadence)
    with db(cfg.database_url) as s:
        e, counts, posts, failures = editions_svc.details(s, number, chosen.key)
        waiting = editions_svc.deferred(s, e)
    out.print(f"{_edition_label(cadences, chosen.name)} {e.number} — {e.subject}")
    out.print(f"Created {e.created_at:%Y-%m-%d %H:%M} UTC, status {e.status.value}"
              + (f", finished {e.finished_at:%Y-%m-%d %H:%M}" if e.finished_at else ""))
    out.print(f"Delivered {counts['sent']}, failed {counts['failed']}, pending {counts['pending']},"
              f" skipped {counts['skipped']}")
    for p in posts:
        out.print(f"  [{p.category}] {p.display_title}  {p.url}")
    if failures:
        out.print("Failures:")
        for address, attempts, error in failures:
            out.print(f"  {address or '(erased)'}: {error} (attempts: {attempts})")
    if waiting:
        out.print("Deferred (retried automatically, or now with `digest retry N`):")
        for address, attempts, error, next_at in waiting:
            when = f"next attempt {next_at:%Y-%m-%d %H:%M} UTC" if next_at else "due now"
            out.print(f"  {address or '(erased)'}: {error} (attempts: {attempts}, {when})")


# (The help as one line: Typer keeps a docstring's line breaks in the list of commands.)
@command(app, None, help="Retry edition N's failed and deferred deliveries now"
                  " (not those of bounced, suspended or unsubscribed addresses).")
def retry(number: int, cadence: CadenceOpt = None) -> None:
    cfg = settings()
    cadences = Cadences(cfg.schedule)
    name = cadences.named(cadence).name
    with db(cfg.database_url) as s:
        mailer = smtp_mailer(cfg)
        stop = _stop_on_sigterm()
        try:
            result = jobs.retry(s, cfg, mailer, number, stop=stop, cadence=name)
        finally:
            mailer.close()
    r = result.report
    out.print(f"{_edition_label(cadences, name)} {r.edition_number}: retried {result.retried}:"
              f" {r.sent} delivered, {r.failed} failed"
              + (f", {r.pending} pending (will retry)" if r.pending else ""))
    _print_failures(r)


@command(bounces_app, "process", help="Read bounce messages (RFC 3464 DSNs): hard bounces mark the subscriber"
                                      " bounced, three soft bounces in a row suspended.")
def bounces_process(
    path: Annotated[
        Path, typer.Argument(help="A Maildir, an mbox file, a message file (.eml) or a directory of them.")
    ],
) -> None:
    from digest.delivery import bounces as bounces_svc
    from digest.mail.verp import VERP

    cfg = settings()
    with db(cfg.database_url) as s:
        report = bounces_svc.process(s, VERP(cfg.newsletter.secret_key, cfg.bounce_domain), path, utc_now,
                                     Events.from_settings(cfg, utc_now))
    for label, reason in report.unreadable:
        err.print(f"{label}: not processed: {reason}")
    out.print(f"Read {plural(report.read, 'message')}: {plural(report.hard, 'hard bounce')},"
              f" {plural(report.soft, 'soft bounce')}, "
              f"{len(report.ignored)} without effect, {len(report.unreadable)} not understood")
    for address in report.bounced:
        out.print(f"  bounced: {address}")
    for address in report.suspended:
        out.print(f"  suspended (3 soft bounces in a row): {address}")


# --- api keys ---------------------------------------------------------------------------------


@command(api_key_app, "create")
def api_key_create(name: Annotated[str, typer.Argument(help="What uses it, e.g. the site or script.")]) -> None:
    """Make an API key and print it: shown this once, only its hash is stored."""
    cfg = settings()
    with db(cfg.database_url) as s:
        row, key = apikeys.create(s, name, utc_now)
    out.print(key)
    err.print(f"API key {row.id} ({row.name}): copy it now, it is not shown again."
              f" Use it as `Authorization: Bearer <key>`; `digest api-key revoke {row.id}` ends it.")


@command(api_key_app, "revoke")
def api_key_revoke(name_or_id: Annotated[str, typer.Argument(metavar="NAME|ID", help="The key's name or id.")]) -> None:
    """Revoke an API key: its next request gets 401."""
    cfg = settings()
    with db(cfg.database_url) as s:
        row = apikeys.find(s, name_or_id)
        changed = apikeys.revoke(s, row, utc_now)
    which = f"API key {row.id} ({row.name})"
    out.print(f"Revoked {which}" if changed else f"{which} was already revoked")


@command(api_key_app, "list")
def api_key_list() -> None:
    """List API keys (never the keys themselves): id, name, created, last used, revoked."""
    cfg = settings()
    from rich.table import Table

    table = Table()
    table.add_column("id", no_wrap=True, justify="right")
    table.add_column("name", overflow="fold", ratio=1)
    for heading in ("created (UTC)", "last used (UTC)", "revoked (UTC)"):
        table.add_column(heading, no_wrap=True)
    with db(cfg.database_url) as s:
        rows = apikeys.keys(s)

    def when(moment) -> str:
        return f"{moment:%Y-%m-%d %H:%M}" if moment else "-"

    for row in rows:
        table.add_row(str(row.id), row.name, when(row.created_at), when(row.last_used_at), when(row.revoked_at))
    out.print(table if rows else "No API keys yet: `digest api-key create NAME` makes one.")
    if rows:
        live = sum(row.revoked_at is None for row in rows)
        out.print(f"{plural(len(rows), 'key')}, {live} in use")


# --- dkim -------------------------------------------------------------------------------------


class KeyType(str, Enum):
    rsa = "rsa"
    ed25519 = "ed25519"


@command(dkim_app, "keygen")
def dkim_keygen(
    key_type: Annotated[
        KeyType, typer.Option("--type", metavar="TYPE", help="rsa (every receiver verifies it) or ed25519.")
    ] = KeyType.rsa,
    bits: Annotated[int, typer.Option(min=2048, max=4096, metavar="BITS", help="RSA key size.")] = 2048,
    out_path: Annotated[
        Path | None, typer.Option(
            "--out", metavar="FILE", help="Key file to write (default: dkim.pem next to the config).")
    ] = None,
    selector: Annotated[
        str, typer.Option(metavar="NAME", help="s=: the DNS label the key is published under.")
    ] = "digest",
    domain: Annotated[
        str | None, typer.Option(metavar="DOMAIN", help="d=: default, the From address's domain.")
    ] = None,
) -> None:
    """Make a signing key (never overwriting one) and print the DNS record and the [dkim] settings."""
    from digest.mail.dkim import dns_record, new_private_key, txt_strings, write_private_key

    cfg = settings()
    path = out_path or cfg.config_dir / "dkim.pem"
    key = new_private_key(key_type.value, bits)
    try:
        write_private_key(key, path)
    except FileExistsError:
        raise DigestError(f"{path} exists: a key in use is never overwritten (give --out)") from None
    except OSError as exc:
        raise DigestError(f"cannot write {path}: {exc.strerror or exc}") from None
    domain = (domain or cfg.newsletter.domain).strip().lower().rstrip(".")
    try:
        shown = path.resolve().relative_to(cfg.config_dir.resolve())
    except ValueError:
        shown = path.resolve()
    kind = f"RSA {bits}-bit" if key_type == KeyType.rsa else "Ed25519"
    out.print(f"Wrote {path} ({kind}; readable by its owner only: keep it private, back it up).")
    out.print("1. Publish this TXT record:\n")
    out.print(f"   {selector}._domainkey.{domain}.  TXT  {txt_strings(dns_record(key))}\n")
    out.print(f"2. Add to {state.config or 'digest.toml'} (signing starts with the next message):\n")
    out.print(f'[dkim]\ndomain = "{domain}"\nselector = "{selector}"\nprivate_key_file = "{shown}"')


@command(dkim_app, "record")
def dkim_record() -> None:
    """Print the DNS TXT record for the configured [dkim] key."""
    from digest.mail.dkim import dns_record, load_private_key, txt_strings

    cfg = settings()
    path = cfg.dkim_key_path  # (set whenever [dkim] is: load_settings checks all three keys)
    if not cfg.dkim.enabled or path is None:
        raise DigestError("no [dkim] key configured: make one with `digest dkim keygen`")
    key = load_private_key(path)
    out.print(f"{cfg.dkim.selector}._domainkey.{cfg.dkim.domain}.  TXT  {txt_strings(dns_record(key))}")


def main() -> None:
    code: str | int | None = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code
    except DigestError as exc:
        err.print(f"error: {exc}")
        code = exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    except OSError as exc:  # the machine's, not ours: a full disk, a folder we may not write, ...
        where = f": {exc.filename}" if exc.filename else ""
        err.print(f"error: {exc.strerror or exc}{where}")
        code = 1
    # The command is done: move every object into the collector's permanent generation, so the
    # collections the interpreter runs while it shuts down skip the ~92,000 containers the imports
    # made (SQLAlchemy, pydantic, Typer...). `digest editions` on a new install, fastest of 25
    # interleaved runs: 725 ms without it, 572 ms with it (576 ms with the atexit._run_exitfuncs()
    # + os._exit() shortcut it replaces). Nothing is skipped: exit handlers run, threads are
    # joined, output is flushed as in any exit (tests/test_cli.py checks those).
    gc.freeze()
    sys.exit(code)
