"""Regressions from a new user's attempts to break the endpoint: each once gave a 500, ran a
handler twice, or skipped a handler that never succeeded."""

from __future__ import annotations

import base64
import functools
import gc
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from conftest import SECRET
from flask import Flask
from flask.testing import FlaskClient

from flask_devhealth_webhooks import Event, get_state, on
from flask_devhealth_webhooks.signals import webhook_processed, webhook_received, webhook_rejected
from flask_devhealth_webhooks.testing import make_token, sample_payload, send_webhook

URL = "/webhooks/devhealth"
HEADER = "X-Webhook-Secret"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """An HS256 JWT built by hand, so headers PyJWT would refuse to write can be sent."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256", "kid": 1},
        {"alg": "HS256", "crit": ["unknown-extension"], "unknown-extension": True},
        {"alg": "HS256", "crit": []},
    ],
)
def test_token_header_fields_pyjwt_refuses_are_malformed_not_500(
    client: FlaskClient, header: dict[str, Any]
) -> None:
    token = hand_signed(header, {})
    body = json.dumps(sample_payload("benefit_verification.updated")).encode()
    response = client.post(URL, data=body, headers={HEADER: token})
    assert response.status_code == 401
    assert response.json["error"] == "malformed_token"


@pytest.mark.parametrize(
    "raw",
    [
        # legacy envelope: the delivery id is the canonical body's digest
        b'{"title": "Benefit Verification Updated", "description": "\\ud800", "data": '
        b'{"id": "bv_1", "object": "benefit_verification"}}',
        # new envelope: the lone surrogate sits in a column of the delivery log
        b'{"event_id": "wh_1", "event_type": "benefit_verification.status_change", "data": '
        b'{"id": "bv_\\uDC00", "object": "benefit_verification"}}',
    ],
)
def test_unpaired_surrogate_escapes_are_invalid_json(client: FlaskClient, raw: bytes) -> None:
    response = send_webhook(client, raw)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_json"


def test_paired_surrogate_escapes_are_fine(client: FlaskClient) -> None:
    payload = sample_payload("benefit_verification.updated")
    raw = json.dumps(payload).replace('"description": "', '"description": "\\ud83d\\ude00 ', 1)
    response = send_webhook(client, raw.encode())
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("event_id", "event_id"),
        ("data.id", "data.id"),
        ("data.status", "data.status"),
        ("event_type", "event_type"),
    ],
)
def test_nul_in_logged_identifiers_is_invalid_payload(
    client: FlaskClient, path: str, field: str
) -> None:
    payload = sample_payload("benefit_verification.updated")
    target = payload["data"] if path.startswith("data.") else payload
    target[path.split(".")[-1]] = "bad\x00value"
    response = send_webhook(client, payload)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_payload"
    assert field in response.json["errors"]
    assert "bad" not in json.dumps(response.json)


def test_handlers_made_by_one_factory_are_tracked_apart(make_app: Callable[..., Flask]) -> None:
    """Two handlers sharing a qualname: the one that failed must run again on the retry."""
    app = make_app()
    ran: list[str] = []
    fail_once = {"second": True}

    def make(tag: str) -> Callable[[Event], None]:
        @on("prior_authorization.message")
        def handler(event: Event) -> None:
            if fail_once.get(tag):
                fail_once[tag] = False
                raise RuntimeError("transient")
            ran.append(tag)

        return handler

    make("first")
    make("second")
    payload = sample_payload("prior_authorization.message")
    client = app.test_client()
    assert send_webhook(client, payload).status_code == 500
    assert ran == ["first"]
    assert send_webhook(client, payload).json["status"] == "processed"
    assert ran == ["first", "second"]
    succeeded = get_state(app).store.get(payload["event_id"]).succeeded_handlers
    assert len(succeeded) == 2


def test_partials_of_one_function_are_tracked_apart(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    ran: list[str] = []

    def handler(tag: str, event: Event) -> None:
        ran.append(tag)

    on("prior_authorization.message")(functools.partial(handler, "a"))
    on("prior_authorization.message")(functools.partial(handler, "b"))
    payload = sample_payload("prior_authorization.message")
    assert send_webhook(app.test_client(), payload).status_code == 200
    assert sorted(ran) == ["a", "b"]
    keys = get_state(app).store.get(payload["event_id"]).succeeded_handlers
    assert len(set(keys)) == 2
    assert all("handler" in key for key in keys)


@pytest.mark.parametrize("event_type", ["*", "webhook-received", "event-dispatched"])
def test_an_event_type_cannot_reach_the_catch_all_twice_or_lifecycle_receivers(
    client: FlaskClient, event_type: str
) -> None:
    star: list[str] = []
    received: list[Any] = []
    on("*")(lambda event: star.append(event.name))
    payload = sample_payload("benefit_verification.updated")
    payload["event_type"] = event_type
    with webhook_received.connected_to(lambda sender, **kw: received.append(sender)):
        response = send_webhook(client, payload)
    assert response.status_code == 200
    assert star == [event_type]
    assert len(received) == 1  # sent once, by the extension, with the app as sender
    assert received[0] is client.application


def test_a_raising_lifecycle_receiver_does_not_break_the_answer(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []
    on("benefit_verification.updated")(lambda event: ran.append(event.delivery_id))

    def broken(sender: Any, **kwargs: Any) -> None:
        raise ValueError("observer bug")

    caplog.set_level(logging.INFO, logger="flask_devhealth_webhooks")
    with webhook_received.connected_to(broken), webhook_rejected.connected_to(broken):
        accepted = send_webhook(client, sample_payload("benefit_verification.updated"))
        rejected = client.post(URL, data=b"{}", headers={HEADER: make_token("wrong" * 8)})
    assert accepted.status_code == 200
    assert accepted.json["status"] == "processed"
    assert len(ran) == 1
    assert rejected.status_code == 401
    assert rejected.json["error"] == "invalid_signature"
    assert (
        "signal receiver failed signal=webhook-received receiver="
        f"{__name__}.test_a_raising_lifecycle_receiver_does_not_break_the_answer.<locals>.broken"
        " exception=ValueError"
    ) in caplog.text
    assert "observer bug" not in caplog.text


def test_a_raising_lifecycle_receiver_does_not_silence_the_next(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """blinker's send() stops at the first receiver that raises; every observer must hear."""
    heard: list[str] = []

    def first(sender: Any, **kwargs: Any) -> None:
        heard.append("first")
        raise ValueError("observer bug")

    def second(sender: Any, **kwargs: Any) -> None:
        heard.append("second")

    with webhook_processed.connected_to(first), webhook_processed.connected_to(second):
        answer = send_webhook(client, sample_payload("benefit_verification.updated"))
    assert answer.status_code == 200
    assert heard == ["first", "second"]
    assert "receiver failed signal=webhook-processed" in caplog.text


def test_a_coroutine_lifecycle_receiver_is_refused_and_logged(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Lifecycle signals are sent synchronously: an async receiver is logged, not left
    as a coroutine that never runs."""
    heard: list[str] = []

    async def observer(sender: Any, **kwargs: Any) -> None:
        heard.append("async")  # pragma: no cover - never awaited

    def after(sender: Any, **kwargs: Any) -> None:
        heard.append("after")

    with webhook_processed.connected_to(observer), webhook_processed.connected_to(after):
        answer = send_webhook(client, sample_payload("benefit_verification.updated"))
    assert answer.status_code == 200
    assert heard == ["after"]
    assert "exception=TypeError" in caplog.text


def test_a_receiver_disconnected_by_an_earlier_one_is_not_called(client: FlaskClient) -> None:
    """As blinker's send() does: each receiver is looked up again just before its call."""
    heard: list[str] = []

    def audit(sender: Any, **kwargs: Any) -> None:
        heard.append("audit")

    def gate(sender: Any, **kwargs: Any) -> None:
        heard.append("gate")
        webhook_processed.disconnect(audit)

    webhook_processed.connect(gate, weak=False)
    webhook_processed.connect(audit, weak=False)
    try:
        send_webhook(client, sample_payload("benefit_verification.updated"))
    finally:
        webhook_processed.disconnect(gate)
    assert heard == ["gate"]


def test_a_weak_receiver_dropped_by_an_earlier_one_is_not_called(client: FlaskClient) -> None:
    heard: list[str] = []

    class Observer:
        def on_processed(self, sender: Any, **kwargs: Any) -> None:
            heard.append("dropped")  # pragma: no cover - must not run

    kept: list[Observer] = [Observer()]

    def dropper(sender: Any, **kwargs: Any) -> None:
        heard.append("dropper")
        kept.clear()  # the last reference: the weak receiver is gone
        gc.collect()

    webhook_processed.connect(dropper, weak=False)
    webhook_processed.connect(kept[0].on_processed)
    try:
        send_webhook(client, sample_payload("benefit_verification.updated"))
    finally:
        webhook_processed.disconnect(dropper)
    assert heard == ["dropper"]


def test_a_muted_lifecycle_signal_calls_no_receiver(client: FlaskClient) -> None:
    heard: list[str] = []

    def observer(sender: Any, **kwargs: Any) -> None:
        heard.append("heard")

    with webhook_processed.connected_to(observer), webhook_processed.muted():
        answer = send_webhook(client, sample_payload("benefit_verification.updated"))
    assert answer.status_code == 200
    assert heard == []
