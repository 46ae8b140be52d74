"""Helpers for testing your own handlers: signed tokens, sample bodies, one-line sends.

from flask_devhealth_webhooks.testing import sample_payload, send_webhook, record_events

with record_events() as events:
    response = send_webhook(client, sample_payload("benefit_verification.updated"))
assert response.status_code == 200 and events[0].status == "completed"
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from flask import Flask, url_for

from .blueprint import get_state
from .events import DETERMINATION, EVENT_TYPES, Event, canonical_name
from .signals import event_dispatched
from .verify import _jws, body_digest

#: How long a token made by ``make_token`` stays valid unless ``exp`` is given.
TOKEN_LIFETIME = 300


def make_token(secret: str | bytes, *, algorithm: str = "HS256", **claims: Any) -> str:
    """A JWT signed like the platform's: ``iat`` now and ``exp`` in 5 minutes unless given.

    Pass ``iat=None`` or ``exp=None`` to leave a claim out. Datetimes become timestamps.
    """
    now = int(time.time())
    merged: dict[str, Any] = {"iat": now, "exp": now + TOKEN_LIFETIME, **claims}
    body = {
        k: int(v.timestamp()) if isinstance(v, datetime) else v
        for k, v in merged.items()
        if v is not None
    }
    key = secret.encode() if isinstance(secret, str) else secret
    payload = json.dumps(body, separators=(",", ":")).encode()
    return _jws.encode(payload, key, algorithm=algorithm, headers={"typ": "JWT"})


def _resource(obj: str) -> dict[str, Any]:
    text = resources.files("flask_devhealth_webhooks").joinpath(f"samples/{obj}.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def sample_payload(name: str, *, legacy: bool = False, **data_overrides: Any) -> dict[str, Any]:
    """An invented but realistic body for any catalogued event (canonical name or alias).

    New-style bodies carry a fresh ``event_id`` each call; ``legacy=True`` gives the old
    title/description/data envelope (only for events that had a title). Keyword arguments
    replace top-level fields of ``data``. For ``prior_authorization.determination`` the
    new-style body is a completed ``prior_authorization.status_change``, which fires it.
    """
    canonical = canonical_name(name)
    if canonical is None:
        raise ValueError(f"Unknown event {name!r}; see flask_devhealth_webhooks.CATALOGUE.")
    spec = EVENT_TYPES[canonical]
    data = _resource(spec.object)
    if spec.object == "prior_authorization" and canonical == DETERMINATION:
        data["status"] = "completed"
    data.update(copy.deepcopy(data_overrides))
    body: dict[str, Any] = {}
    if legacy:
        if spec.title is None:
            raise ValueError(f"{canonical!r} has no legacy (title-only) form.")
        body["title"] = spec.title
    else:
        sent_type = canonical
        if canonical == DETERMINATION:
            sent_type = "prior_authorization.status_change"
        elif spec.aliases:
            sent_type = spec.aliases[0]
        body["event_id"] = "wh_evt_" + secrets.token_hex(8)
        body["occurred_at"] = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        body["event_type"] = sent_type
        body["title"] = spec.title or canonical.replace("_", " ").replace(".", ": ").title()
    body["description"] = spec.description
    body["data"] = data
    return body


def set_path(payload: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path such as ``data.status`` (list items by index: ``data.drugs.0.name``)."""
    *parents, last = path.split(".")
    target: Any = payload
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


def signing_claims(app: Flask, raw: bytes) -> dict[str, Any]:
    """The claims ``app``'s configuration requires: audience, issuer, body hash."""
    settings = get_state(app).settings
    claims: dict[str, Any] = {}
    if settings.audience is not None:
        claims["aud"] = settings.audience
    if settings.issuer is not None:
        claims["iss"] = settings.issuer
    if settings.body_hash_claim is not None:
        claims[settings.body_hash_claim] = body_digest(raw)
    for name in settings.required_claims:
        claims.setdefault(name, "test")
    return claims


def encode_body(payload: Mapping[str, Any] | bytes | str) -> bytes:
    """The bytes sent for ``payload``: a mapping is JSON-encoded, bytes are sent as they are."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload).encode()


def send_webhook(
    client: Any,
    payload: Mapping[str, Any] | bytes | str,
    *,
    secret: str | bytes | None = None,
    headers: Mapping[str, str] | None = None,
    **claims: Any,
) -> Any:
    """POST ``payload`` to the app's webhook route, signed with its own (first) secret.

    ``client`` is a Flask test client (pytest-flask's ``client`` fixture works). Extra keyword
    arguments become JWT claims; ``headers`` are sent as given and override the token header.
    """
    app: Flask = client.application
    state = get_state(app)
    raw = encode_body(payload)
    key = secret if secret is not None else state.settings.secrets[0]
    claims = {**signing_claims(app, raw), **claims}
    token = make_token(key, algorithm=state.settings.algorithms[0], **claims)
    sent = {state.settings.header: token, "Content-Type": "application/json"}
    sent.update(headers or {})
    with app.test_request_context():
        url = url_for("devhealth_webhooks.receive")
    return client.post(url, data=raw, headers=sent)


@contextmanager
def record_events(app: Flask | None = None) -> Iterator[list[Event]]:
    """Collect every ``Event`` dispatched (derived ones included) while the block runs."""
    events: list[Event] = []

    def record(sender: Any, event: Event, **_: Any) -> None:
        if app is None or sender is app:
            events.append(event)

    with event_dispatched.connected_to(record):
        yield events
