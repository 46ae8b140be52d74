"""Every state transition of the durable delivery log, on a SQLite file and on PostgreSQL.

new -> processed | failed | ignored | dead_letter; failed and expired processing -> taken over;
finished -> duplicate; processing under a live lease -> in_progress. Time is a fake clock
patched into the store, so lease expiry and timestamps are checked exactly, without sleeping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import SECRET
from flask import Flask

from flask_devhealth_webhooks import Event, PermanentFailure, RetryLater, get_state, on
from flask_devhealth_webhooks import store as store_module
from flask_devhealth_webhooks.blueprint import load_event
from flask_devhealth_webhooks.signals import (
    handler_key,
    webhook_duplicate,
    webhook_failed,
    webhook_in_progress,
)
from flask_devhealth_webhooks.store import Delivery, deliveries
from flask_devhealth_webhooks.testing import encode_body, sample_payload, send_webhook

BV = "benefit_verification.updated"
PA = "prior_authorization.updated"
DETERMINATION = "prior_authorization.determination"
PHI = ("Alex", "Sample", "1980-01-01", "MBR-0001", "alex.sample@example.test")
LEASE = timedelta(seconds=300)
T0 = datetime(2030, 1, 2, 3, 4, 5)


class Clock:
    """A settable naive-UTC clock standing in for ``store.utcnow``."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(store_module, "utcnow", fake)
    return fake


def row(app: Flask, delivery_id: str) -> Delivery:
    return get_state(app).store.get(delivery_id)


def set_row(app: Flask, delivery_id: str, **values: Any) -> None:
    with get_state(app).store.engine.begin() as conn:
        conn.execute(
            deliveries.update().where(deliveries.c.delivery_id == delivery_id).values(**values)
        )


def assert_no_phi(text: str, payload: dict[str, Any]) -> None:
    """No patient field and no secret in ``text`` (``data.id`` is logged by design)."""
    text = text.replace(payload["data"]["id"], "<data.id>")
    for value in (*PHI, SECRET):
        assert value not in text


# -- new deliveries ----------------------------------------------------------------------


def test_new_delivery_is_recorded_then_processed(
    durable: Callable[..., Flask], clock: Clock
) -> None:
    app = durable()
    seen: list[Event] = []

    @on(BV)
    def remember(event: Event) -> None:
        seen.append(event)
        clock.advance(2)  # the handler takes two seconds

    payload = sample_payload(BV)
    response = send_webhook(app.test_client(), payload)

    assert response.status_code == 200
    assert response.json == {
        "status": "processed",
        "event": BV,
        "delivery_id": payload["event_id"],
    }
    assert len(seen) == 1
    delivery = row(app, payload["event_id"])
    assert delivery.state == "processed"
    assert delivery.event_name == BV
    assert delivery.event_type == "benefit_verification.status_change"
    assert delivery.object_type == "benefit_verification"
    assert delivery.object_id == payload["data"]["id"]
    assert delivery.status == "completed"
    assert delivery.attempts == 1
    assert delivery.first_received_at == T0
    assert delivery.last_received_at == T0
    assert delivery.processed_at == T0 + timedelta(seconds=2)
    assert delivery.lease_expires_at is None
    assert delivery.succeeded_handlers == (handler_key(BV, remember),)
    assert delivery.last_error is None
    assert delivery.has_payload
    assert get_state(app).store.payload(payload["event_id"]) == encode_body(payload)


def test_row_is_processing_before_any_handler_runs(
    durable: Callable[..., Flask], clock: Clock
) -> None:
    app = durable()
    seen: list[Delivery] = []

    @on(BV)
    def look_at_the_log(event: Event) -> None:
        seen.append(get_state().store.get(event.delivery_id))

    payload = sample_payload(BV)
    assert send_webhook(app.test_client(), payload).status_code == 200

    [during] = seen
    assert during.state == "processing"
    assert during.attempts == 1
    assert during.lease_expires_at == T0 + LEASE
    assert during.succeeded_handlers == ()
    assert during.has_payload
    assert row(app, payload["event_id"]).state == "processed"


def test_catalogued_event_without_handlers_is_processed(durable: Callable[..., Flask]) -> None:
    app = durable()
    payload = sample_payload(BV)

    response = send_webhook(app.test_client(), payload)

    assert response.json["status"] == "processed"
    delivery = row(app, payload["event_id"])
    assert delivery.state == "processed"
    assert delivery.succeeded_handlers == ()


def test_uncatalogued_event_without_handler_is_ignored(
    durable: Callable[..., Flask], clock: Clock
) -> None:
    app = durable()
    client = app.test_client()
    payload = sample_payload(BV)
    payload["event_type"] = "benefit_verification.brand_new_thing"

    first = send_webhook(client, payload)
    clock.advance(5)
    second = send_webhook(client, payload)

    assert first.status_code == 200
    assert first.json["status"] == "ignored"
    assert first.json["event"] == "benefit_verification.brand_new_thing"
    assert second.status_code == 200
    assert second.json["status"] == "duplicate"
    delivery = row(app, payload["event_id"])
    assert delivery.state == "ignored"
    assert delivery.event_name == "benefit_verification.brand_new_thing"
    assert delivery.processed_at == T0
    assert delivery.last_received_at == T0 + timedelta(seconds=5)


def test_uncatalogued_event_with_a_handler_is_processed(durable: Callable[..., Flask]) -> None:
    app = durable()
    seen: list[str] = []
    name = "benefit_verification.brand_new_thing"

    @on(name, strict=False)
    def early_adopter(event: Event) -> None:
        seen.append(event.name)

    payload = sample_payload(BV)
    payload["event_type"] = name

    response = send_webhook(app.test_client(), payload)

    assert response.json["status"] == "processed"
    assert seen == [name]
    delivery = row(app, payload["event_id"])
    assert delivery.state == "processed"
    assert delivery.succeeded_handlers == (handler_key(name, early_adopter),)


# -- failures and take-over ----------------------------------------------------------------


class LedgerDown(Exception):
    """A handler's own exception class, to check the class name is recorded."""


def test_handler_error_marks_the_row_failed_with_a_bounded_last_error(
    durable: Callable[..., Flask], clock: Clock
) -> None:
    app = durable()
    message = "ledger offline " + "z" * 2000

    @on(BV)
    def post_to_ledger(event: Event) -> None:
        raise LedgerDown(message)

    failures: list[Any] = []
    payload = sample_payload(BV)
    with webhook_failed.connected_to(lambda _, **kw: failures.append(kw), sender=app):
        response = send_webhook(app.test_client(), payload)

    assert response.status_code == 500
    assert response.json["error"] == "handler_failed"
    assert response.json["delivery_id"] == payload["event_id"]
    delivery = row(app, payload["event_id"])
    assert delivery.state == "failed"
    assert delivery.last_error == f"{handler_key(BV, post_to_ledger)}: LedgerDown: {message[:500]}"
    assert delivery.processed_at is None
    assert delivery.lease_expires_at is None
    assert delivery.succeeded_handlers == ()
    assert len(failures) == 1
    assert failures[0]["event"].delivery_id == payload["event_id"]


def test_failed_delivery_is_taken_over_and_reruns_only_handlers_not_yet_succeeded(
    durable: Callable[..., Flask], clock: Clock
) -> None:
    app = durable()
    calls = {"crm": 0, "ledger": 0}

    @on(BV)
    def update_crm(event: Event) -> None:
        calls["crm"] += 1

    @on(BV)
    def post_to_ledger(event: Event) -> None:
        calls["ledger"] += 1
        if calls["ledger"] == 1:
            raise LedgerDown("ledger offline")

    client = app.test_client()
    payload = sample_payload(BV)

    first = send_webhook(client, payload)
    failed = row(app, payload["event_id"])
    clock.advance(30)
    second = send_webhook(client, payload)

    assert first.status_code == 500
    assert failed.state == "failed"
    assert failed.succeeded_handlers == (handler_key(BV, update_crm),)
    assert failed.last_error == f"{handler_key(BV, post_to_ledger)}: LedgerDown: ledger offline"
    assert second.status_code == 200
    assert second.json["status"] == "processed"
    assert calls == {"crm": 1, "ledger": 2}
    delivery = row(app, payload["event_id"])
    assert delivery.state == "processed"
    assert delivery.attempts == 2
    assert delivery.first_received_at == T0
    assert delivery.last_received_at == T0 + timedelta(seconds=30)
    assert delivery.processed_at == T0 + timedelta(seconds=30)
    assert set(delivery.succeeded_handlers) == {
        handler_key(BV, update_crm),
        handler_key(BV, post_to_ledger),
    }
    assert delivery.last_error is None


def test_takeover_skips_derived_event_handlers_that_succeeded(
    durable: Callable[..., Flask],
) -> None:
    app = durable()
    calls = {"updated": 0, "determination": 0}

    @on(PA)
    def on_update(event: Event) -> None:
        calls["updated"] += 1

    @on(DETERMINATION)
    def on_determination(event: Event) -> None:
        calls["determination"] += 1
        if calls["determination"] == 1:
            raise LedgerDown("payer portal down")

    client = app.test_client()
    payload = sample_payload(PA, status="completed")

    assert send_webhook(client, payload).status_code == 500
    response = send_webhook(client, payload)

    assert response.status_code == 200
    assert response.json["event"] == PA
    assert calls == {"updated": 1, "determination": 2}
    assert set(row(app, payload["event_id"]).succeeded_handlers) == {
        handler_key(PA, on_update),
        handler_key(DETERMINATION, on_determination),
    }


@pytest.mark.parametrize("state", ["processed", "ignored", "dead_letter"])
def test_finished_delivery_answers_duplicate_without_running_handlers(
    durable: Callable[..., Flask],
    clock: Clock,
    state: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = durable()
    calls: list[str] = []

    @on(BV)
    def handler(event: Event) -> None:
        calls.append(event.delivery_id)

    client = app.test_client()
    payload = sample_payload(BV)
    assert send_webhook(client, payload).status_code == 200
    set_row(app, payload["event_id"], state=state)
    duplicates: list[Event] = []
    clock.advance(60)

    caplog.set_level(logging.INFO, logger="flask_devhealth_webhooks")
    with webhook_duplicate.connected_to(
        lambda _, event, **kw: duplicates.append(event), sender=app
    ):
        response = send_webhook(client, payload)

    assert response.status_code == 200
    assert response.json["status"] == "duplicate"
    assert response.json["delivery_id"] == payload["event_id"]
    assert calls == [payload["event_id"]]
    assert [e.delivery_id for e in duplicates] == [payload["event_id"]]
    delivery = row(app, payload["event_id"])
    assert delivery.state == state
    assert delivery.last_received_at == T0 + timedelta(seconds=60)
    assert delivery.first_received_at == T0
    assert f"webhook duplicate event={BV} delivery_id={payload['event_id']}" in caplog.text
    assert_no_phi(caplog.text, payload)


def test_live_lease_answers_in_progress(
    durable: Callable[..., Flask], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    app = durable()
    calls: list[str] = []

    @on(BV)
    def handler(event: Event) -> None:
        calls.append(event.delivery_id)

    payload = sample_payload(BV)
    store = get_state(app).store
    # Another worker (here: the store itself) claimed the delivery and is still running it.
    assert store.claim(load_event(payload, {}), encode_body(payload)).kind == "new"
    clock.advance(LEASE.total_seconds() - 1)
    in_progress: list[Event] = []

    caplog.set_level(logging.INFO, logger="flask_devhealth_webhooks")
    with webhook_in_progress.connected_to(
        lambda _, event, **kw: in_progress.append(event), sender=app
    ):
        response = send_webhook(app.test_client(), payload)

    assert response.status_code == 409
    assert response.json["error"] == "in_progress"
    assert response.headers["Retry-After"] == "60"  # DEVHEALTH_WEBHOOKS_RETRY_AFTER
    assert response.json["delivery_id"] == payload["event_id"]
    assert calls == []
    assert [e.delivery_id for e in in_progress] == [payload["event_id"]]
    delivery = row(app, payload["event_id"])
    assert delivery.state == "processing"
    assert delivery.attempts == 1
    assert delivery.lease_expires_at == T0 + LEASE
    assert "webhook in_progress" in caplog.text
    assert "http=409" in caplog.text
    assert_no_phi(caplog.text, payload)


def test_expired_lease_is_taken_over(durable: Callable[..., Flask], clock: Clock) -> None:
    app = durable(LEASE_SECONDS=5)
    calls: list[str] = []

    @on(BV)
    def handler(event: Event) -> None:
        calls.append(event.delivery_id)

    payload = sample_payload(BV)
    client = app.test_client()
    get_state(app).store.claim(load_event(payload, {}), encode_body(payload))
    assert row(app, payload["event_id"]).lease_expires_at == T0 + timedelta(seconds=5)

    clock.advance(4)
    still_leased = send_webhook(client, payload)
    clock.advance(2)
    taken_over = send_webhook(client, payload)

    assert still_leased.status_code == 409
    assert taken_over.status_code == 200
    assert taken_over.json["status"] == "processed"
    assert calls == [payload["event_id"]]
    delivery = row(app, payload["event_id"])
    assert delivery.state == "processed"
    assert delivery.attempts == 2
    assert delivery.last_received_at == T0 + timedelta(seconds=6)


def test_crashed_worker_is_taken_over_without_rerunning_handlers_that_succeeded(
    durable: Callable[..., Flask], clock: Clock
) -> None:
    app = durable()
    calls = {"crm": 0, "ledger": 0}

    @on(BV)
    def update_crm(event: Event) -> None:
        calls["crm"] += 1

    @on(BV)
    def post_to_ledger(event: Event) -> None:
        calls["ledger"] += 1

    payload = sample_payload(BV)
    store = get_state(app).store
    # A worker claimed the delivery, ran update_crm, recorded it, then died.
    store.claim(load_event(payload, {}), encode_body(payload))
    assert store.record_progress(payload["event_id"], [handler_key(BV, update_crm)], attempt=1)
    clock.advance(LEASE.total_seconds() + 1)

    response = send_webhook(app.test_client(), payload)

    assert response.status_code == 200
    assert calls == {"crm": 0, "ledger": 1}
    delivery = row(app, payload["event_id"])
    assert delivery.state == "processed"
    assert delivery.attempts == 2
    assert set(delivery.succeeded_handlers) == {
        handler_key(BV, update_crm),
        handler_key(BV, post_to_ledger),
    }


def test_attempts_count_every_take_over(durable: Callable[..., Flask]) -> None:
    app = durable()
    calls: list[int] = []

    @on(BV)
    def flaky(event: Event) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise LedgerDown("not yet")

    client = app.test_client()
    payload = sample_payload(BV)
    statuses = [send_webhook(client, payload).status_code for _ in range(4)]

    assert statuses == [500, 500, 200, 200]
    delivery = row(app, payload["event_id"])
    assert delivery.attempts == 3
    assert delivery.state == "processed"
    assert len(calls) == 3


# -- RetryLater and PermanentFailure -------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "retry_after", "header"),
    [({}, None, "60"), ({}, 7, "7"), ({"RETRY_AFTER": 15}, None, "15")],
)
def test_retry_later_answers_503_and_the_next_try_takes_over(
    durable: Callable[..., Flask],
    config: dict[str, Any],
    retry_after: int | None,
    header: str,
) -> None:
    app = durable(**config)
    calls: list[int] = []

    @on(BV)
    def wait_for_payer(event: Event) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RetryLater("payer busy", retry_after=retry_after)

    client = app.test_client()
    payload = sample_payload(BV)

    first = send_webhook(client, payload)
    failed = row(app, payload["event_id"])
    second = send_webhook(client, payload)

    assert first.status_code == 503
    assert first.json["error"] == "retry_later"
    assert first.json["delivery_id"] == payload["event_id"]
    assert first.headers["Retry-After"] == header
    assert failed.state == "failed"
    assert failed.last_error == f"{handler_key(BV, wait_for_payer)}: RetryLater: payer busy"
    assert second.status_code == 200
    assert second.json["status"] == "processed"
    assert len(calls) == 2
    assert row(app, payload["event_id"]).attempts == 2


def test_retry_later_mixed_with_another_error_answers_500(
    durable: Callable[..., Flask],
) -> None:
    app = durable()

    @on(BV)
    def wait(event: Event) -> None:
        raise RetryLater(retry_after=5)

    @on(BV)
    def broken(event: Event) -> None:
        raise LedgerDown("boom")

    payload = sample_payload(BV)
    response = send_webhook(app.test_client(), payload)

    assert response.status_code == 500
    assert "Retry-After" not in response.headers
    assert row(app, payload["event_id"]).state == "failed"


def test_permanent_failure_is_dead_lettered_and_answered_200(
    durable: Callable[..., Flask], clock: Clock
) -> None:
    app = durable()
    calls = {"crm": 0, "payer": 0}

    @on(BV)
    def update_crm(event: Event) -> None:
        calls["crm"] += 1

    @on(BV)
    def lookup_payer(event: Event) -> None:
        calls["payer"] += 1
        raise PermanentFailure("payer is not in our contract list")

    client = app.test_client()
    payload = sample_payload(BV)
    first = send_webhook(client, payload)
    second = send_webhook(client, payload)

    assert first.status_code == 200
    assert first.json == {
        "status": "dead_letter",
        "event": BV,
        "delivery_id": payload["event_id"],
    }
    assert second.json["status"] == "duplicate"
    assert calls == {"crm": 1, "payer": 1}
    delivery = row(app, payload["event_id"])
    assert delivery.state == "dead_letter"
    assert delivery.processed_at == T0
    assert delivery.succeeded_handlers == (handler_key(BV, update_crm),)
    assert delivery.last_error == (
        f"{handler_key(BV, lookup_payer)}: PermanentFailure: payer is not in our contract list"
    )
    assert delivery.has_payload  # kept, so it can be replayed


def test_log_lines_of_failures_carry_no_phi(
    durable: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = durable()

    @on(BV)
    def leaky(event: Event) -> None:
        raise LedgerDown("internal failure")

    caplog.set_level(logging.INFO, logger="flask_devhealth_webhooks")
    payload = sample_payload(BV)
    send_webhook(app.test_client(), payload)

    assert f"handler={handler_key(BV, leaky)}" in caplog.text
    assert "exception=LedgerDown" in caplog.text
    assert_no_phi(caplog.text, payload)


def test_a_worker_that_outlived_its_lease_does_not_overwrite_the_new_owner(
    durable: Callable[..., Flask], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    app = durable()
    payload = sample_payload(BV)
    store = get_state(app).store
    takeovers: list[str] = []

    @on(BV)
    def slow(event: Event) -> None:
        # While this handler runs past its lease, another worker takes the delivery over.
        clock.advance(LEASE.total_seconds() + 1)
        takeovers.append(store.claim(event, encode_body(payload)).kind)

    caplog.set_level(logging.WARNING, logger="flask_devhealth_webhooks")
    response = send_webhook(app.test_client(), payload)

    # The worker that took over owns the outcome: this one answers like a live lease.
    assert response.status_code == 409
    assert response.json["error"] == "in_progress"
    assert takeovers == ["takeover"]
    delivery = row(app, payload["event_id"])
    assert delivery.state == "processing"  # the new owner's claim, untouched
    assert delivery.attempts == 2
    assert delivery.processed_at is None
    assert "webhook lease lost" in caplog.text


def test_a_worker_that_lost_its_lease_stops_calling_handlers(
    durable: Callable[..., Flask], clock: Clock
) -> None:
    app = durable()
    payload = sample_payload(BV)
    store = get_state(app).store
    calls: list[str] = []

    @on(BV)
    def slow(event: Event) -> None:
        calls.append("slow")
        clock.advance(LEASE.total_seconds() + 1)  # ran past its lease ...
        assert store.claim(event, encode_body(payload)).kind == "takeover"  # ... and lost it

    @on(BV)
    def after(event: Event) -> None:
        calls.append("after")

    response = send_webhook(app.test_client(), payload)

    assert response.status_code == 409
    assert calls == ["slow"]  # 'after' is left to the worker that took over
    assert row(app, payload["event_id"]).attempts == 2


def test_a_delivery_purged_while_being_claimed_is_claimed_anew(
    durable: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = durable()
    calls: list[str] = []
    on(BV)(lambda event: calls.append(event.delivery_id))
    payload = sample_payload(BV)
    client = app.test_client()
    assert send_webhook(client, payload).json["status"] == "processed"

    store = get_state(app).store
    real_take_over = store._take_over

    def purge_first(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(store, "_take_over", real_take_over)
        store.purge(timedelta(seconds=-60))  # 'flask devhealth purge' ran just now
        return real_take_over(*args, **kwargs)

    monkeypatch.setattr(store, "_take_over", purge_first)
    response = send_webhook(client, payload)

    assert response.status_code == 200
    assert response.json["status"] == "processed"
    assert calls == [payload["event_id"], payload["event_id"]]


@pytest.mark.parametrize(
    ("asked", "sent"),
    [(float("inf"), "60"), (float("nan"), "60"), (-5, "0"), (1e30, "86400"), (7.9, "7")],
)
def test_retry_after_from_a_handler_is_bounded(
    durable: Callable[..., Flask], asked: float, sent: str
) -> None:
    app = durable()

    @on(BV)
    def busy(event: Event) -> None:
        raise RetryLater(retry_after=asked)  # type: ignore[arg-type]

    response = send_webhook(app.test_client(), sample_payload(BV))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == sent


def test_an_exception_whose_message_cannot_be_read_still_fails_cleanly(
    durable: Callable[..., Flask],
) -> None:
    app = durable()

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    @on(BV)
    def broken(event: Event) -> None:
        raise Unprintable

    payload = sample_payload(BV)
    response = send_webhook(app.test_client(), payload)
    assert response.status_code == 500
    assert response.json["error"] == "handler_failed"
    delivery = row(app, payload["event_id"])
    assert delivery.state == "failed"
    assert delivery.last_error is not None
    assert delivery.last_error.endswith("Unprintable: (the exception's message could not be read)")
