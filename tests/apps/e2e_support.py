"""Helpers for the end-to-end tests that drive ``tests.apps.e2e_app`` under gunicorn."""

from __future__ import annotations

import http.client
import json
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from conftest import PG_SKIP_REASON, SECRET, postgres_url

from flask_devhealth_webhooks.store import create_engine_for, deliveries
from flask_devhealth_webhooks.testing import make_token

APP_SPEC = "tests.apps.e2e_app:create_app()"
APP_IMPORT = "tests.apps.e2e_app:create_app"
WEBHOOK_PATH = "/webhooks/devhealth"
SIDE_EFFECTS = "devhealth_e2e_side_effects"
#: Invented patient fields of the sample bodies: none may reach a log.
PHI = ("Alex", "Sample", "1980-01-01", "MBR-0001")


def expected_side_effects(name: str) -> set[str]:
    """The side effects ``tests.apps.e2e_app`` produces for one ``sample_payload(name)``.

    The sample prior authorization is ``completed``, so its update also fires the determination.
    """
    handlers = {"any"}
    if name == "benefit_verification.updated":
        handlers.add("bv")
    if name in ("prior_authorization.updated", "prior_authorization.determination"):
        handlers.add("determination")
    return handlers


@contextmanager
def scratch_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, or a PostgreSQL database of its own.

    The PostgreSQL database is created next to the one DEVHEALTH_WEBHOOKS_TEST_DATABASE_URL
    names and dropped afterwards, so tests that reset the shared database cannot interfere.
    """
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'e2e.sqlite3'}"
        return
    base = postgres_url()
    if base is None:
        pytest.skip(PG_SKIP_REASON)
    name = f"devhealth_e2e_{secrets.token_hex(6)}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            url = sa.engine.make_url(base).set(database=name)
            yield url.render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def server_env(database_url: str | None, **extra: str) -> dict[str, str]:
    """The environment ``create_app()`` reads; ``None`` keeps the default SQLite log."""
    return {
        "DEVHEALTH_WEBHOOKS_SECRET": SECRET,
        "DEVHEALTH_WEBHOOKS_DATABASE_URL": database_url or "",
        **extra,
    }


def post(base: str, raw: bytes, *, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """POST ``raw`` with a fresh signed token; the status and JSON answer.

    A dropped connection raises ``ConnectionError`` (or another ``OSError``).
    """
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request(
            "POST",
            WEBHOOK_PATH,
            body=raw,
            headers={"X-Webhook-Secret": make_token(SECRET), "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        answer: dict[str, Any] = json.loads(response.read())
        return response.status, answer
    finally:
        conn.close()


@dataclass(frozen=True)
class Row:
    """What the tests check of one delivery-log row."""

    state: str
    attempts: int
    succeeded: tuple[str, ...]
    lease_expires_at: Any
    has_payload: bool


@contextmanager
def _engine(url: str) -> Iterator[sa.engine.Engine]:
    engine = create_engine_for(url)
    try:
        yield engine
    finally:
        engine.dispose()


def log_rows(url: str) -> dict[str, Row]:
    """Every delivery-log row, by delivery id."""
    c = deliveries.c
    query = sa.select(
        c.delivery_id,
        c.state,
        c.attempts,
        c.succeeded_handlers,
        c.lease_expires_at,
        c.payload.is_not(None).label("has_payload"),
    )
    with _engine(url) as engine, engine.connect() as conn:
        return {
            r.delivery_id: Row(
                r.state,
                r.attempts,
                tuple(json.loads(r.succeeded_handlers)),
                r.lease_expires_at,
                bool(r.has_payload),
            )
            for r in conn.execute(query)
        }


def side_effect_counts(url: str) -> Counter[tuple[str, str]]:
    """How many times each (delivery id, handler) side effect happened."""
    query = sa.text(f"SELECT delivery_id, handler FROM {SIDE_EFFECTS}")  # noqa: S608 - constant
    with _engine(url) as engine, engine.connect() as conn:
        return Counter((r.delivery_id, r.handler) for r in conn.execute(query))


def side_effect_pids(url: str) -> set[int]:
    """The processes that ran handlers."""
    query = sa.text(f"SELECT DISTINCT pid FROM {SIDE_EFFECTS}")  # noqa: S608 - constant
    with _engine(url) as engine, engine.connect() as conn:
        return {int(r.pid) for r in conn.execute(query)}


def wait_until(deadline_seconds: float, poll: float = 0.1) -> Iterator[float]:
    """Yield the time left, every ``poll`` seconds, until the deadline (a bounded loop)."""
    end = time.monotonic() + deadline_seconds
    while (left := end - time.monotonic()) > 0:
        yield left
        time.sleep(poll)


def leaks_in(text: str) -> list[str]:
    """Which of the secret, a token or a patient field appears in ``text`` (empty is good)."""
    found = ["the secret"] if SECRET in text else []
    found.extend(value for value in PHI if value in text)
    if "eyJ" in text:  # how every JWT starts (base64 of '{"')
        found.append("a JWT")
    return found
