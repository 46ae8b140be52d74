"""``on()``, strong references, handler isolation and the lifecycle signals."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from blinker import Signal
from conftest import SECRET, fixture
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from flask_devhealth_webhooks import Event, on, signals
from flask_devhealth_webhooks.testing import make_token, sample_payload, send_webhook

URL = "/webhooks/devhealth"


def post(
    client: FlaskClient, body: dict[str, Any] | bytes, token: str | None = None
) -> TestResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"X-Webhook-Secret": make_token(SECRET) if token is None else token}
    response = client.post(URL, data=raw, headers=headers)
    assert response.is_json
    return response


def bv() -> dict[str, Any]:
    return fixture("benefit_verification_status_change_failed")


# -- on() --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("benefit_verification.update", "benefit_verification.updated"),
        ("benefit_verification.statuschange", "benefit_verification.status_change"),
        ("prior_authorization.mesage", "prior_authorization.message"),
        ("prior_authorisation.determination", "prior_authorization.determination"),
    ],
)
def test_unknown_name_lists_close_names(typo: str, suggestion: str) -> None:
    with pytest.raises(ValueError, match="strict=False") as info:
        on(typo)
    assert repr(suggestion) in str(info.value) or suggestion in str(info.value)


@pytest.mark.parametrize("name", ["", "totally.unrelated", "Benefit Verification Updated"])
def test_unknown_or_empty_name_raises(name: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - message content checked above
        on(name)


def test_unknown_name_creates_no_signal() -> None:
    with pytest.raises(ValueError, match="Closest"):
        on("benefit_verification.update")
    assert "benefit_verification.update" not in signals._signals


def test_strict_false_accepts_a_new_vendor_name(client: FlaskClient) -> None:
    seen: list[Event] = []

    @on("prior_authorization.vendor_added_later", strict=False)
    def handler(event: Event) -> None:
        seen.append(event)

    body = fixture("prior_authorization_message")
    body["event_type"] = "prior_authorization.vendor_added_later"
    assert post(client, body).get_json()["status"] == "processed"
    assert [e.name for e in seen] == ["prior_authorization.vendor_added_later"]


def test_strict_false_with_a_known_alias_uses_the_canonical_signal() -> None:
    assert signals.event_signal("benefit_verification.status_change") is (
        signals.benefit_verification_updated
    )

    def handler(event: Event) -> None: ...

    on("benefit_verification.status_change", strict=False)(handler)
    assert handler in signals.benefit_verification_updated.receivers_for(object())


def test_aliases_resolve_to_the_same_signal(client: FlaskClient) -> None:
    assert (
        signals.event_signal("prior_authorization.status_change")
        is (signals.EVENT_SIGNALS["prior_authorization.updated"])
    )
    assert (
        signals.event_signal("prior_authorization.updated") is signals.prior_authorization_updated
    )
    calls: list[tuple[str, str]] = []

    @on("benefit_verification.status_change")
    def by_alias(event: Event) -> None:
        calls.append(("alias", event.name))

    @on("benefit_verification.updated")
    def by_name(event: Event) -> None:
        calls.append(("canonical", event.name))

    post(client, bv())
    assert sorted(calls) == [
        ("alias", "benefit_verification.updated"),
        ("canonical", "benefit_verification.updated"),
    ]


def test_on_returns_the_function_unchanged() -> None:
    def handler(event: Event) -> None: ...

    class Callable_:
        def __call__(self, event: Event) -> None: ...

    instance = Callable_()
    assert on("benefit_verification.updated")(handler) is handler
    assert on("*")(instance) is instance
    assert handler.__name__ == "handler"


def test_handler_defined_in_a_function_survives_gc(client: FlaskClient) -> None:
    calls: list[str] = []

    def register() -> None:
        @on("benefit_verification.updated")
        def inner(event: Event) -> None:
            calls.append(event.object_id)

        on("*")(lambda event: calls.append("lambda"))

        class Recorder:
            def handle(self, event: Event) -> None:
                calls.append("method")

        on("benefit_verification.status_change")(Recorder().handle)

    register()
    gc.collect()
    gc.collect()
    assert post(client, bv()).status_code == 200
    assert sorted(calls) == ["bv_Fa1lEd9", "lambda", "method"]


def test_star_handler_runs_once_per_delivery(client: FlaskClient) -> None:
    seen: list[str] = []
    on("*")(lambda event: seen.append(event.name))
    post(client, fixture("prior_authorization_status_change_approved"))
    assert seen == ["prior_authorization.updated"]


# -- isolation --------------------------------------------------------------------------------


def test_a_raising_handler_does_not_stop_the_others(client: FlaskClient) -> None:
    calls: list[str] = []

    @on("prior_authorization.updated")
    def updated_ok(event: Event) -> None:
        calls.append("updated_ok")

    @on("prior_authorization.updated")
    def updated_broken(event: Event) -> None:
        calls.append("updated_broken")
        raise RuntimeError("boom")

    @on("prior_authorization.determination")
    def determination_broken(event: Event) -> None:
        calls.append("determination_broken")
        raise LookupError("boom")

    @on("prior_authorization.determination")
    def determination_ok(event: Event) -> None:
        calls.append("determination_ok")

    @on("*")
    def star(event: Event) -> None:
        calls.append("star")

    response = post(client, fixture("prior_authorization_status_change_approved"))
    assert response.status_code == 500
    assert response.get_json()["error"] == "handler_failed"
    assert sorted(calls) == [
        "determination_broken",
        "determination_ok",
        "star",
        "updated_broken",
        "updated_ok",
    ]


def test_base_exception_subclasses_other_than_exception_are_not_swallowed(
    client: FlaskClient,
) -> None:
    """KeyboardInterrupt and SystemExit must still stop the worker."""

    @on("benefit_verification.updated")
    def interrupt(event: Event) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        post(client, bv())


# -- lifecycle signals ------------------------------------------------------------------------


@contextmanager
def capture(signal: Signal) -> Iterator[list[tuple[Any, dict[str, Any]]]]:
    calls: list[tuple[Any, dict[str, Any]]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        calls.append((sender, kwargs))

    with signal.connected_to(receiver):
        yield calls


def test_lifecycle_on_success(app: Flask, client: FlaskClient) -> None:
    with (
        capture(signals.webhook_received) as received,
        capture(signals.webhook_processed) as processed,
        capture(signals.webhook_failed) as failed,
        capture(signals.webhook_rejected) as rejected,
    ):
        post(client, bv())
    assert len(received) == 1
    assert len(processed) == 1
    assert failed == []
    assert rejected == []
    sender, kwargs = received[0]
    assert sender is app
    assert set(kwargs) == {"event"}
    assert isinstance(kwargs["event"], Event)
    assert kwargs["event"].delivery_id == "wh_evt_bV0001a"
    sender, kwargs = processed[0]
    assert sender is app
    assert set(kwargs) == {"event", "outcome"}
    assert kwargs["outcome"] == "processed"
    assert kwargs["event"].name == "benefit_verification.updated"


def test_lifecycle_on_ignored(app: Flask, client: FlaskClient) -> None:
    body = fixture("prior_authorization_message")
    body["event_type"] = "prior_authorization.not_catalogued"
    with capture(signals.webhook_processed) as processed:
        assert post(client, body).get_json()["status"] == "ignored"
    assert [(s, k["outcome"]) for s, k in processed] == [(app, "ignored")]


def test_lifecycle_on_failure(app: Flask, client: FlaskClient) -> None:
    problem = RuntimeError("handler problem")

    @on("benefit_verification.updated")
    def broken(event: Event) -> None:
        raise problem

    with (
        capture(signals.webhook_received) as received,
        capture(signals.webhook_processed) as processed,
        capture(signals.webhook_failed) as failed,
    ):
        assert post(client, bv()).status_code == 500
    assert len(received) == 1
    assert processed == []
    assert len(failed) == 1
    sender, kwargs = failed[0]
    assert sender is app
    assert set(kwargs) == {"event", "failures"}
    assert kwargs["event"].delivery_id == "wh_evt_bV0001a"
    assert [f.exception for f in kwargs["failures"]] == [problem]
    assert "broken" in kwargs["failures"][0].handler


@pytest.mark.parametrize(
    ("token", "body", "reason", "status"),
    [
        ("", None, "missing_token", 401),
        ("not-a-jwt", None, "malformed_token", 401),
        (None, b"[]", "invalid_json", 400),
        (None, b'{"title": "Benefit Verification Updated"}', "invalid_payload", 400),
    ],
)
def test_lifecycle_on_rejection(
    app: Flask, client: FlaskClient, token: str | None, body: bytes | None, reason: str, status: int
) -> None:
    with (
        capture(signals.webhook_rejected) as rejected,
        capture(signals.webhook_received) as received,
        capture(signals.webhook_processed) as processed,
    ):
        response = post(client, bv() if body is None else body, token)
    assert response.status_code == status
    assert received == []
    assert processed == []
    assert rejected == [(app, {"reason": reason, "status_code": status})]


def test_lifecycle_on_oversized_body(make_app: Callable[..., Flask]) -> None:
    app = make_app(MAX_BODY=16)
    with capture(signals.webhook_rejected) as rejected:
        post(app.test_client(), bv())
    assert rejected == [(app, {"reason": "payload_too_large", "status_code": 413})]


def test_lifecycle_sender_is_the_app_that_received_it(make_app: Callable[..., Flask]) -> None:
    first, second = make_app(), make_app()
    with capture(signals.webhook_received) as received:
        post(second.test_client(), bv())
        post(first.test_client(), fixture("prior_authorization_message"))
    assert [sender for sender, _ in received] == [second, first]


def test_signals_are_documented() -> None:
    for signal in (
        signals.webhook_received,
        signals.webhook_rejected,
        signals.webhook_processed,
        signals.webhook_failed,
    ):
        assert signal.__doc__


def test_handlers_run_in_the_order_they_were_registered(client: FlaskClient) -> None:
    """blinker keeps receivers in a set; dispatch restores registration order."""
    calls: list[int] = []
    for index in range(12):

        def handler(event: Event, index: int = index) -> None:
            calls.append(index)

        handler.__qualname__ = f"ordered_{index}"
        on("benefit_verification.updated")(handler)
    response = send_webhook(client, sample_payload("benefit_verification.updated"))
    assert response.status_code == 200
    assert calls == list(range(12))


@pytest.mark.parametrize(
    "signal",
    [signals.event_signal("benefit_verification.updated"), signals.webhook_processed],
    ids=["handlers", "lifecycle receivers"],
)
def test_weakly_connected_methods_run_in_connection_order(
    client: FlaskClient, signal: Signal
) -> None:
    """A weak reference to a bound method resolves to a new object each time: ordering by
    ``id()`` left these in blinker's set order, different from run to run."""
    calls: list[int] = []

    class Observer:
        def __init__(self, number: int) -> None:
            self.number = number

        def heard(self, *args: Any, **kwargs: Any) -> None:
            calls.append(self.number)

    observers = [Observer(n) for n in range(8)]
    for observer in observers:
        signal.connect(observer.heard)  # weak: blinker's default
    try:
        response = send_webhook(client, sample_payload("benefit_verification.updated"))
    finally:
        for observer in observers:
            signal.disconnect(observer.heard)
    assert response.status_code == 200
    assert calls == list(range(8))
