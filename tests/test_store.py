"""The delivery log's storage: table definition, engines and URLs, payload policy, purge."""

from __future__ import annotations

import gc
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import PG_SKIP_REASON, SECRET, build_app, postgres_url, reset_postgres
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st

import flask_devhealth_webhooks
from flask_devhealth_webhooks import blueprint, deliveries, get_state, on
from flask_devhealth_webhooks import store as store_module
from flask_devhealth_webhooks.events import Event
from flask_devhealth_webhooks.exceptions import ConfigurationError, DeliveryNotFound, NotReplayable
from flask_devhealth_webhooks.store import (
    BUSY_TIMEOUT,
    PURGE_BATCH,
    _cheaper_equivalent,
    _iso_microseconds,
    _switch_to_wal,
    configure_sqlite,
    create_engine_for,
    utcnow,
)
from flask_devhealth_webhooks.testing import encode_body, sample_payload, send_webhook

BV = "benefit_verification.updated"
PA = "prior_authorization.updated"


def raw_rows(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(deliveries)))


# -- the table -----------------------------------------------------------------------------


def test_table_definition_is_importable_for_migrations() -> None:
    assert flask_devhealth_webhooks.deliveries is deliveries
    assert "deliveries" in flask_devhealth_webhooks.__all__
    assert isinstance(deliveries, sa.Table)
    assert deliveries.name == "devhealth_webhook_deliveries"
    expected = {
        "delivery_id",
        "event_name",
        "event_type",
        "object_type",
        "object_id",
        "status",
        "state",
        "attempts",
        "first_received_at",
        "last_received_at",
        "processed_at",
        "succeeded_handlers",
        "last_error",
        "payload",
    }
    assert expected <= set(deliveries.c.keys())
    for url in ("postgresql+psycopg://u@127.0.0.1/db", "sqlite://"):
        engine = sa.create_engine(url)  # never connects: only its dialect is used
        ddl = str(sa.schema.CreateTable(deliveries).compile(dialect=engine.dialect))
        assert "CREATE TABLE devhealth_webhook_deliveries" in ddl
        assert "UNIQUE (delivery_id)" in ddl


def test_table_is_created_on_first_use(durable: Callable[..., Flask]) -> None:
    app = durable()
    engine = get_state(app).store.engine
    assert not sa.inspect(engine).has_table(deliveries.name)

    response = send_webhook(app.test_client(), sample_payload(BV))

    assert response.status_code == 200
    assert sa.inspect(engine).has_table(deliveries.name)
    assert len(raw_rows(engine)) == 1


def test_a_table_created_by_the_users_own_migration_is_used(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    try:
        my_metadata = sa.MetaData()
        deliveries.to_metadata(my_metadata)
        my_metadata.create_all(engine)
        app = build_app(None, DATABASE_URL=None, ENGINE=engine)
        payload = sample_payload(BV)

        response = send_webhook(app.test_client(), payload)

        assert response.status_code == 200
        [stored] = raw_rows(engine)
        assert stored.delivery_id == payload["event_id"]
        assert stored.state == "processed"
    finally:
        engine.dispose()


# -- where the log lives -------------------------------------------------------------------


def test_default_is_a_wal_sqlite_file_in_the_instance_folder(tmp_path: Path) -> None:
    instance = tmp_path / "not" / "created" / "yet"
    app = Flask("default_store_app", instance_path=str(instance))
    app.config["DEVHEALTH_WEBHOOKS_SECRET"] = SECRET
    app.register_blueprint(blueprint)
    payload = sample_payload(BV)

    response = send_webhook(app.test_client(), payload)
    get_state(app).store.engine.dispose()

    assert response.status_code == 200
    path = instance / "devhealth_webhooks.sqlite3"
    assert path.is_file()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        stored = conn.execute(
            "SELECT delivery_id, state FROM devhealth_webhook_deliveries"
        ).fetchall()
    finally:
        conn.close()
    assert stored == [(payload["event_id"], "processed")]


def test_sqlite_memory_url_keeps_the_log_in_memory_per_app(tmp_path: Path) -> None:
    first = build_app(tmp_path, DATABASE_URL="sqlite://")
    second = build_app(tmp_path, DATABASE_URL="sqlite://")
    client = first.test_client()
    payload = sample_payload(BV)

    answers = [send_webhook(client, payload).json["status"] for _ in range(2)]

    assert answers == ["processed", "duplicate"]
    assert get_state(first).store.count() == 1
    assert get_state(second).store.count() == 0
    assert list(tmp_path.rglob("*.sqlite3")) == []


def test_an_existing_engine_can_be_handed_over(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    try:
        app = build_app(None, DATABASE_URL=None, ENGINE=engine)
        payload = sample_payload(BV)

        response = send_webhook(app.test_client(), payload)

        assert get_state(app).store.engine is engine
        assert response.status_code == 200
        assert [r.delivery_id for r in raw_rows(engine)] == [payload["event_id"]]
    finally:
        engine.dispose()


@pytest.mark.parametrize("memory", [True, False])
def test_sqlite_connections_zero_what_they_delete(tmp_path: Path, memory: bool) -> None:
    """Whatever the build's default: a purged payload must not stay readable in free pages."""
    conn = sqlite3.connect(":memory:" if memory else str(tmp_path / "log.sqlite3"))
    try:
        conn.execute("PRAGMA secure_delete=OFF")  # python.org's builds start like this
        configure_sqlite(conn, memory=memory)
        assert conn.execute("PRAGMA secure_delete").fetchone() == (1,)
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (int(BUSY_TIMEOUT * 1000),)
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == ("memory" if memory else "wal")
    finally:
        conn.close()


def hold_lock(path: Path, seconds: float, mode: str = "IMMEDIATE") -> threading.Thread:
    """Another connection's write transaction on ``path``, committed after ``seconds``.

    IMMEDIATE (on a file not yet in WAL mode): as when workers start on a new log.
    EXCLUSIVE: an outside process holding the whole database (a tool, a long VACUUM).
    """
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute(f"BEGIN {mode}")
    holder.execute("CREATE TABLE IF NOT EXISTS other (x)")

    def release() -> None:
        time.sleep(seconds)
        holder.execute("COMMIT")
        holder.close()

    thread = threading.Thread(target=release)
    thread.start()
    return thread


def test_a_new_file_switches_to_wal_once_another_writer_is_done(tmp_path: Path) -> None:
    """SQLite refuses the switch at once, without its busy handler, while another connection
    holds a write lock: without a retry, a worker's first delivery was a 503 (4 in 450
    first deliveries of 3 processes starting together on a new log)."""
    path = tmp_path / "log.sqlite3"
    thread = hold_lock(path, 0.3)
    conn = sqlite3.connect(path)
    try:
        started = time.monotonic()
        configure_sqlite(conn, memory=False)
        waited = time.monotonic() - started
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()
        thread.join()
    assert waited >= 0.2


def test_a_first_delivery_on_a_new_log_waits_for_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    app = build_app(tmp_path, DATABASE_URL=f"sqlite:///{path}")
    thread = hold_lock(path, 0.3)
    try:
        response = send_webhook(app.test_client(), sample_payload(BV))
    finally:
        thread.join()
    assert response.status_code == 200, response.json


@pytest.mark.parametrize("existing", [True, False], ids=["existing log", "new log"])
def test_a_lock_held_past_the_busy_timeout_is_a_prompt_json_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    """The sender must get the JSON 503 before gunicorn's --timeout kills the worker: each
    wait is bounded (a new file's WAL switch once waited the 30 s busy timeout per try)."""
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 0.3)
    monkeypatch.setattr(store_module, "WAL_SWITCH_TIMEOUT", 0.3)
    monkeypatch.setattr(store_module, "WRITE_LOCK_TIMEOUT", 0.1)
    path = tmp_path / "log.sqlite3"
    app = build_app(tmp_path, DATABASE_URL=f"sqlite:///{path}")
    client = app.test_client()
    if existing:
        assert send_webhook(client, sample_payload(BV)).status_code == 200
    thread = hold_lock(path, 2.0, "EXCLUSIVE")
    try:
        started = time.monotonic()
        response = send_webhook(client, sample_payload(BV))
        waited = time.monotonic() - started
    finally:
        thread.join()
    assert response.status_code == 503
    assert response.json["error"] == "storage_unavailable"
    assert waited < 1.5, waited


def test_the_wal_switch_gives_up_on_other_errors_at_once(tmp_path: Path) -> None:
    class Broken:
        def execute(self, sql: str) -> None:
            raise sqlite3.OperationalError("disk I/O error")

    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        _switch_to_wal(Broken())
    assert time.monotonic() - started < 0.1


def test_purged_payloads_leave_no_trace_in_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    app = build_app(tmp_path, DATABASE_URL=f"sqlite:///{path}")
    payload = sample_payload(BV)
    payload["data"]["patient"]["last_name"] = "ZZPURGEDMARKERZZ"
    assert send_webhook(app.test_client(), payload).status_code == 200
    store = get_state(app).store
    assert store.purge(timedelta(seconds=-60)) == 1
    store.engine.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert b"ZZPURGEDMARKERZZ" not in path.read_bytes()


def test_plain_postgresql_urls_use_psycopg_3() -> None:
    for url in ("postgresql://u@127.0.0.1:5432/db", "postgres://u@127.0.0.1:5432/db"):
        engine = create_engine_for(url)
        assert engine.dialect.name == "postgresql"
        assert engine.dialect.driver == "psycopg"
        engine.dispose()


def test_an_unwritable_log_answers_503_so_the_sender_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'log.sqlite3'}")
    app = build_app(None, DATABASE_URL=None, ENGINE=engine)
    calls: list[str] = []

    @on(BV)
    def handler(event: Event) -> None:
        calls.append(event.delivery_id)

    response = send_webhook(app.test_client(), sample_payload(BV))
    engine.dispose()

    assert "delivery log unavailable exception=OperationalError code=SQLITE_CANTOPEN" in (
        caplog.text
    )

    assert response.status_code == 503
    assert response.json["error"] == "storage_unavailable"
    assert response.headers["Retry-After"].isdigit()
    assert calls == []


# -- SQLite: one connection per thread ------------------------------------------------------


def _sqlite_app(tmp_path: Path) -> tuple[Flask, dict[str, int]]:
    """An app on a SQLite file, and counters of the engine's new connections and checkouts."""
    app = build_app(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'log.sqlite3'}")
    engine = get_state(app).store.engine
    counts = {"connect": 0, "checkout": 0}
    sa.event.listen(
        engine, "connect", lambda *_: counts.__setitem__("connect", counts["connect"] + 1)
    )
    sa.event.listen(
        engine.pool, "checkout", lambda *_: counts.__setitem__("checkout", counts["checkout"] + 1)
    )
    return app, counts


def test_sqlite_writes_reuse_one_connection_per_thread(tmp_path: Path) -> None:
    app, counts = _sqlite_app(tmp_path)
    client = app.test_client()
    on(BV)(lambda event: None)
    on(BV)(lambda event: None)  # two handlers: a progress write between them
    assert send_webhook(client, sample_payload(BV)).status_code == 200  # table created here
    before = dict(counts)

    answers = [send_webhook(client, sample_payload(BV)).status_code for _ in range(20)]

    assert answers == [200] * 20
    assert counts == before  # claim, progress and finish: no new connection, no pool checkout
    store = get_state(app).store
    assert store.count("processed") == 21
    engine = store.engine
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(deliveries.c.succeeded_handlers)).scalars().all()
        assert all(len(json.loads(r)) == 2 for r in rows)
    finally:
        engine.dispose()


def test_each_thread_gets_its_own_sqlite_connection(tmp_path: Path) -> None:
    app, counts = _sqlite_app(tmp_path)
    send_webhook(app.test_client(), sample_payload(BV))
    before = counts["connect"]
    answers: list[int] = []

    def deliver_some() -> None:
        client = app.test_client()
        answers.extend(send_webhook(client, sample_payload(BV)).status_code for _ in range(5))

    threads = [threading.Thread(target=deliver_some) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert answers == [200] * 15
    assert counts["connect"] - before == 3
    assert get_state(app).store.count("processed") == 16
    get_state(app).store.engine.dispose()


def test_engine_dispose_makes_the_store_open_a_fresh_connection(tmp_path: Path) -> None:
    app, counts = _sqlite_app(tmp_path)
    client = app.test_client()
    assert send_webhook(client, sample_payload(BV)).status_code == 200
    engine = get_state(app).store.engine
    engine.dispose()
    before = counts["connect"]

    assert send_webhook(client, sample_payload(BV)).status_code == 200

    assert counts["connect"] == before + 1
    engine.dispose()


def test_a_broken_sqlite_connection_costs_one_503_then_is_replaced(tmp_path: Path) -> None:
    app, _counts = _sqlite_app(tmp_path)
    client = app.test_client()
    calls: list[str] = []
    on(BV)(lambda event: calls.append(event.delivery_id))
    assert send_webhook(client, sample_payload(BV)).status_code == 200
    store = get_state(app).store
    store._own.dbapi.close()  # type: ignore[union-attr]  # broken behind the store's back
    payload = sample_payload(BV)

    first = send_webhook(client, payload)
    resent = send_webhook(client, payload)

    assert first.status_code == 503
    assert first.json["error"] == "storage_unavailable"
    assert resent.status_code == 200
    assert resent.json["status"] == "processed"
    assert calls[-1] == payload["event_id"]
    assert len(calls) == 2
    store.engine.dispose()


def in_forked_child(check: Callable[[], bool]) -> bool:
    """Run ``check`` in a forked child process; True when it returned True there."""
    pid = os.fork()
    if pid == 0:
        try:
            ok = check()
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_a_forked_worker_opens_its_own_sqlite_connection(tmp_path: Path) -> None:
    app, counts = _sqlite_app(tmp_path)
    client = app.test_client()
    assert send_webhook(client, sample_payload(BV)).status_code == 200
    inherited = get_state(app).store._own.dbapi  # type: ignore[union-attr]
    before = counts["connect"]

    def child() -> bool:  # as a gunicorn worker forked after the app was built
        ok = send_webhook(client, sample_payload(BV)).status_code == 200
        ok = ok and counts["connect"] == before + 1
        return ok and get_state(app).store._own.dbapi is not inherited  # type: ignore[union-attr]

    assert in_forked_child(child)
    assert send_webhook(client, sample_payload(BV)).status_code == 200  # ours still works
    assert get_state(app).store._own.dbapi is inherited  # type: ignore[union-attr]
    assert get_state(app).store.count("processed") == 3
    get_state(app).store.engine.dispose()


# -- SQLite: the write lock ----------------------------------------------------------------

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
needs_flock = pytest.mark.skipif(fcntl is None, reason="the write lock needs fcntl (POSIX)")


def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "log.sqlite3-writelock"


class HeldLock:
    """The write-lock file, held by the test (as another process's writer would hold it)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def lock_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def send_while_locked(app: Flask, tmp_path: Path) -> tuple[bool, int, list[int]]:
    """Send one delivery on a thread while the test holds the write lock, then release it.

    Returns whether the sender was still waiting after 0.5 s, the rows stored by then, and
    the sender's answers.
    """
    held = HeldLock(lock_path(tmp_path))
    answers: list[int] = []
    sender = threading.Thread(
        target=lambda: answers.append(
            send_webhook(app.test_client(), sample_payload(BV)).status_code
        )
    )
    sender.start()
    sender.join(timeout=0.5)
    waited = sender.is_alive()
    rows = get_state(app).store.count()
    held.release()
    sender.join(timeout=10)
    return waited, rows, answers


@needs_flock
def test_sqlite_writers_queue_on_the_write_lock(tmp_path: Path) -> None:
    app, _ = _sqlite_app(tmp_path)
    assert send_webhook(app.test_client(), sample_payload(BV)).status_code == 200
    assert lock_is_free(lock_path(tmp_path))  # taken and released around each write

    waited, rows_while_held, answers = send_while_locked(app, tmp_path)

    assert waited
    assert rows_while_held == 1  # its claim was not written while another writer held the lock
    assert answers == [200]
    assert get_state(app).store.count("processed") == 2
    get_state(app).store.engine.dispose()


@needs_flock
def test_a_write_lock_file_that_cannot_be_opened_does_not_stop_writes(tmp_path: Path) -> None:
    lock_path(tmp_path).mkdir()  # os.open fails on a directory

    app, _ = _sqlite_app(tmp_path)
    answers = [send_webhook(app.test_client(), sample_payload(BV)).status_code for _ in range(3)]

    assert answers == [200] * 3
    assert get_state(app).store._own.lock is None  # type: ignore[union-attr]
    get_state(app).store.engine.dispose()


@needs_flock
def test_a_failed_write_releases_the_write_lock(tmp_path: Path) -> None:
    app, _ = _sqlite_app(tmp_path)
    client = app.test_client()
    assert send_webhook(client, sample_payload(BV)).status_code == 200
    store = get_state(app).store
    store._own.dbapi.close()  # type: ignore[union-attr]

    assert send_webhook(client, sample_payload(BV)).status_code == 503

    assert lock_is_free(lock_path(tmp_path))
    assert send_webhook(client, sample_payload(BV)).status_code == 200
    store.engine.dispose()


@needs_flock
def test_an_unexpected_error_in_a_write_releases_the_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = _sqlite_app(tmp_path)
    payload = sample_payload(BV)
    assert send_webhook(app.test_client(), payload).status_code == 200
    store = get_state(app).store

    def interrupted(*_: Any) -> int:
        raise KeyboardInterrupt  # not a database error: the connection is kept

    monkeypatch.setattr(store, "_execute_direct", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.record_progress(payload["event_id"], ["h"], attempt=1)

    assert store._own.lock is not None  # type: ignore[union-attr]
    assert lock_is_free(lock_path(tmp_path))
    store.engine.dispose()


needs_proc_fds = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="counts open descriptors in /proc/self/fd (Linux)"
)


def open_descriptors(path: Path) -> int:
    """How many descriptors of this process point at ``path``."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{name}") == str(path)
    return count


def open_lock_descriptors(tmp_path: Path) -> int:
    """How many descriptors of this process point at the write-lock file."""
    return open_descriptors(lock_path(tmp_path))


@needs_flock
@needs_proc_fds
def test_a_thread_that_ends_closes_its_lock_descriptor(tmp_path: Path) -> None:
    # The werkzeug dev server (and gthread, over time) serves each request on a new thread.
    app, _ = _sqlite_app(tmp_path)
    assert send_webhook(app.test_client(), sample_payload(BV)).status_code == 200
    answers: list[int] = []

    for _ in range(30):
        thread = threading.Thread(
            target=lambda: answers.append(
                send_webhook(app.test_client(), sample_payload(BV)).status_code
            )
        )
        thread.start()
        thread.join()
    gc.collect()

    assert answers == [200] * 30
    assert open_lock_descriptors(tmp_path) == 1  # the main thread's own
    get_state(app).store.engine.dispose()


@needs_flock
@needs_proc_fds
def test_a_discarded_store_closes_its_lock_descriptor(tmp_path: Path) -> None:
    # An app factory per test (or per tenant) builds and drops stores on one thread.
    for _ in range(20):
        app, _ = _sqlite_app(tmp_path)
        assert send_webhook(app.test_client(), sample_payload(BV)).status_code == 200
        get_state(app).store.engine.dispose()
        del app
    gc.collect()

    assert open_lock_descriptors(tmp_path) == 0


@needs_flock
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_a_forked_child_drops_inherited_lock_descriptors_and_queues_on_its_own(
    tmp_path: Path,
) -> None:
    # An inherited descriptor shares the parent's lock (both would hold it at once, and a
    # child outliving a killed parent would keep it held); closed later by number, it could be
    # a file the child has opened since, whose number SQLite's next file would then take.
    app, _ = _sqlite_app(tmp_path)
    client = app.test_client()
    assert send_webhook(client, sample_payload(BV)).status_code == 200
    inherited = get_state(app).store._own.lock.fd  # type: ignore[union-attr]
    assert inherited is not None
    fcntl.flock(inherited, fcntl.LOCK_EX)  # the parent's writer is mid-commit
    child_log = tmp_path / "child.log"

    def child() -> bool:
        try:
            os.fstat(inherited)
            return False  # still open in the child
        except OSError:
            pass
        store_module.WRITE_LOCK_TIMEOUT = 0.1
        log_fd = os.open(child_log, os.O_WRONLY | os.O_CREAT, 0o600)
        ok = send_webhook(client, sample_payload(BV)).status_code == 200
        os.write(log_fd, b"child log line")  # still the child's own file
        os.close(log_fd)
        own = get_state(app).store._own.lock  # type: ignore[union-attr]
        return ok and own is not None and not own.acquire()  # the parent's lock is not its

    forked_ok = in_forked_child(child)
    fcntl.flock(inherited, fcntl.LOCK_UN)

    assert forked_ok
    assert child_log.read_bytes() == b"child log line"
    assert (tmp_path / "log.sqlite3").read_bytes()[:16] == b"SQLite format 3\x00"
    assert send_webhook(client, sample_payload(BV)).status_code == 200
    assert get_state(app).store.count("processed") == 3
    get_state(app).store.engine.dispose()


@needs_proc_fds
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_a_forked_child_never_closes_the_sqlite_connection_it_inherited(tmp_path: Path) -> None:
    # SQLite's close would act on the parent's file and lock state; letting the connection be
    # garbage-collected closes it just the same.
    app, _ = _sqlite_app(tmp_path)
    client = app.test_client()
    assert send_webhook(client, sample_payload(BV)).status_code == 200
    database = tmp_path / "log.sqlite3"
    before = open_descriptors(database)

    def child() -> bool:
        ok = send_webhook(client, sample_payload(BV)).status_code == 200  # opens its own
        gc.collect()
        return ok and open_descriptors(database) == before + 1  # the inherited one stays open

    assert in_forked_child(child)
    get_state(app).store.engine.dispose()


@needs_flock
def test_a_stuck_lock_costs_one_wait_then_is_bypassed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(store_module, "WRITE_LOCK_TIMEOUT", 0.1)
    app, _ = _sqlite_app(tmp_path)
    on(BV)(lambda event: None)
    on(BV)(lambda event: None)  # claim, progress and finish: three writes per delivery
    assert send_webhook(app.test_client(), sample_payload(BV)).status_code == 200
    waits: list[bool] = []
    acquire = store_module._LockFile.acquire
    monkeypatch.setattr(
        store_module._LockFile, "acquire", lambda self: waits.append(acquire(self)) or waits[-1]
    )
    held = HeldLock(lock_path(tmp_path))  # e.g. a stopped process that held it
    try:
        with caplog.at_level("WARNING", logger="flask_devhealth_webhooks"):
            answers = [
                send_webhook(app.test_client(), sample_payload(BV)).status_code for _ in range(3)
            ]
    finally:
        held.release()

    assert answers == [200] * 3
    assert waits == [False]  # the first write waited; the other eight went straight ahead
    [warning] = [r for r in caplog.records if "write lock" in r.getMessage()]
    assert "writing without it for 30 s" in warning.getMessage()
    assert get_state(app).store.count("processed") == 4
    get_state(app).store.engine.dispose()


@needs_flock
def test_the_lock_is_tried_again_once_the_bypass_is_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "WRITE_LOCK_TIMEOUT", 0.05)
    monkeypatch.setattr(store_module, "WRITE_LOCK_BYPASS", 0.0)
    app, _ = _sqlite_app(tmp_path)
    assert send_webhook(app.test_client(), sample_payload(BV)).status_code == 200
    held = HeldLock(lock_path(tmp_path))
    try:
        assert send_webhook(app.test_client(), sample_payload(BV)).status_code == 200
    finally:
        held.release()

    lock = get_state(app).store._own.lock  # type: ignore[union-attr]
    assert lock is not None
    assert lock.acquire()  # free again, and taken by the store's own descriptor
    lock.release()
    assert send_webhook(app.test_client(), sample_payload(BV)).status_code == 200
    assert lock_is_free(lock_path(tmp_path))
    get_state(app).store.engine.dispose()


@needs_flock
def test_a_lock_file_this_user_cannot_write_is_locked_through_a_read_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Created first by another user (a root `flask devhealth replay`), mode 0644.
    real_open = os.open

    def open_as_other_user(path: Any, flags: int, *args: Any) -> int:
        if str(path).endswith("-writelock") and flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(store_module.os, "open", open_as_other_user)
    app, _ = _sqlite_app(tmp_path)
    assert send_webhook(app.test_client(), sample_payload(BV)).status_code == 200

    waited, _, answers = send_while_locked(app, tmp_path)

    assert waited  # the read-only descriptor still queues the writer
    assert answers == [200]
    get_state(app).store.engine.dispose()


@settings(max_examples=300, deadline=None)
@given(st.datetimes(timezones=st.none() | st.timezones()))
def test_direct_writes_format_datetimes_exactly_as_sqlalchemy(value: datetime) -> None:
    dialect = sa.create_engine("sqlite://").dialect
    sqlalchemy_format = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert sqlalchemy_format is not None
    assert _cheaper_equivalent(sqlalchemy_format) is _iso_microseconds
    assert _iso_microseconds(value) == sqlalchemy_format(value)


def test_a_conversion_without_a_cheaper_equal_is_kept() -> None:
    def odd(value: Any) -> Any:
        return None if value is None else f"<{value}>"

    assert _cheaper_equivalent(odd) is odd


def test_timestamps_written_directly_read_back_unchanged(tmp_path: Path) -> None:
    app, _ = _sqlite_app(tmp_path)
    before = utcnow()
    assert send_webhook(app.test_client(), sample_payload(BV)).status_code == 200
    after = utcnow()
    store = get_state(app).store
    (row,) = raw_rows(store.engine)
    assert before <= row.first_received_at <= row.processed_at <= after
    dialect = store.engine.dialect
    sqlalchemy_format = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert sqlalchemy_format is not None
    with sqlite3.connect(store.engine.url.database or "") as raw:
        stored = raw.execute(
            "SELECT first_received_at, processed_at FROM devhealth_webhook_deliveries"
        ).fetchone()
    assert stored == (
        sqlalchemy_format(row.first_received_at),
        sqlalchemy_format(row.processed_at),
    )


# -- payload policy ------------------------------------------------------------------------


def fails_the_first_time() -> list[int]:
    """Register a benefit verification handler that raises on its first call only; the list
    counts its calls."""
    calls: list[int] = []

    @on(BV)
    def flaky(event: Event) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first try fails")

    return calls


def test_store_payloads_false_keeps_metadata_only(durable: Callable[..., Flask]) -> None:
    app = durable(STORE_PAYLOADS=False)
    calls = fails_the_first_time()

    client = app.test_client()
    payload = sample_payload(BV, status="failed")
    store = get_state(app).store

    answers = [send_webhook(client, payload).status_code for _ in range(3)]

    # Live retries still work: the sender resends the body, the log keeps the bookkeeping.
    assert answers == [500, 200, 200]
    assert len(calls) == 2
    [stored] = raw_rows(store.engine)
    assert stored.payload is None
    delivery = store.get(payload["event_id"])
    assert not delivery.has_payload
    assert delivery.state == "processed"
    assert delivery.object_id == payload["data"]["id"]
    assert delivery.status == "failed"
    assert delivery.event_type == "benefit_verification.status_change"
    with pytest.raises(NotReplayable, match="DEVHEALTH_WEBHOOKS_STORE_PAYLOADS"):
        store.payload(payload["event_id"])


def test_stored_payload_is_the_body_as_received(durable: Callable[..., Flask]) -> None:
    app = durable()
    raw = (
        b'{"event_type": "prior_authorization.message",  "data": '
        + encode_body(sample_payload("prior_authorization.message")["data"])
        + b', "event_id": "evt_spacing"}'
    )

    response = send_webhook(app.test_client(), raw)

    assert response.status_code == 200
    assert get_state(app).store.payload("evt_spacing") == raw


def test_unknown_delivery_is_reported_by_id(durable: Callable[..., Flask]) -> None:
    store = get_state(durable()).store
    with pytest.raises(DeliveryNotFound, match="evt_nope"):
        store.get("evt_nope")
    with pytest.raises(DeliveryNotFound, match="evt_nope"):
        store.payload("evt_nope")


# -- purge ---------------------------------------------------------------------------------

#: (name, state, age in days) of the rows the purge tests start from.
ROWS = [
    ("old_processed", "processed", 40),
    ("old_ignored", "ignored", 40),
    ("old_dead", "dead_letter", 40),
    ("old_failed", "failed", 40),
    ("old_processing", "processing", 40),
    ("new_processed", "processed", 5),
]
OLD_FINISHED = {"old_processed", "old_ignored", "old_dead"}


def seed_rows(app: Flask) -> None:
    """One delivery per ROWS entry, then its state and age set directly in the table."""
    client = app.test_client()
    now = utcnow()
    for name, _, _ in ROWS:
        payload = sample_payload(PA)
        payload["event_id"] = name
        assert send_webhook(client, payload).status_code == 200
    with get_state(app).store.engine.begin() as conn:
        for name, state, age in ROWS:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.delivery_id == name)
                .values(state=state, first_received_at=now - timedelta(days=age))
            )


@pytest.mark.parametrize("batch", [1, 2, PURGE_BATCH])
def test_purge_deletes_finished_deliveries_older_than_the_cutoff(
    durable: Callable[..., Flask], batch: int
) -> None:
    app = durable()
    seed_rows(app)
    store = get_state(app).store

    purged = store.purge(timedelta(days=30), batch=batch)

    assert purged == 3
    left = {d.delivery_id for d in store.list(limit=None)}
    assert left == {"old_failed", "old_processing", "new_processed"}
    assert store.purge(timedelta(days=30)) == 0


def test_purge_with_a_shorter_cutoff_reaches_newer_rows(durable: Callable[..., Flask]) -> None:
    app = durable()
    seed_rows(app)
    store = get_state(app).store

    assert store.purge(timedelta(days=1)) == 4
    assert {d.delivery_id for d in store.list(limit=None)} == {"old_failed", "old_processing"}


@pytest.mark.parametrize("batch", [1, 2, PURGE_BATCH])
def test_purge_payloads_only_keeps_metadata(durable: Callable[..., Flask], batch: int) -> None:
    app = durable()
    seed_rows(app)
    store = get_state(app).store

    purged = store.purge(timedelta(days=30), payloads_only=True, batch=batch)

    assert purged == 3
    rows = {d.delivery_id: d for d in store.list(limit=None)}
    assert set(rows) == {name for name, _, _ in ROWS}
    for name, state, _ in ROWS:
        assert rows[name].state == state
        assert rows[name].object_id is not None
        assert rows[name].has_payload == (name not in OLD_FINISHED)
    with pytest.raises(NotReplayable):
        store.payload("old_processed")
    assert store.payload("old_failed")


def test_purge_commits_batch_by_batch(durable: Callable[..., Flask]) -> None:
    """One transaction per batch, so a delivery arriving meanwhile waits for one batch only:
    on 300,000 rows one transaction kept deliveries waiting up to 2.84 s, batches 0.11 s."""
    app = durable()
    seed_rows(app)
    store = get_state(app).store
    commits: list[Any] = []

    def count(conn: Any) -> None:
        commits.append(conn)

    sa.event.listen(store.engine, "commit", count)
    try:
        assert store.purge(timedelta(days=1), batch=2) == 4
    finally:
        sa.event.remove(store.engine, "commit", count)
    assert len(commits) == 3  # 4 rows in batches of 2, then an empty look


# -- what is indexed -----------------------------------------------------------------------


def captured_query(app: Flask, run: Callable[[], Any]) -> tuple[str, Any]:
    """The one SELECT that ``run`` sends to the delivery log, with its parameters."""
    engine = get_state(app).store.engine
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, params))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    [query] = seen
    return query


def query_plan(app: Flask, statement: str, params: Any) -> str:
    """The database's plan for ``statement``, as one string."""
    engine = get_state(app).store.engine
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
            return " | ".join(str(row[-1]) for row in rows)
        conn.exec_driver_sql("SET enable_seqscan = off")  # a few rows: make the choice visible
        return " | ".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, params))


def test_only_deliveries_needing_attention_are_in_a_secondary_index(tmp_path: Path) -> None:
    # A delivery that goes straight to processed writes its row and the delivery id's unique
    # index, nothing more: any other full index would cost every commit another WAL page.
    app = build_app(tmp_path, DATABASE_URL=None)  # the default SQLite file
    send_webhook(app.test_client(), sample_payload(BV))
    path = get_state(app).store.engine.url.database
    assert path is not None
    with sqlite3.connect(path) as conn:
        indexes = {
            row[1]: row for row in conn.execute("PRAGMA index_list(devhealth_webhook_deliveries)")
        }
        partial = {name for name, row in indexes.items() if row[4] == 1}
        full = {name for name, row in indexes.items() if row[4] == 0}
        [(where,)] = conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'ix_devhealth_webhook_deliveries_attention'"
        )
    get_state(app).store.engine.dispose()
    assert partial == {"ix_devhealth_webhook_deliveries_attention"}
    assert [indexes[name][3] for name in full] == ["u"]  # UNIQUE (delivery_id)
    assert "WHERE state IN ('failed', 'dead_letter')" in where


@pytest.mark.parametrize("state", ["failed", "dead_letter"])
def test_listing_deliveries_that_need_attention_uses_the_partial_index(
    durable: Callable[..., Flask], state: str
) -> None:
    app = durable()
    seed_rows(app)
    store = get_state(app).store

    statement, params = captured_query(app, lambda: store.list(state=state))
    plan = query_plan(app, statement, params)

    assert "ix_devhealth_webhook_deliveries_attention" in plan
    assert [d.delivery_id for d in store.list(state=state)] == [
        name for name, row_state, _ in reversed(ROWS) if row_state == state
    ]
    assert store.count(state) == 1


def test_newest_first_walks_the_primary_key_without_sorting(durable: Callable[..., Flask]) -> None:
    app = durable()
    seed_rows(app)
    store = get_state(app).store

    statement, params = captured_query(app, lambda: store.list(limit=3))
    plan = query_plan(app, statement, params)

    assert "TEMP B-TREE" not in plan.upper()
    assert "Sort" not in plan
    # Arrival order, whatever first_received_at says: seed_rows ages the early rows.
    assert [d.delivery_id for d in store.list(limit=3)] == [name for name, _, _ in ROWS][::-1][:3]


def test_a_missing_database_driver_is_a_configuration_error(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_psycopg(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "psycopg" or name.startswith("psycopg."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psycopg)
    with pytest.raises(ConfigurationError, match=r"\[postgres\]"):
        make_app(DATABASE_URL="postgresql://postgres@127.0.0.1:5432/test")


@pytest.mark.postgres
def test_postgresql_runs_each_single_statement_write_in_autocommit(tmp_path: Path) -> None:
    """Claim, progress and finish are one statement each, so they skip the BEGIN and COMMIT
    round trips; a takeover reads and writes in one transaction, so it keeps it."""
    url = postgres_url()
    if url is None:
        pytest.skip(PG_SKIP_REASON)
    reset_postgres(url)
    app = build_app(tmp_path, DATABASE_URL=url)
    engine = get_state(app).store.engine
    fails_the_first_time()

    @on(BV)
    def second(event: Event) -> None:
        pass

    writes: list[tuple[str, bool]] = []

    def record(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb in ("INSERT", "UPDATE"):
            writes.append((verb, conn.connection.dbapi_connection.autocommit))

    client = app.test_client()
    payload = sample_payload(BV)
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        answers = [send_webhook(client, payload).status_code for _ in range(2)]
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
        engine.dispose()

    assert answers == [500, 200]
    assert writes == [
        ("INSERT", True),  # claim
        ("UPDATE", True),  # finish: failed
        ("INSERT", True),  # the resend's claim, which conflicts
        ("UPDATE", False),  # takeover, in a transaction with its read
        ("UPDATE", True),  # progress: the first handler succeeded
        ("UPDATE", True),  # finish: processed
    ]
