"""Shared fixtures: an app factory, signal hygiene, and the database backends to test on."""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_devhealth_webhooks import blueprint, get_state
from flask_devhealth_webhooks.signals import _events, _signals, any_event
from flask_devhealth_webhooks.store import deliveries

SECRET = "test-secret-0123456789abcdefghijklmnopqrstuvwxyz"
FIXTURES = Path(__file__).parent / "fixtures"
PG_ENV = "DEVHEALTH_WEBHOOKS_TEST_DATABASE_URL"
PG_SKIP_REASON = (
    f"PostgreSQL tests need {PG_ENV} naming a throwaway database (they drop its delivery "
    f"table), e.g. {PG_ENV}=postgresql+psycopg://postgres@127.0.0.1:5432/test (`.ci/run` sets it)"
)


def fixture(name: str) -> dict[str, Any]:
    """A sample body from tests/fixtures (copied from the shared reference set)."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def build_app(tmp_path: Path | None = None, **config: Any) -> Flask:
    """A fresh app with the blueprint registered; config keys without the prefix."""
    app = Flask("test_app", instance_path=str(tmp_path) if tmp_path else None)
    app.config["TESTING"] = True
    app.config["DEVHEALTH_WEBHOOKS_SECRET"] = SECRET
    app.config["DEVHEALTH_WEBHOOKS_DATABASE_URL"] = "sqlite://"
    for key, value in config.items():
        app.config[f"DEVHEALTH_WEBHOOKS_{key}"] = value
    app.register_blueprint(blueprint)
    return app


@pytest.fixture
def make_app(tmp_path: Path, _disconnect_test_handlers: None) -> Callable[..., Flask]:
    """``make_app(SECRET=..., MAX_BODY=...)``: a fresh app per call."""

    def make(**config: Any) -> Flask:
        return build_app(tmp_path, **config)

    return make


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The default app (in-memory delivery log); pytest-flask builds ``client`` on it."""
    return make_app()


@pytest.fixture(autouse=True)
def _disconnect_test_handlers() -> Iterator[None]:
    """Disconnect every receiver a test connected, so handlers never leak between tests."""
    every = [any_event, *_events.values(), *_signals.values()]
    before = {id(sig): set(sig.receivers) for sig in every}
    yield
    for sig in [any_event, *_events.values(), *_signals.values()]:
        for receiver_id in set(sig.receivers) - before.get(id(sig), set()):
            receiver: Any = sig.receivers[receiver_id]
            if isinstance(receiver, weakref.ref):
                receiver = receiver()
            if receiver is not None:
                sig.disconnect(receiver)


@pytest.fixture
def durable(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """``durable(**config)``: apps whose delivery log is the parametrized database."""
    apps: list[Flask] = []

    def make(**config: Any) -> Flask:
        app = build_app(tmp_path, DATABASE_URL=database_url, **config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        get_state(app).store.engine.dispose()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test that runs on PostgreSQL, so ``-m postgres`` and ``-m 'not postgres'`` work."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "postgres" in callspec.params.values():
            item.add_marker(pytest.mark.postgres)


def postgres_url() -> str | None:
    return os.environ.get(PG_ENV) or None


def reset_postgres(url: str) -> None:
    """Drop the delivery table so each PostgreSQL test starts empty."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        deliveries.drop(conn, checkfirst=True)
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each durable-store test runs on a SQLite file and, when reachable, on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'deliveries.sqlite3'}"
    url = postgres_url()
    if url is None:
        pytest.skip(PG_SKIP_REASON)
    reset_postgres(url)
    return url
