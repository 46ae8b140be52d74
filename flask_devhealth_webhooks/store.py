"""The delivery log: one SQLAlchemy Core table and the claim / progress / finish protocol.

Every accepted delivery is written here before any handler runs. A claim is one atomic
statement, so concurrent deliveries of one event, across processes and machines sharing the
database, cannot both run handlers.
"""

from __future__ import annotations

import functools
import json
import logging
import operator
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.pool import StaticPool

from .exceptions import ConfigurationError, DeliveryNotFound, NotReplayable

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: writers queue in SQLite's busy handler
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("flask_devhealth_webhooks")

if TYPE_CHECKING:
    from flask import Flask

    from .config import Settings
    from .events import Event

States = Literal["processing", "processed", "failed", "ignored", "dead_letter"]
FINISHED = ("processed", "ignored", "dead_letter")
#: Rows ``purge`` deletes per transaction.
PURGE_BATCH = 2000
#: The states an operator looks for (``log --state failed``, ``replay --failed``). Only they
#: are indexed: an index every delivery passes through would cost each commit another WAL page.
ATTENTION = ("failed", "dead_letter")
_ATTENTION_SQL = "state IN (" + ", ".join(f"'{s}'" for s in ATTENTION) + ")"
ERROR_LIMIT = 500

metadata = sa.MetaData()

#: The delivery log's table; import it to include it in your own migrations.
deliveries = sa.Table(
    "devhealth_webhook_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.String(255), nullable=False, unique=True),
    sa.Column("event_name", sa.String(255), nullable=False),
    sa.Column("event_type", sa.String(255), nullable=True),
    sa.Column("object_type", sa.String(255), nullable=True),
    sa.Column("object_id", sa.String(255), nullable=True),
    sa.Column("status", sa.String(255), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("first_received_at", sa.DateTime, nullable=False),
    sa.Column("last_received_at", sa.DateTime, nullable=False),
    sa.Column("processed_at", sa.DateTime, nullable=True),
    sa.Column("lease_expires_at", sa.DateTime, nullable=True),
    sa.Column("succeeded_handlers", sa.Text, nullable=False, default="[]"),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("payload", sa.LargeBinary, nullable=True),
    sa.Column("payload_encrypted", sa.Boolean, nullable=False, default=False),
    # Partial: a delivery that goes straight to processed never touches it. Newest-first
    # listing walks the primary key (ids grow with arrival), so no index on a timestamp.
    sa.Index(
        "ix_devhealth_webhook_deliveries_attention",
        "state",
        sqlite_where=sa.text(_ATTENTION_SQL),
        postgresql_where=sa.text(_ATTENTION_SQL),
    ),
)

c = deliveries.c

# Statements of the request path, built once: building and cache-keying a Core statement with
# ``.values(...)`` on every call cost more than the SQL itself. Parameters go to ``execute``.
_CLAIM_INSERT: dict[str, Any] = {
    "sqlite": sqlite_insert(deliveries).on_conflict_do_nothing(index_elements=["delivery_id"]),
    # PostgreSQL adds RETURNING for the primary key, which makes rowcount -1: ask for the row.
    "postgresql": pg_insert(deliveries)
    .on_conflict_do_nothing(index_elements=["delivery_id"])
    .returning(c.id),
}
#: UPDATE ... WHERE delivery_id = :match_delivery_id AND attempts = :match_attempts; SET comes
#: from the parameters' other keys. Every takeover bumps ``attempts``, so a worker whose lease
#: was taken over (it ran past LEASE_SECONDS) can no longer overwrite the new owner's row.
_UPDATE_DELIVERY = deliveries.update().where(
    c.delivery_id == sa.bindparam("match_delivery_id"),
    c.attempts == sa.bindparam("match_attempts"),
)
_CLAIM_KEYS = (
    "delivery_id", "event_name", "event_type", "object_type", "object_id", "status", "state",
    "attempts", "first_received_at", "last_received_at", "lease_expires_at",
    "succeeded_handlers", "payload", "payload_encrypted",
)  # fmt: skip
_FINISH_KEYS = ("state", "succeeded_handlers", "lease_expires_at", "last_error")


class _DirectStatement:
    """A Core statement compiled once for SQLite, then run on a DBAPI connection directly.

    On SQLite, SQLAlchemy's per-execution work (Connection and Transaction objects, the
    compiled-cache lookup, the execution context) costs more than the insert itself, so the
    writes every delivery makes (claim, progress and finish) skip it. The SQL, the parameter
    order and the type conversions still come from the Core table and the engine's dialect
    (a conversion is replaced by a cheaper one only where both give identical values on
    test values); each write is committed on its own, and DBAPI errors are raised as
    SQLAlchemy's (parameters hidden). Engine event hooks such as ``before_cursor_execute``
    do not see these statements.
    """

    def __init__(self, stmt: Any, dialect: Any, keys: Sequence[str]) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
        order: Sequence[str] = compiled.positiontup or ()
        allowed = {*keys, "match_delivery_id", "match_attempts"}
        if not order or not set(order) <= allowed:  # a default or a named paramstyle
            raise ValueError("this statement cannot be run directly")
        self.sql = str(compiled)
        self._values = operator.itemgetter(*order) if len(order) > 1 else _one(order[0])
        conversions = []
        for index, name in enumerate(order):
            processor = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                conversions.append((index, _cheaper_equivalent(processor)))
        self._conversions = tuple((i, fn) for i, fn in conversions if fn is not None)

    def args(self, params: dict[str, Any]) -> list[Any]:
        """The positional parameters for ``params``, converted as the dialect would."""
        args = list(self._values(params))
        for index, convert in self._conversions:
            args[index] = convert(args[index])
        return args


def _one(name: str) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    return lambda params: (params[name],)


def _iso_microseconds(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not None:  # SQLAlchemy's SQLite format leaves the offset out
        value = value.replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


def _as_int(value: Any) -> int | None:
    return None if value is None else int(bool(value))


_SAMPLE_TIMES = (
    datetime(2026, 7, 29, 18, 12, 4, 123456),
    datetime(2000, 1, 2, 3, 4, 5),
    datetime(9, 1, 2, 3, 4, 5, 6),
    datetime(2026, 7, 29, 18, 12, 4, 5, tzinfo=timezone(timedelta(hours=-5))),
    None,
)
#: Cheaper conversions, each used only if it matches the dialect's on every test value. The
#: request path binds naive UTC datetimes, bools and bytes (sqlite3 takes bytes as is).
_CANDIDATES: tuple[tuple[Callable[[Any], Any] | None, tuple[Any, ...]], ...] = (
    (_iso_microseconds, _SAMPLE_TIMES),
    (_as_int, (True, False, None)),
    (None, (b"\x00payload", b"", None)),
)


def _cheaper_equivalent(processor: Callable[[Any], Any]) -> Callable[[Any], Any] | None:
    """A faster function with the same result as ``processor`` (None: no conversion needed)."""

    def same(candidate: Callable[[Any], Any] | None, value: Any) -> bool:
        try:
            theirs = processor(value)
        except Exception:
            return False
        ours = value if candidate is None else candidate(value)
        if isinstance(theirs, memoryview):
            theirs = theirs.tobytes()
        return type(ours) is type(theirs) and bool(ours == theirs)

    for candidate, samples in _CANDIDATES:
        if all(same(candidate, value) for value in samples):
            return candidate
    return processor


#: Bumped in a forked child, so a store there opens its own SQLite connection.
_forks = [0]
#: Every write-lock descriptor this process has open (see ``_LockFile``).
_lock_files: weakref.WeakSet[_LockFile] = weakref.WeakSet()
#: SQLite connections a forked child inherited: kept open, never used. Closing one (even by
#: letting it be collected) would run SQLite's close on the parent's file and lock state, and
#: on descriptor numbers the child may have reused since.
_inherited: list[Any] = []


def _after_fork_in_child() -> None:
    _forks[0] += 1
    for lock in list(_lock_files):  # they share the parent's locks; their numbers are ours yet
        lock.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


#: How long a SQLite write waits for another's lock before the delivery is answered 503
#: storage_unavailable: well under gunicorn's default 30 s ``--timeout``, so the sender gets
#: that JSON answer rather than a killed worker's dropped connection.
BUSY_TIMEOUT = 10.0
#: How long a new connection retries switching a new database file to WAL, in all.
WAL_SWITCH_TIMEOUT = 10.0


#: Polls (seconds apart) for the write lock; the last one repeats until WRITE_LOCK_TIMEOUT.
_LOCK_POLLS = (0.00002, 0.00005, 0.0001, 0.0002, 0.0005)
#: Seconds a writer waits for the write lock before writing without it.
WRITE_LOCK_TIMEOUT = 1.0
#: Seconds a store then writes without the lock, so a stuck holder costs one wait, not one per
#: write (SQLite's own locking keeps the writes safe meanwhile).
WRITE_LOCK_BYPASS = 30.0


class _LockFile:
    """One open descriptor of the write-lock file, closed when its thread or store lets go.

    Every open one is known to the process, so a forked child closes its inherited copies at
    once: they would share the parent's lock, and keep it held after the parent died.
    """

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd
        _lock_files.add(self)

    @classmethod
    def open(cls, path: str) -> _LockFile | None:
        """The write-lock file beside the database, created if needed (None: cannot lock)."""
        if fcntl is None:  # pragma: no cover - Windows
            return None
        flags = os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            return cls(os.open(path, flags | os.O_RDWR, 0o644))
        except PermissionError:  # created by another user: flock needs only a read descriptor
            pass
        except OSError:
            return None
        try:
            return cls(os.open(path, flags | os.O_RDONLY, 0o644))
        except OSError:
            return None

    def acquire(self) -> bool:
        """Take the lock, polling; False after WRITE_LOCK_TIMEOUT or where flock fails."""
        fd = self.fd
        if fd is None:
            return False
        deadline = 0.0
        polls = iter(_LOCK_POLLS)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            except OSError:  # a file system without flock: SQLite's own locking is enough
                self.close()
                return False
            now = time.monotonic()
            if not deadline:  # the clock is read only once the lock turns out to be busy
                deadline = now + WRITE_LOCK_TIMEOUT
            elif now >= deadline:
                return False
            time.sleep(next(polls, _LOCK_POLLS[-1]))

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self.close()


class _ThreadConnection(threading.local):
    """One thread's detached SQLite connection and write-lock file (see ``_thread_connection``)."""

    fairy: Any = None
    dbapi: Any = None
    lock: _LockFile | None = None
    forks = -1
    generation = -1

    def drop(self) -> None:
        """Close the connection if this process opened it (else keep it, unused); forget it."""
        if self.fairy is not None:
            if self.forks == _forks[0]:
                with suppress(Exception):  # closing a broken connection must not mask its error
                    self.fairy.close()
            else:
                _inherited.append(self.fairy)
        if self.lock is not None:
            self.lock.close()
        self.fairy = self.dbapi = self.lock = None


def utcnow() -> datetime:
    """Naive UTC 'now', the form every timestamp column stores."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _in_state(state: str) -> Any:
    """``state = :state``, plus the partial index's own condition when it can serve it.

    SQLite only uses a partial index when the query repeats its WHERE term word for word.
    """
    if state in ATTENTION:
        return sa.and_(c.state == state, sa.text(_ATTENTION_SQL))
    return c.state == state


def make_fernet(keys: Sequence[str]) -> Any:
    """A MultiFernet over ``keys``: the first encrypts, every one decrypts (for rotation)."""
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ConfigurationError(
            "DEVHEALTH_WEBHOOKS_ENCRYPTION_KEYS needs the 'cryptography' package: "
            "pip install 'flask-devhealth-webhooks[encryption]'."
        ) from exc
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            "DEVHEALTH_WEBHOOKS_ENCRYPTION_KEYS must hold Fernet keys "
            "(cryptography.fernet.Fernet.generate_key())."
        ) from exc


def _handlers_json(succeeded: Sequence[str]) -> str:
    """The ``succeeded_handlers`` column: the sorted, distinct handler keys as a JSON list."""
    return _encode_handlers(tuple(sorted(set(succeeded))))


@functools.lru_cache(maxsize=256)
def _encode_handlers(keys: tuple[str, ...]) -> str:
    # Cached: deliveries of one event succeed with the same handlers, and encoding the list
    # cost more than the rest of building the finish statement.
    return json.dumps(list(keys))


def _clip(value: Any, limit: int = 255) -> str | None:
    return None if value is None else str(value)[:limit]


@dataclass(frozen=True)
class Claim:
    """The answer to 'may this worker run the handlers of this delivery now?'."""

    kind: Literal["new", "takeover", "duplicate", "in_progress"]
    succeeded: tuple[str, ...] = ()
    state: str = "processing"
    attempts: int = 1


@dataclass(frozen=True)
class Delivery:
    """One row of the delivery log, as read back."""

    delivery_id: str
    event_name: str
    event_type: str | None
    object_type: str | None
    object_id: str | None
    status: str | None
    state: str
    attempts: int
    first_received_at: datetime
    last_received_at: datetime
    processed_at: datetime | None
    lease_expires_at: datetime | None
    succeeded_handlers: tuple[str, ...]
    last_error: str | None
    has_payload: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready metadata (never the payload)."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if isinstance(value, datetime):
                value = value.replace(tzinfo=timezone.utc).isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out


_META_COLUMNS = [col for col in deliveries.columns if col.name not in ("id", "payload")]


def _to_delivery(row: Any) -> Delivery:
    m = row._mapping
    return Delivery(
        delivery_id=m["delivery_id"],
        event_name=m["event_name"],
        event_type=m["event_type"],
        object_type=m["object_type"],
        object_id=m["object_id"],
        status=m["status"],
        state=m["state"],
        attempts=m["attempts"],
        first_received_at=m["first_received_at"],
        last_received_at=m["last_received_at"],
        processed_at=m["processed_at"],
        lease_expires_at=m["lease_expires_at"],
        succeeded_handlers=tuple(json.loads(m["succeeded_handlers"] or "[]")),
        last_error=m["last_error"],
        has_payload=bool(m["has_payload"]),
    )


def default_url(app: Flask) -> str:
    """The embedded default: a SQLite file in the app's instance folder."""
    return "sqlite:///" + os.path.join(app.instance_path, "devhealth_webhooks.sqlite3")


def create_engine_for(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout, in-memory one shared DB."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    sa_url = sa.engine.make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    memory = sa_url.database in (None, "", ":memory:")
    if memory:
        engine = sa.create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        folder = os.path.dirname(os.path.abspath(sa_url.database or "."))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"The delivery log's folder {folder!r} cannot be created "
                f"({type(exc).__name__}): make it writable, or point "
                "DEVHEALTH_WEBHOOKS_DATABASE_URL elsewhere."
            ) from None
        engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT})

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        configure_sqlite(dbapi_connection, memory=memory)

    return engine


def configure_sqlite(dbapi_connection: Any, *, memory: bool) -> None:
    """Set up each new SQLite connection: busy timeout, WAL for a file, and secure delete.

    secure_delete zeroes what a purge deletes instead of leaving PHI in free pages; Debian's
    SQLite turns it on by default, other builds (python.org's, say) do not.
    """
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA secure_delete=ON")
    if not memory:
        _switch_to_wal(cursor)
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection is writing.

    On a file not yet in WAL mode (a new log, workers starting together), SQLite answers
    "database is locked" at once, without its busy handler, while another connection holds
    a write lock (and after its busy timeout while one holds an exclusive lock), so each try
    waits at most 0.1 s and all of them WAL_SWITCH_TIMEOUT. Once the file is in WAL mode
    (which persists) this is a no-op.
    """
    cursor.execute("PRAGMA busy_timeout=100")
    deadline = time.monotonic() + WAL_SWITCH_TIMEOUT
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver's OperationalError: sqlite3's or another's
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.005)


class DeliveryStore:
    """Claim, progress, finish, inspect, replay and purge deliveries in one table."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease_seconds: float = 300,
        store_payloads: bool = True,
        encryption_keys: Sequence[str] = (),
    ) -> None:
        self.engine = engine
        self.lease = timedelta(seconds=lease_seconds)
        self.store_payloads = store_payloads
        self._fernet = make_fernet(encryption_keys) if encryption_keys else None
        self._ready = False
        self._dialect = engine.dialect.name
        # One in-memory SQLite connection is shared by every thread: serialise its use.
        memory = self._dialect == "sqlite" and engine.url.database in (None, "", ":memory:")
        self._lock: threading.RLock | None = threading.RLock() if memory else None
        self._direct: dict[str, _DirectStatement] = {}
        self._own: _ThreadConnection | None = None
        # PostgreSQL runs each single-statement write in autocommit: the statement is its own
        # transaction, as durable at return, without the BEGIN and COMMIT round trips.
        self._single: Engine = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if self._dialect == "postgresql"
            else engine
        )
        self._generation = 0
        self._lock_bypass_until = 0.0
        if self._dialect == "sqlite":
            if not memory:
                self._own = _ThreadConnection()
                sa.event.listen(engine, "engine_disposed", self._disposed)
            dialect = engine.dialect
            self._direct = {
                "claim": _DirectStatement(_CLAIM_INSERT["sqlite"], dialect, _CLAIM_KEYS),
                "finish": _DirectStatement(_UPDATE_DELIVERY, dialect, _FINISH_KEYS),
                "finish_done": _DirectStatement(
                    _UPDATE_DELIVERY, dialect, (*_FINISH_KEYS, "processed_at")
                ),
                "progress": _DirectStatement(_UPDATE_DELIVERY, dialect, ("succeeded_handlers",)),
            }

    @classmethod
    def from_settings(cls, settings: Settings, app: Flask) -> DeliveryStore:
        """The store an app's settings ask for (engine handed over, URL, or the default)."""
        engine = settings.engine
        if engine is None:
            url = settings.database_url or default_url(app)
            try:
                engine = create_engine_for(url)
            except ImportError as exc:  # the URL's database driver is not installed
                raise ConfigurationError(
                    f"DEVHEALTH_WEBHOOKS_DATABASE_URL needs a database driver that is not "
                    f"installed ({exc.name}); for PostgreSQL: "
                    "pip install 'flask-devhealth-webhooks[postgres]'."
                ) from exc
        return cls(
            engine,
            lease_seconds=settings.lease_seconds,
            store_payloads=settings.store_payloads,
            encryption_keys=settings.encryption_keys,
        )

    # -- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        if not self._ready:
            self.create_table()
        if self._lock is None:
            with self.engine.begin() as conn:
                yield conn
        else:
            with self._lock, self.engine.begin() as conn:
                yield conn

    @contextmanager
    def _write_one(self) -> Iterator[Connection]:
        """A connection for one write statement: autocommit where that is one transaction."""
        if self._single is self.engine:
            with self._begin() as conn:
                yield conn
            return
        if not self._ready:
            self.create_table()
        with self._single.connect() as conn:
            yield conn

    def create_table(self) -> None:
        """Create the table if it does not exist (safe when several workers race to it)."""
        try:
            metadata.create_all(self.engine, checkfirst=True)
        except (IntegrityError, OperationalError, ProgrammingError):
            # Another process created it between our check and our CREATE.
            if not sa.inspect(self.engine).has_table(deliveries.name):
                raise
        self._ready = True

    def _write_direct(self, statement: _DirectStatement, params: dict[str, Any]) -> int:
        """Run and commit one write on a SQLite DBAPI connection; return its rowcount."""
        args = statement.args(params)
        if not self._ready:
            self.create_table()
        if self._own is None:  # in memory: the one shared connection, one thread at a time
            with self._lock or nullcontext():
                fairy = self.engine.raw_connection()
                try:
                    return self._execute_direct(fairy.dbapi_connection, statement, args)
                finally:
                    fairy.close()  # back to the pool, which rolls back anything left
        own = self._own
        try:
            dbapi_connection = self._thread_connection()
            lock = own.lock
            if lock is None or not self._take_write_lock(lock):
                return self._execute_direct(dbapi_connection, statement, args)
            try:
                return self._execute_direct(dbapi_connection, statement, args)
            finally:
                lock.release()
        except sa.exc.DBAPIError:
            own.drop()  # the next write opens a fresh connection, as the pool would
            raise

    def _execute_direct(self, dbapi_connection: Any, statement: _DirectStatement, args: Any) -> int:
        dbapi = self.engine.dialect.loaded_dbapi
        try:
            rowcount = int(dbapi_connection.execute(statement.sql, args).rowcount)
            dbapi_connection.commit()
        except dbapi.Error as exc:
            with suppress(dbapi.Error):
                dbapi_connection.rollback()
            raise sa.exc.DBAPIError.instance(
                statement.sql,
                None,
                exc,
                dbapi.Error,
                hide_parameters=True,
                dialect=self.engine.dialect,
            ) from exc
        return rowcount

    def _thread_connection(self) -> Any:
        """This thread's own connection to the SQLite file, opened through the engine once.

        A pool checkout and check-in around each write cost about as much as the write;
        SQLite connections are cheap to keep, so each thread keeps one, detached from the
        pool (so it never counts against the pool's size). Replaced after a fork and after
        ``engine.dispose()``.

        Each also opens the write-lock file (``<database>-writelock``), which queues this
        store's writers across threads and processes: SQLite's own locking still decides, but
        a writer that collides inside SQLite sleeps 1 ms or more in its busy handler (several
        commits' worth), while one waiting on the lock is let in within about 0.1 ms. A lock
        held past WRITE_LOCK_TIMEOUT is bypassed for WRITE_LOCK_BYPASS seconds.
        """
        own = self._own
        assert own is not None
        if own.generation != self._generation or own.forks != _forks[0] or own.dbapi is None:
            own.drop()
            fairy = self.engine.raw_connection()
            fairy.detach()
            own.fairy, own.dbapi = fairy, fairy.dbapi_connection
            own.lock = _LockFile.open(f"{self.engine.url.database}-writelock")
            own.forks, own.generation = _forks[0], self._generation
        return own.dbapi

    def _take_write_lock(self, lock: _LockFile) -> bool:
        """Take the write lock for one write; False: write without it (``_thread_connection``)."""
        if self._lock_bypass_until and time.monotonic() < self._lock_bypass_until:
            return False
        if lock.acquire():
            return True
        if lock.fd is not None:  # held too long: its holder is stuck, or stopped
            self._lock_bypass_until = time.monotonic() + WRITE_LOCK_BYPASS
            logger.warning(
                "webhook log write lock busy for %.1f s; writing without it for %.0f s",
                WRITE_LOCK_TIMEOUT,
                WRITE_LOCK_BYPASS,
            )
        return False

    def _disposed(self, _engine: Engine) -> None:
        self._generation += 1

    def _insert_ignoring_conflict(self, conn: Connection, values: dict[str, Any]) -> bool:
        stmt = _CLAIM_INSERT.get(self._dialect)
        if stmt is not None:
            result = conn.execute(stmt, values)
            if self._dialect == "postgresql":
                return result.first() is not None
            return result.rowcount == 1
        try:
            with conn.begin_nested():
                conn.execute(deliveries.insert(), values)
        except IntegrityError:
            return False
        return True

    def _encode_payload(self, raw: bytes | None) -> tuple[bytes | None, bool]:
        if raw is None or not self.store_payloads:
            return None, False
        if self._fernet is not None:
            return self._fernet.encrypt(raw), True
        return raw, False

    # -- the claim protocol ---------------------------------------------------------------

    def claim(self, event: Event, raw: bytes | None) -> Claim:
        """Record the delivery and decide whether this worker runs its handlers.

        New: inserted as ``processing``. Failed, or processing with an expired lease: taken
        over. Finished: ``duplicate``. Processing under a live lease: ``in_progress``.
        """
        now = utcnow()
        payload, encrypted = self._encode_payload(raw)
        values = {
            "delivery_id": event.delivery_id,
            "event_name": _clip(event.name),
            "event_type": _clip(event.event_type),
            "object_type": _clip(event.data.get("object")),
            "object_id": _clip(event.data.get("id")),
            "status": _clip(event.status),
            "state": "processing",
            "attempts": 1,
            "first_received_at": now,
            "last_received_at": now,
            "lease_expires_at": now + self.lease,
            "succeeded_handlers": "[]",
            "payload": payload,
            "payload_encrypted": encrypted,
        }
        for _ in range(3):
            if self._direct:
                inserted = self._write_direct(self._direct["claim"], values) == 1
            else:
                with self._write_one() as conn:
                    inserted = self._insert_ignoring_conflict(conn, values)
            if inserted:
                return Claim("new")
            try:
                return self._take_over(event.delivery_id, now)
            except DeliveryNotFound:
                continue  # purged between our insert and our look: insert again
        raise DeliveryNotFound(f"Delivery {event.delivery_id!r} vanished while being claimed.")

    def _take_over(
        self, delivery_id: str, now: datetime, *, replay: bool = False, force: bool = False
    ) -> Claim:
        takeable = sa.or_(
            c.state == "failed", sa.and_(c.state == "processing", c.lease_expires_at < now)
        )
        if replay:  # a dead letter stays replayable; its succeeded handlers are still skipped
            takeable = sa.or_(takeable, c.state == "dead_letter")
        if force:
            takeable = sa.or_(takeable, c.state.in_(FINISHED))
        changes: dict[str, Any] = {
            "state": "processing",
            "attempts": c.attempts + 1,
            "last_received_at": now,
            "lease_expires_at": now + self.lease,
        }
        if force:
            changes["succeeded_handlers"] = "[]"
        with self._begin() as conn:
            taken = conn.execute(
                deliveries.update().where(c.delivery_id == delivery_id, takeable).values(changes)
            ).rowcount
            if not taken:
                conn.execute(
                    deliveries.update()
                    .where(c.delivery_id == delivery_id, c.state.in_(FINISHED))
                    .values(last_received_at=now)
                )
            row = conn.execute(
                sa.select(c.state, c.attempts, c.succeeded_handlers).where(
                    c.delivery_id == delivery_id
                )
            ).first()
        if row is None:
            raise DeliveryNotFound(f"No delivery {delivery_id!r} in the delivery log.")
        if taken:
            return Claim(
                "takeover", tuple(json.loads(row.succeeded_handlers)), "processing", row.attempts
            )
        kind: Literal["duplicate", "in_progress"] = (
            "in_progress" if row.state == "processing" else "duplicate"
        )
        return Claim(kind, tuple(json.loads(row.succeeded_handlers)), row.state, row.attempts)

    def claim_replay(self, delivery_id: str, *, force: bool = False) -> Claim:
        """Claim a stored delivery for replay: failed, dead-lettered or crashed ones.

        ``force`` also reopens processed and ignored ones and forgets which handlers succeeded.
        """
        return self._take_over(delivery_id, utcnow(), replay=True, force=force)

    def record_progress(self, delivery_id: str, succeeded: Sequence[str], *, attempt: int) -> bool:
        """Persist the handlers that have succeeded so far, so a crash does not rerun them.

        ``attempt`` is the claim's attempt number; False when the claim was lost meanwhile.
        """
        values = {
            "match_delivery_id": delivery_id,
            "match_attempts": attempt,
            "succeeded_handlers": _handlers_json(succeeded),
        }
        if self._direct:
            return self._write_direct(self._direct["progress"], values) == 1
        with self._write_one() as conn:
            return bool(conn.execute(_UPDATE_DELIVERY, values).rowcount == 1)

    def finish(
        self,
        delivery_id: str,
        state: States,
        succeeded: Sequence[str],
        error: str | None = None,
        *,
        attempt: int,
    ) -> bool:
        """Close the claim: the final state, the handlers that succeeded, the last error.

        ``attempt`` is the claim's attempt number; False when another worker took the
        delivery over meanwhile (this worker outlived its lease), and nothing was written.
        """
        values: dict[str, Any] = {
            "state": state,
            "succeeded_handlers": _handlers_json(succeeded),
            "lease_expires_at": None,
            "last_error": None if error is None else error[: ERROR_LIMIT * 2],
        }
        if state in FINISHED:
            values["processed_at"] = utcnow()
        values["match_delivery_id"] = delivery_id
        values["match_attempts"] = attempt
        if self._direct:
            direct = self._direct["finish_done" if "processed_at" in values else "finish"]
            return self._write_direct(direct, values) == 1
        with self._write_one() as conn:
            return bool(conn.execute(_UPDATE_DELIVERY, values).rowcount == 1)

    # -- reading, replay and purge --------------------------------------------------------

    def get(self, delivery_id: str) -> Delivery:
        """One delivery's metadata; raises DeliveryNotFound."""
        with self._begin() as conn:
            row = conn.execute(
                sa.select(*_META_COLUMNS, (c.payload.is_not(None)).label("has_payload")).where(
                    c.delivery_id == delivery_id
                )
            ).first()
        if row is None:
            raise DeliveryNotFound(f"No delivery {delivery_id!r} in the delivery log.")
        return _to_delivery(row)

    def list(
        self,
        *,
        state: str | None = None,
        event_name: str | None = None,
        since: datetime | None = None,
        limit: int | None = 50,
    ) -> list[Delivery]:
        """Deliveries newest first, filtered by state, event name and first-received time.

        Indexed for the states in ``ATTENTION``; other filters scan from the newest row back.
        """
        query = sa.select(*_META_COLUMNS, (c.payload.is_not(None)).label("has_payload"))
        if state is not None:
            query = query.where(_in_state(state))
        if event_name is not None:
            query = query.where(c.event_name == event_name)
        if since is not None:
            query = query.where(c.first_received_at >= since)
        query = query.order_by(c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._begin() as conn:
            return [_to_delivery(row) for row in conn.execute(query)]

    def payload(self, delivery_id: str) -> bytes:
        """The raw body as received (decrypted); raises NotReplayable when not stored."""
        with self._begin() as conn:
            row = conn.execute(
                sa.select(c.payload, c.payload_encrypted).where(c.delivery_id == delivery_id)
            ).first()
        if row is None:
            raise DeliveryNotFound(f"No delivery {delivery_id!r} in the delivery log.")
        if row.payload is None:
            raise NotReplayable(
                f"Delivery {delivery_id!r} has no stored payload (DEVHEALTH_WEBHOOKS_STORE_PAYLOADS"
                " was False, or it was purged), so it cannot be shown or replayed."
            )
        data = bytes(row.payload)
        if row.payload_encrypted:
            if self._fernet is None:
                raise NotReplayable(
                    f"Delivery {delivery_id!r} is encrypted; set DEVHEALTH_WEBHOOKS_ENCRYPTION_KEYS"
                    " to a list holding its key to read it."
                )
            from cryptography.fernet import InvalidToken

            try:
                data = self._fernet.decrypt(data)
            except InvalidToken as exc:
                raise NotReplayable(
                    f"Delivery {delivery_id!r} was encrypted with a key that is not in "
                    "DEVHEALTH_WEBHOOKS_ENCRYPTION_KEYS; add that key (after the current one) "
                    "to read it."
                ) from exc
        return data

    def purge(
        self, older_than: timedelta, *, payloads_only: bool = False, batch: int = PURGE_BATCH
    ) -> int:
        """Delete finished deliveries (or only their payloads) first received before the cutoff.

        Deliveries still ``processing`` or ``failed`` are kept: they may yet need a replay. Rows
        go ``batch`` at a time, each batch its own transaction, so deliveries arriving meanwhile
        wait for one batch (milliseconds) rather than for the whole purge (seconds per 100,000
        rows on SQLite), which could outlast their busy timeout and the server's.
        """
        cutoff = utcnow() - older_than
        where = sa.and_(c.first_received_at < cutoff, c.state.in_(FINISHED))
        if payloads_only:
            where = sa.and_(where, c.payload.is_not(None))
        done, after = 0, 0
        while True:
            # Walk the primary key: each row is looked at once, however many batches there are.
            upto = sa.select(c.id).where(where, c.id > after).order_by(c.id).limit(batch).subquery()
            with self._begin() as conn:
                last = conn.execute(sa.select(sa.func.max(upto.c.id))).scalar()
                if last is None:
                    return done
                in_batch = sa.and_(where, c.id > after, c.id <= last)
                stmt: sa.Update | sa.Delete
                if payloads_only:
                    stmt = (
                        deliveries.update()
                        .where(in_batch)
                        .values(payload=None, payload_encrypted=False)
                    )
                else:
                    stmt = deliveries.delete().where(in_batch)
                done += int(conn.execute(stmt).rowcount)
            after = last

    def count(self, state: str | None = None) -> int:
        """How many deliveries are logged (in ``state`` when given)."""
        query = sa.select(sa.func.count()).select_from(deliveries)
        if state is not None:
            query = query.where(_in_state(state))
        with self._begin() as conn:
            return int(conn.execute(query).scalar_one())
