"""The apps compared by the benchmarks; each is also a gunicorn factory.

* ``create_floor()``: a bare Flask route doing ``jwt.decode`` + ``json.loads`` and calling one
  function. Nothing can be cheaper and still check the token.
* ``create_handwritten()``: what a user would write instead with the same guarantees: the floor,
  plus this project's schemas (``load_envelope``), plus a SQLite (WAL, file) insert of the
  delivery and its raw body before the function and an update after it, committed each time,
  on one persistent ``sqlite3`` connection per process. Duplicates are answered without calling
  the function again.
* ``create_peer()``: ``github-webhook`` (PyPI), HMAC-SHA1 header, one hook.
* ``create_extension()``: this project's blueprint, configured from the environment.

Configuration comes from the environment so gunicorn can build the same apps:
``BENCH_HANDWRITTEN_DB`` (SQLite file of the hand-written app), ``BENCH_INSTANCE`` (the
extension's instance folder, where its default SQLite log lives) and ``BENCH_DATABASE_URL``
(a delivery log URL for the extension; unset means the default SQLite file).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
from datetime import datetime, timezone
from typing import Any

import jwt
from flask import Flask, request
from marshmallow import ValidationError

from flask_devhealth_webhooks import blueprint, on
from flask_devhealth_webhooks.schemas import load_envelope

SECRET = "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz"
HEADER = "X-Webhook-Secret"
FLOOR_PATH = "/hook"
HANDWRITTEN_PATH = "/hook"
PEER_PATH = "/postreceive"
EXTENSION_PATH = "/webhooks/devhealth"
PEER_EVENT = "benefit_verification"

#: How many times the "one function" ran, per app kind (checked by the in-process benchmark).
CALLS: dict[str, int] = {"floor": 0, "handwritten": 0, "peer": 0, "extension": 0}


def handle(kind: str, _payload: Any) -> None:
    """The one function every app calls per delivery: it only counts."""
    CALLS[kind] += 1


def _unauthorized() -> tuple[dict[str, str], int]:
    return {"error": "invalid_token"}, 401


def create_floor() -> Flask:
    """The floor: verify the JWT, parse the JSON, call one function."""
    app = Flask("bench_floor")

    @app.post(FLOOR_PATH)
    def hook() -> Any:
        try:
            jwt.decode(request.headers.get(HEADER, ""), SECRET, algorithms=["HS256"])
        except jwt.InvalidTokenError:
            return _unauthorized()
        try:
            body = json.loads(request.get_data())
        except ValueError:
            return {"error": "invalid_json"}, 400
        handle("floor", body)
        return {"status": "processed"}

    return app


HANDWRITTEN_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL UNIQUE,
    event_type TEXT,
    state TEXT NOT NULL,
    received_at TEXT NOT NULL,
    processed_at TEXT,
    payload BLOB
)
"""


class _Connection:
    """One sqlite3 connection per process (gunicorn forks after import)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = -1
        self.conn: sqlite3.Connection | None = None

    def get(self) -> sqlite3.Connection:
        if self.conn is None or self.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(HANDWRITTEN_SCHEMA)
            conn.commit()
            self.conn, self.pid = conn, os.getpid()
        return self.conn


def create_handwritten(db_path: str | None = None) -> Flask:
    """The hand-written equivalent: floor + schema load + SQLite insert/update around the call."""
    app = Flask("bench_handwritten")
    path = (
        db_path
        or os.environ.get("BENCH_HANDWRITTEN_DB")
        or os.path.join(tempfile.gettempdir(), "bench_handwritten.sqlite3")
    )
    connection = _Connection(path)
    connection.get()

    @app.post(HANDWRITTEN_PATH)
    def hook() -> Any:
        raw = request.get_data()
        try:
            jwt.decode(request.headers.get(HEADER, ""), SECRET, algorithms=["HS256"])
        except jwt.InvalidTokenError:
            return _unauthorized()
        try:
            body = json.loads(raw)
        except ValueError:
            return {"error": "invalid_json"}, 400
        if not isinstance(body, dict):
            return {"error": "invalid_json"}, 400
        try:
            loaded = load_envelope(body)
        except ValidationError as exc:
            return {"error": "invalid_payload", "errors": exc.messages}, 422
        delivery_id = body.get("event_id")
        if not isinstance(delivery_id, str) or not delivery_id:
            delivery_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        conn = connection.get()
        now = datetime.now(timezone.utc).isoformat()
        inserted = conn.execute(
            "INSERT INTO deliveries (delivery_id, event_type, state, received_at, payload)"
            " VALUES (?, ?, 'processing', ?, ?) ON CONFLICT (delivery_id) DO NOTHING",
            (delivery_id, loaded.get("event_type"), now, raw),
        ).rowcount
        conn.commit()
        if not inserted:
            return {"status": "duplicate"}
        handle("handwritten", loaded)
        conn.execute(
            "UPDATE deliveries SET state = 'processed', processed_at = ? WHERE delivery_id = ?",
            (datetime.now(timezone.utc).isoformat(), delivery_id),
        )
        conn.commit()
        return {"status": "processed"}

    return app


def create_peer() -> Flask:
    """``github-webhook`` receiving the same body, signed with its HMAC-SHA1 header."""
    from github_webhook import Webhook

    app = Flask("bench_peer")
    webhook = Webhook(app, endpoint=PEER_PATH, secret=SECRET)

    @webhook.hook(PEER_EVENT)  # type: ignore[misc]
    def on_event(data: Any) -> None:
        handle("peer", data)

    return app


def _on_event(event: Any) -> None:
    handle("extension", event)


def create_extension(
    database_url: str | None = None, instance_path: str | None = None, **config: Any
) -> Flask:
    """This project's blueprint; the default SQLite log unless a URL is given or set."""
    instance = (
        instance_path
        or os.environ.get("BENCH_INSTANCE")
        or os.path.join(tempfile.gettempdir(), "bench_extension")
    )
    app = Flask("bench_extension", instance_path=os.path.abspath(instance))
    app.config["DEVHEALTH_WEBHOOKS_SECRET"] = SECRET
    url = database_url or os.environ.get("BENCH_DATABASE_URL")
    if url:
        app.config["DEVHEALTH_WEBHOOKS_DATABASE_URL"] = url
    for key, value in config.items():
        app.config[f"DEVHEALTH_WEBHOOKS_{key}"] = value
    app.register_blueprint(blueprint)
    on("benefit_verification.updated")(_on_event)  # blinker keeps one connection per receiver
    return app
