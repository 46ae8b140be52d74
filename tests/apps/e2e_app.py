"""An app for end-to-end tests under a real gunicorn, configured from the environment.

Its handlers write each side effect as a row (delivery id, handler, pid) into a table of the
delivery log's own database, so a test can count side effects across worker processes.
Importing this module registers nothing; ``create_app()`` connects the handlers.

Environment:

- ``DEVHEALTH_WEBHOOKS_SECRET``: the webhook secret (required).
- ``DEVHEALTH_WEBHOOKS_DATABASE_URL``: the delivery log; unset or empty keeps the default
  SQLite file in the instance folder.
- ``DEVHEALTH_WEBHOOKS_LEASE_SECONDS``: the claim lease.
- ``DEVHEALTH_E2E_INSTANCE_PATH``: the app's instance folder (absolute).
- ``DEVHEALTH_E2E_HANDLER_DELAY``: seconds the ``"*"`` handler sleeps, to widen races.
- ``DEVHEALTH_E2E_CRASH_MARKER``: a file; a delivery with ``data.status == "crash"`` removes it
  and kills its worker with ``os._exit(1)``, so exactly one delivery crashes per marker.
- ``DEVHEALTH_E2E_LOG_LEVEL``: send the extension's log to stderr at this level.
"""

from __future__ import annotations

import logging
import os
import time

import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from flask_devhealth_webhooks import Event, blueprint, get_state, on

#: One row per handler call that completed; no unique key, so duplicates stay countable.
side_effects = sa.Table(
    "devhealth_e2e_side_effects",
    sa.MetaData(),
    sa.Column("delivery_id", sa.String(255), nullable=False),
    sa.Column("handler", sa.String(64), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)

CRASH_STATUS = "crash"


def _record(event: Event, handler: str) -> None:
    engine = get_state(current_app).store.engine
    with engine.begin() as conn:
        conn.execute(
            side_effects.insert().values(
                delivery_id=event.delivery_id, handler=handler, pid=os.getpid()
            )
        )


def record_bv(event: Event) -> None:
    """``benefit_verification.updated``: runs before the ``"*"`` handler of a delivery."""
    _record(event, "bv")


def record_determination(event: Event) -> None:
    """``prior_authorization.determination`` (derived from a completed PA update)."""
    _record(event, "determination")


def record_any(event: Event) -> None:
    """``"*"``: runs last; may sleep, and may kill its worker once (see the module doc)."""
    delay = current_app.config["E2E_HANDLER_DELAY"]
    if delay:
        time.sleep(delay)
    marker = current_app.config["E2E_CRASH_MARKER"]
    if marker and event.status == CRASH_STATUS:
        try:
            os.unlink(marker)
        except FileNotFoundError:
            pass
        else:
            os._exit(1)
    _record(event, "any")


def create_side_effects_table(engine: Engine) -> None:
    """Create the side-effect table; safe when several workers race to it."""
    try:
        side_effects.create(engine, checkfirst=True)
    except (IntegrityError, OperationalError, ProgrammingError):
        if not sa.inspect(engine).has_table(side_effects.name):
            raise


def create_app() -> Flask:
    """The app gunicorn serves: ``tests.apps.e2e_app:create_app()``."""
    app = Flask(__name__, instance_path=os.environ.get("DEVHEALTH_E2E_INSTANCE_PATH") or None)
    app.config["DEVHEALTH_WEBHOOKS_SECRET"] = os.environ.get("DEVHEALTH_WEBHOOKS_SECRET")
    url = os.environ.get("DEVHEALTH_WEBHOOKS_DATABASE_URL")
    if url:
        app.config["DEVHEALTH_WEBHOOKS_DATABASE_URL"] = url
    lease = os.environ.get("DEVHEALTH_WEBHOOKS_LEASE_SECONDS")
    if lease:
        app.config["DEVHEALTH_WEBHOOKS_LEASE_SECONDS"] = float(lease)
    app.config["E2E_HANDLER_DELAY"] = float(os.environ.get("DEVHEALTH_E2E_HANDLER_DELAY") or 0)
    app.config["E2E_CRASH_MARKER"] = os.environ.get("DEVHEALTH_E2E_CRASH_MARKER") or None
    level = os.environ.get("DEVHEALTH_E2E_LOG_LEVEL")
    if level:
        log = logging.getLogger("flask_devhealth_webhooks")
        log.setLevel(level)
        if not log.handlers:
            log.addHandler(logging.StreamHandler())
    app.register_blueprint(blueprint)
    create_side_effects_table(get_state(app).store.engine)
    on("benefit_verification.updated")(record_bv)
    on("prior_authorization.determination")(record_determination)
    on("*")(record_any)
    return app
