"""The blueprint and its one view; the request path reads top to bottom in ``receive``.

size -> token -> JSON -> schema -> record -> dispatch -> reply. Every answer is JSON.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, cast

from flask import Blueprint, Flask, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from marshmallow import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from .config import Settings, load_settings
from .events import (
    Event,
    canonical_name,
    delivery_id_for,
    expected_object,
    loggable,
    resolve_name,
)
from .exceptions import (
    DeliveryNotFound,
    InvalidJSON,
    InvalidPayload,
    MethodNotAllowed,
    PayloadTooLarge,
    PermanentFailure,
    RetryLater,
    WebhookRejected,
)
from .schemas import load_envelope
from .signals import (
    DispatchResult,
    dispatch,
    notify,
    webhook_duplicate,
    webhook_failed,
    webhook_in_progress,
    webhook_processed,
    webhook_received,
    webhook_rejected,
)
from .store import DeliveryStore, States
from .verify import Verifier

EXTENSION_KEY = "devhealth_webhooks"
logger = logging.getLogger("flask_devhealth_webhooks")

blueprint = Blueprint(
    EXTENSION_KEY, __name__, url_prefix="/webhooks/devhealth", cli_group="devhealth"
)


@dataclass
class State:
    """Per-app state kept in ``app.extensions["devhealth_webhooks"]``."""

    settings: Settings
    store: DeliveryStore
    verifier: Verifier


@blueprint.record_once
def _init_app(setup: BlueprintSetupState) -> None:
    """Read and validate config once per app, and open (lazily) its delivery log."""
    app = cast(Flask, setup.app)
    settings = load_settings(app)
    verifier = Verifier(settings)  # a secret PyJWT refuses fails here, not per request
    app.extensions[EXTENSION_KEY] = State(
        settings, DeliveryStore.from_settings(settings, app), verifier
    )


def get_state(app: Flask | None = None) -> State:
    """The extension state of ``app`` (default: the current app)."""
    app = app or current_app
    try:
        state: State = app.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError(
            "flask_devhealth_webhooks is not set up on this app: "
            "call app.register_blueprint(flask_devhealth_webhooks.blueprint) first."
        ) from None
    return state


@blueprint.post("", provide_automatic_options=False)
def receive() -> Response:
    """Verify, validate, record and dispatch one delivery; answer in JSON."""
    started = time.perf_counter()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = get_state(app)
    settings = state.settings
    try:
        raw = read_body(settings.max_body)
        claims, slot = state.verifier.verify(request.headers.get(settings.header), raw)
        body = parse_json(raw)
        event = load_event(body, claims)
    except WebhookRejected as exc:
        return _reject(app, exc, started)
    notify(webhook_received, app, event=event)
    try:
        outcome = deliver(app, state.store, event, raw)
    except (SQLAlchemyError, DeliveryNotFound) as exc:
        outcome = _storage_unavailable(exc)
    _log_outcome(outcome, event, slot, started)
    return _reply(app, outcome.body, outcome.status_code, outcome.headers)


#: Answered here in JSON rather than by Flask's HTML 405 page (a blueprint's error handlers
#: never see a routing error). HEAD follows GET.
OTHER_METHODS = ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"]
ALLOW = "OPTIONS, POST"


@blueprint.route("", methods=OTHER_METHODS, provide_automatic_options=False)
def other_methods() -> Response:
    """Refuse anything but POST in JSON, before reading the body or token; OPTIONS says POST.

    Flask's own OPTIONS answer would list this rule's methods too, so it is answered here.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if request.method == "OPTIONS":
        response: Response = app.response_class(status=204, headers={"Allow": ALLOW})
        del response.headers["Content-Type"]
        return response
    exc = MethodNotAllowed(f"This URL accepts only POST, not {request.method}.")
    response = _reject(app, exc, time.perf_counter())
    response.headers["Allow"] = ALLOW
    return response


# -- the steps --------------------------------------------------------------------------


def read_body(limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes without reading them all.

    Flask's own ``MAX_CONTENT_LENGTH``, when lower, is the limit instead, so that a body over
    it is answered in JSON like any other.
    """
    name = "DEVHEALTH_WEBHOOKS_MAX_BODY"
    ceiling = request.max_content_length
    if ceiling is not None and ceiling < limit:
        limit, name = ceiling, "MAX_CONTENT_LENGTH"
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(name, limit)
    # Read from the server's stream as werkzeug's request.stream would, without its wrapper
    # (3-4x slower; it also allocates a buffer of the size asked for).
    environ = request.environ
    raw: bytes
    try:
        if length is not None:
            raw = environ["wsgi.input"].read(length)
        elif "wsgi.input_terminated" in environ:
            raw = environ["wsgi.input"].read(limit + 1)  # chunked: the server ends the stream
        else:
            return b""  # no length, and the server cannot end the stream: werkzeug reads nothing
    except Exception:
        # The server's own error: a broken chunk, a connection cut short. Its message can
        # quote the body, so it is neither chained, logged nor echoed.
        environ["wsgi.input"] = io.BytesIO()
        raise InvalidJSON(
            "The body could not be read: its chunked framing is broken or it was cut short."
        ) from None
    # Put the body back, so that request.get_data() in a handler or hook still finds it.
    environ["wsgi.input"] = io.BytesIO(raw)
    if length is not None and len(raw) < length:
        raise InvalidJSON("The body ended before its declared Content-Length.")
    if len(raw) > limit:
        raise _too_large(name, limit)
    return raw


def _too_large(name: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The body is larger than {name} ({limit} bytes).")


class _NotFinite(ValueError):
    """NaN, Infinity, or a number too large for a float (``1e999``), which no JSON can carry."""


def _reject_constant(name: str) -> Any:
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


# Built once: json.loads with any keyword argument builds a new decoder on every call.
_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


MAX_DEPTH = 64


def parse_json(raw: bytes) -> dict[str, Any]:
    """One UTF-8 JSON object, whatever the Content-Type; NaN, Infinity and deep nesting refused."""
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is tolerated
        body = _decoder.decode(text)
    except UnicodeDecodeError:
        raise InvalidJSON("The body is not valid UTF-8.") from None
    except RecursionError:
        raise InvalidJSON("The body is nested too deeply.") from None
    except _NotFinite:
        raise InvalidJSON(
            "The body holds NaN, Infinity or a number too large for a float."
        ) from None
    except ValueError:
        raise InvalidJSON("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidJSON("The body must be one JSON object.")
    # A \ud800-style escape without its pair decodes to a lone surrogate, which no UTF-8
    # consumer (the delivery id, the database) can encode: refuse it here, as bad JSON.
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(body):
        raise InvalidJSON("The body contains an unpaired UTF-16 surrogate escape.")
    # Depth can only exceed MAX_DEPTH when there are at least that many brackets.
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _too_deep(body):
        raise InvalidJSON(f"The body is nested deeper than {MAX_DEPTH} levels.")
    return body


#: \ud800-\udfff escapes (JSON writes ``\u`` in lower case): only these can leave a lone
#: surrogate, so bodies with other escapes (accented names) skip the check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(body: Any) -> bool:
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _too_deep(body: Any) -> bool:
    """Level by level: json.loads builds plain dicts and lists, so exact type checks suffice
    (3-4x faster than a stack of (value, depth) pairs on a 1 MB body)."""
    level = [body]
    depth = 1
    while level:
        if depth > MAX_DEPTH:
            return True
        nested = []
        for value in level:
            for child in value.values() if type(value) is dict else value:
                if type(child) is dict or type(child) is list:
                    nested.append(child)
        level = nested
        depth += 1
    return False


def load_event(body: dict[str, Any], claims: dict[str, Any]) -> Event:
    """Schema-load the body and build the ``Event``; raise InvalidPayload with field paths."""
    try:
        loaded = load_envelope(body)
    except ValidationError as exc:
        errors = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise InvalidPayload("The body does not match the webhook schema.", errors) from None
    name = resolve_name(loaded.get("event_type"), loaded.get("title"))
    data = loaded["data"]
    expected = expected_object(name)
    if expected is not None and data["object"] != expected:
        raise _invalid("data.object", f"Must be {expected!r} for {name!r} events.")
    event_id = loaded.get("event_id")
    if isinstance(event_id, str) and len(event_id) > 255:
        raise _invalid("event_id", "Longer than 255 characters.")
    # These go into the delivery log's indexed columns, where PostgreSQL refuses NUL.
    for path, value in (
        ("event_id", event_id),
        ("event_type", loaded.get("event_type")),
        ("data.id", data["id"]),
        ("data.object", data["object"]),
        ("data.status", data.get("status")),
    ):
        if isinstance(value, str) and "\x00" in value:
            raise _invalid(path, "Must not contain NUL characters.")
    return Event(
        name=name,
        event_type=loaded.get("event_type"),
        title=loaded.get("title"),
        description=loaded.get("description"),
        event_id=event_id or None,
        occurred_at=loaded.get("occurred_at"),
        data=data,
        payload=body,
        delivery_id=delivery_id_for(body),
        claims=claims,
        received_at=datetime.now(timezone.utc),
    )


def _invalid(path: str, message: str) -> InvalidPayload:
    return InvalidPayload("The body does not match the webhook schema.", {path: [message]})


@dataclass
class Outcome:
    """A delivery's result: what was done, and the HTTP answer for it."""

    outcome: str
    status_code: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    result: DispatchResult | None = None


def deliver(
    app: Flask,
    store: DeliveryStore,
    event: Event,
    raw: bytes | None,
    *,
    replay: bool = False,
    force: bool = False,
) -> Outcome:
    """Record the delivery, run the handlers it still needs, and record how that went.

    Shared by the view and ``flask devhealth replay`` so both keep the same bookkeeping.
    """
    ids = {"event": event.name, "delivery_id": event.delivery_id}
    if replay:
        claim = store.claim_replay(event.delivery_id, force=force)
    else:
        claim = store.claim(event, raw)
    if claim.kind == "duplicate":
        notify(webhook_duplicate, app, event=event)
        return Outcome("duplicate", 200, {"status": "duplicate", "state": claim.state, **ids})
    if claim.kind == "in_progress":
        notify(webhook_in_progress, app, event=event)
        return _in_progress(app, ids)

    def progress(succeeded: list[str]) -> bool:
        return store.record_progress(
            event.delivery_id, [*claim.succeeded, *succeeded], attempt=claim.attempts
        )

    result = dispatch(app, event, skip=claim.succeeded, on_success=progress)
    succeeded = [*claim.succeeded, *result.succeeded]
    failures = result.failures
    error: str | None = None
    state: States
    if not failures:
        known = result.ran or result.skipped or canonical_name(event.name) is not None
        state = "processed" if known else "ignored"
    else:
        state = "failed"
        if all(isinstance(f.exception, PermanentFailure) for f in failures):
            state = "dead_letter"
        last = failures[-1]
        error = f"{last.handler}: {type(last.exception).__name__}: {_message(last.exception)}"
        for f in failures:
            logger.error(
                "webhook handler failed handler=%s exception=%s delivery_id=%s",
                loggable(f.handler),
                type(f.exception).__name__,
                loggable(event.delivery_id),
            )
    if result.stopped or not store.finish(
        event.delivery_id, state, succeeded, error, attempt=claim.attempts
    ):
        # This worker outlived its lease: the one that took over owns the outcome.
        _lease_lost(event)
        return _in_progress(app, ids)

    if not failures:
        notify(webhook_processed, app, event=event, outcome=state)
        return Outcome(state, 200, {"status": state, **ids}, result=result)
    notify(webhook_failed, app, event=event, failures=failures)
    if state == "dead_letter":
        return Outcome("dead_letter", 200, {"status": "dead_letter", **ids}, result=result)
    retry = [f.exception for f in failures if isinstance(f.exception, RetryLater)]
    if len(retry) == len(failures):
        default = get_state(app).settings.retry_after
        seconds = max(_retry_after(r.retry_after, default) for r in retry)
        return Outcome(
            "retry_later",
            503,
            {"error": "retry_later", "message": "A handler asked to retry later.", **ids},
            {"Retry-After": str(seconds)},
            result,
        )
    return Outcome(
        "failed",
        500,
        {
            "error": "handler_failed",
            "message": f"{len(failures)} handler(s) failed; the delivery can be replayed.",
            **ids,
        },
        result=result,
    )


#: The longest Retry-After we send, whatever a handler asks for.
MAX_RETRY_AFTER = 86400


def _retry_after(asked: Any, default: int) -> int:
    """A handler's ``retry_after`` as whole seconds in [0, a day]; the default if unusable."""
    if isinstance(asked, bool) or not isinstance(asked, (int, float)) or not math.isfinite(asked):
        return default
    return int(min(max(asked, 0), MAX_RETRY_AFTER))


def _message(exc: BaseException) -> str:
    """An exception's message for ``last_error``, bounded; never raises."""
    try:
        return str(exc)[:500]
    except Exception:  # a broken __str__ must not strand the delivery in 'processing'
        return "(the exception's message could not be read)"


def _in_progress(app: Flask, ids: dict[str, str]) -> Outcome:
    return Outcome(
        "in_progress",
        409,
        {
            "error": "in_progress",
            "message": "This delivery is being processed by another worker; retry later.",
            **ids,
        },
        {"Retry-After": str(get_state(app).settings.retry_after)},
    )


# -- replies and logs -------------------------------------------------------------------


def _lease_lost(event: Event) -> None:
    """This worker outlived its lease and another took the delivery over: say so, write nothing."""
    logger.warning(
        "webhook lease lost delivery_id=%s event=%s: handlers ran longer than "
        "DEVHEALTH_WEBHOOKS_LEASE_SECONDS and another worker took the delivery over",
        loggable(event.delivery_id),
        loggable(event.name),
    )


def _storage_unavailable(exc: Exception) -> Outcome:
    """The delivery log cannot be written: refuse, so the sender retries and nothing is lost."""
    # The driver's error code (SQLITE_READONLY, SQLITE_BUSY; PostgreSQL's SQLSTATE) says why
    # without quoting anything: its message may hold the statement's values.
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlite_errorname", None) or getattr(orig, "sqlstate", None)
    logger.error(
        "webhook delivery log unavailable exception=%s code=%s",
        type(exc).__name__,
        loggable(code),
    )
    return Outcome(
        "storage_unavailable",
        503,
        {
            "error": "storage_unavailable",
            "message": "The delivery log could not be written; retry later.",
        },
        {"Retry-After": "30"},
    )


def _reject(app: Flask, exc: WebhookRejected, started: float) -> Response:
    notify(webhook_rejected, app, reason=exc.code, status_code=exc.status_code)
    logger.warning(
        "webhook rejected reason=%s status=%d duration_ms=%.1f",
        exc.code,
        exc.status_code,
        (time.perf_counter() - started) * 1000,
    )
    body: dict[str, Any] = {"error": exc.code, "message": exc.message}
    if isinstance(exc, InvalidPayload):
        body["errors"] = exc.errors
    return _reply(app, body, exc.status_code)


#: Built once: json.dumps with any keyword argument builds a new encoder on every call.
_compact = json.JSONEncoder(separators=(",", ":"))


def _reply(
    app: Flask, body: dict[str, Any], status: int, headers: dict[str, str] | None = None
) -> Response:
    """The JSON answer, serialised here: the sender only parses it, so Flask's provider (sorted
    keys, a trailing newline) would add a fifth of the view's response cost for nothing."""
    return app.response_class(
        _compact.encode(body), status, headers, content_type="application/json"
    )


def _log_outcome(outcome: Outcome, event: Event, slot: int, started: float) -> None:
    if not logger.isEnabledFor(logging.INFO):
        return
    logger.info(
        "webhook %s event=%s delivery_id=%s object_id=%s status=%s http=%d secret_slot=%d "
        "duration_ms=%.1f",
        outcome.outcome,
        loggable(event.name),
        loggable(event.delivery_id),
        loggable(event.data.get("id")),
        loggable(event.status),
        outcome.status_code,
        slot,
        (time.perf_counter() - started) * 1000,
    )
