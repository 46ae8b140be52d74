"""An example app: receives Develop Health webhooks and shows each resource's latest status.

Run it from the repository root::

    DEVHEALTH_WEBHOOKS_SECRET=... gunicorn "example_app:create_app()"
    flask --app example_app devhealth send benefit_verification.updated --url http://127.0.0.1:8000/webhooks/devhealth

``./scripts/demo.sh`` does both, for every event type. Settings come from the environment, then
from ``config``:

- ``DEVHEALTH_WEBHOOKS_SECRET`` (required): the secret typed in the Develop Health admin panel.
- ``DEVHEALTH_WEBHOOKS_DATABASE_URL`` (optional): the extension's delivery log; by default a
  SQLite file in the instance folder.
- ``EXAMPLE_DATABASE`` (optional): the board's SQLite file; by default
  ``example.sqlite3`` in the instance folder.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, render_template

from flask_devhealth_webhooks import blueprint

from .board import Board
from .handlers import BOARD_KEY, register_handlers

__all__ = ["create_app"]


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app: webhook route at ``POST /webhooks/devhealth``, board at ``/``."""
    app = Flask(__name__)
    app.config["DEVHEALTH_WEBHOOKS_SECRET"] = os.environ.get("DEVHEALTH_WEBHOOKS_SECRET")
    if os.environ.get("DEVHEALTH_WEBHOOKS_DATABASE_URL"):
        app.config["DEVHEALTH_WEBHOOKS_DATABASE_URL"] = os.environ[
            "DEVHEALTH_WEBHOOKS_DATABASE_URL"
        ]
    app.config["EXAMPLE_DATABASE"] = os.environ.get("EXAMPLE_DATABASE") or os.path.join(
        app.instance_path, "example.sqlite3"
    )
    app.config.update(config or {})

    app.register_blueprint(blueprint)  # checks the settings; a missing secret fails here
    board = Board(app.config["EXAMPLE_DATABASE"])
    board.create_tables()
    app.extensions[BOARD_KEY] = board
    register_handlers()

    @app.get("/")
    def status_board() -> str:
        """The board as HTML (Jinja escapes every value)."""
        return render_template("board.html", **board.snapshot())

    @app.get("/status.json")
    def status_json() -> dict[str, Any]:
        """The same rows as JSON, for scripts and tests."""
        return board.snapshot()

    return app
