"""The webhook handlers: each turns one kind of event into a row of the status board.

Handlers are plain functions of an ``Event``. They are connected by ``register_handlers()``,
which ``create_app()`` calls, rather than by ``@on(...)`` at import time, so importing this
package registers nothing (a test suite that imports it keeps its other apps' handlers
unchanged). Blinker connects a function once, so calling ``register_handlers()`` again, for a
second app, is harmless. In your own app, decorating each function with ``@on(...)`` at module
level is the usual way.

Signals are process-wide: a handler runs for every app in the process that registered the
blueprint. Each one therefore looks up the board of the app handling the request, and does
nothing in an app that has none.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import current_app

from flask_devhealth_webhooks import Event, on

from .board import Board

BOARD_KEY = "example_board"


def register_handlers() -> None:
    """Connect every handler below to its events (same as decorating it with ``@on``)."""
    on("benefit_verification.updated")(record_verification)
    on("prior_authorization.updated")(record_authorization)
    # Legacy "Prior Authorization Determination" deliveries only fire this one. A completed
    # update fires both, so this handler sees it twice: the second write changes nothing.
    on("prior_authorization.determination")(record_authorization)
    on("*")(record_activity)  # every delivery: messages, outreach, activity log, new types...


def current_board() -> Board | None:
    """The board of the app handling this delivery; None in an app without one."""
    board = current_app.extensions.get(BOARD_KEY)
    return board if isinstance(board, Board) else None


def changed_at(event: Event) -> datetime:
    """When the change happened: the sender's ``occurred_at``, else when we received it."""
    return event.occurred_at or event.received_at


def record_verification(event: Event) -> None:
    """Keep a benefit verification's latest status, coverage and copay."""
    board = current_board()
    if board is None:
        return
    drugs = event.data.get("drugs") or []
    copays = [drug.get("copay") for drug in drugs if isinstance(drug, dict)]
    board.save_verification(
        event.object_id,
        status=event.status,
        coverage=_text(event.data.get("patient_coverage_status")),
        copay="; ".join(c for c in copays if isinstance(c, str)) or None,
        changed_at=changed_at(event),
    )


def record_authorization(event: Event) -> None:
    """Keep a prior authorization's latest status and the payer's outcome."""
    board = current_board()
    if board is None:
        return
    outcome = event.data.get("outcome")
    board.save_authorization(
        event.object_id,
        status=event.status,
        outcome=_text(outcome.get("result")) if isinstance(outcome, dict) else None,
        changed_at=changed_at(event),
    )


def record_activity(event: Event) -> None:
    """Count every delivery by event name, with the last object id and status it carried."""
    board = current_board()
    if board is None:
        return
    board.save_activity(
        event.delivery_id,
        event=event.name,
        object_id=event.object_id,
        status=event.status,
        received_at=event.received_at,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
