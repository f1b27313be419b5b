"""The schema's version: Alembic migrations shipped in the package, run without an alembic.ini.

- ``upgrade(engine)`` brings a database to the newest revision (an empty one is created). The
  whole upgrade is one transaction, and concurrent upgraders wait for each other (an advisory lock
  on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so a fleet of workers starting at once is safe.
- ``ready(engine)`` is what commands call before touching data: an empty database is created,
  one at the newest revision (``head()``) passes, anything else raises SchemaOutOfDate naming the
  command to run. It costs one small query, and loads Alembic only when the database must change.
- ``head()`` and ``revisions()`` read the revision ids from the migration files themselves,
  without Alembic (see ``revisions``).
- ``revision(message)`` writes a new migration from the difference between the models and the
  newest revision (for developers: ``digest db revision -m "..."``).
"""

from __future__ import annotations

import ast
import re
import sqlite3
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from digest.errors import SchemaOutOfDate
from digest.store.database import make_engine

if TYPE_CHECKING:  # Alembic itself is imported only when the schema must change (see `ready`)
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).parent / "migrations"
BASELINE = "0001"  # the first revision: the schema `digest` 0.1 made with create_all
_PG_LOCK = 0x6469676573740001  # pg_advisory_xact_lock key ("digest" + 1) for migrations


def _config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    cfg.set_main_option("truncate_slug_length", "40")
    return cfg


@cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


# `revision = '...'` and `down_revision = ...` as script.py.mako writes them (an annotation allowed).
_ID_LINE = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.MULTILINE)


@cache
def revisions() -> dict[str, tuple[str, ...]]:
    """Every shipped revision and the revisions it follows, read from the `revision =` and
    `down_revision =` lines of the files in migrations/versions, without importing them or
    Alembic. `ready()` runs in every command and needs only the newest id: loading Alembic's
    ScriptDirectory to learn it costs ~110 ms of each command's start-up, reading the lines
    ~0.5 ms for five files (time.perf_counter around the first call of each, 3 runs).
    tests/test_migrations.py checks that this reading equals Alembic's."""
    found: dict[str, tuple[str, ...]] = {}
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        ids = {name: ast.literal_eval(value) for name, value in _ID_LINE.findall(path.read_text(encoding="utf-8"))}
        if "revision" not in ids:
            raise RuntimeError(f"{path}: no `revision = '...'` line")
        parents = ids.get("down_revision")
        found[ids["revision"]] = (parents,) if isinstance(parents, str) else tuple(parents or ())
    return found


def head() -> str:
    """The newest revision. More than one head means two migrations share a parent: merge them
    (`alembic merge`, see docs/scaling.md)."""
    followed = {parent for parents in revisions().values() for parent in parents}
    heads = [rev for rev in revisions() if rev not in followed]
    if len(heads) != 1:
        raise RuntimeError(f"migrations have {len(heads)} heads {sorted(heads)}: add a merge revision")
    return heads[0]


@dataclass(frozen=True)
class State:
    current: str | None  # revision in alembic_version; None when there is none
    head: str
    empty: bool  # no tables at all: a new database

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def state(engine: Engine) -> State:
    with engine.connect() as conn:
        return _state(conn)


def _state(conn: Connection) -> State:
    insp = inspect(conn)
    current = None
    empty = False
    if insp.has_table("alembic_version"):
        current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if current is None:
        empty = not [t for t in insp.get_table_names() if t != "alembic_version"]
    conn.rollback()
    return State(current, head(), empty)


def ready(engine: Engine) -> None:
    """Create a new (empty) database at the newest revision; refuse an out-of-date one."""
    with engine.connect() as conn:
        try:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:  # no version table (a new or a pre-migration database): see below
            current = None
        conn.rollback()
    if current == head():
        return
    s = state(engine)
    if s.up_to_date:
        return
    if s.empty:
        upgrade(engine)
        return
    raise SchemaOutOfDate(describe(s))


def describe(s: State) -> str:
    if s.current is not None and not _known(s.current):
        return (f"database schema is newer than this digest (revision {s.current}, this digest knows up to "
                f"{s.head}): upgrade digest")
    return "database schema is out of date: run `digest db upgrade`"


def _known(rev: str) -> bool:
    return rev in revisions()


def create_schema(engine: Engine) -> None:
    """Bring the database to the newest schema revision (creating it when empty)."""
    upgrade(engine)


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Run the migrations up to `revision` in one transaction. A database made before migrations
    (tables, no version table) is first stamped as the baseline. Returns (before, after)."""
    from alembic import command

    with _migration_engine(engine).connect() as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        cfg = _config()
        cfg.attributes["connection"] = conn
        current = _current(conn)
        if current is not None and not _known(current):
            raise SchemaOutOfDate(describe(State(current, head(), False)))
        if current is None and _has_tables(conn):
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, revision)
        after = _current(conn)
    return current, after or ""


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    with _migration_engine(engine).connect() as conn, conn.begin():
        cfg = _config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def _current(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _has_tables(conn: Connection) -> bool:
    return bool([t for t in inspect(conn).get_table_names() if t != "alembic_version"])


def _migration_engine(engine: Engine) -> Engine:
    """The engine migrations run on. SQLite gets its own: foreign keys off (batch migrations copy
    and drop tables) and one real transaction taken with BEGIN IMMEDIATE, so DDL rolls back on
    failure and a second upgrader waits instead of colliding."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return engine  # (an in-memory database exists only in the engine's own connection)
    from sqlalchemy import create_engine

    mig = create_engine(engine.url, connect_args={"timeout": 60}, poolclass=NullPool)

    @event.listens_for(mig, "connect")
    def _connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:  # pragma: no cover - trivial
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(mig, "begin")
    def _begin(conn: Connection) -> None:  # pragma: no cover - trivial
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return mig


def revision(message: str, *, autogenerate: bool = True) -> Path:
    """Write a new migration into digest/migrations/versions: the difference between the models
    and the newest revision, found against a scratch SQLite database upgraded to head. Review it
    (and run the suite on PostgreSQL too) before committing."""
    from alembic import command

    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'scratch.db'}")
        upgrade(engine)
        with engine.connect() as conn:
            cfg = _config()
            cfg.attributes["connection"] = conn
            script = command.revision(cfg, message=message, autogenerate=autogenerate)
        engine.dispose()
    _script.cache_clear()
    revisions.cache_clear()
    written = script[0] if isinstance(script, list) else script
    if written is None:  # (Alembic returns None when a revision hook wrote no file; ours has none)
        raise RuntimeError(f"alembic wrote no migration for {message!r}")
    return Path(written.path)
