"""The server ``flask devhealth send`` talks to in tests/test_cli.py, configured from env vars.

``DEVHEALTH_WEBHOOKS_SECRET`` and ``DEVHEALTH_WEBHOOKS_DATABASE_URL`` are read as they are.
One catch-all handler behaves as the delivery asks through ``data.cli_mode`` (set with
``--set data.cli_mode=...``), using the delivery log's attempt count to fail only once:

- ``fail``: always raises (500);
- ``fail_once``: raises on the first attempt (500, no Retry-After), succeeds afterwards;
- ``retry_once``: raises ``RetryLater(retry_after=data.cli_retry_after)`` on the first attempt.
"""

from __future__ import annotations

import os

from flask import Flask

from flask_devhealth_webhooks import Event, RetryLater, blueprint, get_state, on


def behave(event: Event) -> None:
    """Fail or succeed as ``data.cli_mode`` says."""
    mode = event.data.get("cli_mode")
    if mode is None:
        return
    attempts = get_state().store.get(event.delivery_id).attempts
    if mode == "fail":
        raise RuntimeError("the cli target was asked to fail")
    if mode == "fail_once" and attempts == 1:
        raise RuntimeError("the cli target fails the first attempt")
    if mode == "retry_once" and attempts == 1:
        raise RetryLater(retry_after=event.data.get("cli_retry_after"))


def create_app() -> Flask:
    """The app gunicorn serves: the blueprint, config from the environment, one handler."""
    app = Flask(__name__)
    app.config["DEVHEALTH_WEBHOOKS_SECRET"] = os.environ["DEVHEALTH_WEBHOOKS_SECRET"]
    app.config["DEVHEALTH_WEBHOOKS_DATABASE_URL"] = os.environ["DEVHEALTH_WEBHOOKS_DATABASE_URL"]
    app.register_blueprint(blueprint)
    on("*")(behave)
    return app
