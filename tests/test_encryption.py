"""PHI at rest: stored payloads encrypted with Fernet keys, key rotation, bad keys refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import build_app
from cryptography.fernet import Fernet, InvalidToken
from flask import Flask

from flask_devhealth_webhooks import ConfigurationError, Event, get_state, on
from flask_devhealth_webhooks.store import deliveries
from flask_devhealth_webhooks.testing import encode_body, sample_payload, send_webhook

BV = "benefit_verification.updated"
#: Patient fields of the sample bodies: none may be readable in the stored row.
PHI = (
    "Alex",
    "MBR-0001",
    "1980-01-01",
    "alex.sample@example.test",
    "100 Example Way",
    "555-010-0000",
)
OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()


def stored_row(app: Flask, delivery_id: str) -> Any:
    """The row exactly as the database holds it, every column."""
    with get_state(app).store.engine.connect() as conn:
        return conn.execute(
            sa.select(deliveries).where(deliveries.c.delivery_id == delivery_id)
        ).one()


def test_encrypted_row_holds_no_plaintext_patient_field(durable: Callable[..., Flask]) -> None:
    app = durable(ENCRYPTION_KEYS=[OLD_KEY])
    payload = sample_payload(BV)
    raw = encode_body(payload)
    assert all(value.encode() in raw for value in PHI)

    response = send_webhook(app.test_client(), raw)

    assert response.status_code == 200
    stored = stored_row(app, payload["event_id"])
    column = bytes(stored.payload)
    for value in PHI:
        assert value.encode() not in column
        for cell in stored:
            assert value not in str(cell)
    assert stored.payload_encrypted
    assert Fernet(OLD_KEY.encode()).decrypt(column) == raw
    assert get_state(app).store.payload(payload["event_id"]) == raw


def test_without_keys_the_payload_is_stored_as_received(durable: Callable[..., Flask]) -> None:
    # The counterpart of the test above: proves its check would see plaintext if it were there.
    app = durable()
    payload = sample_payload(BV)

    send_webhook(app.test_client(), payload)

    stored = stored_row(app, payload["event_id"])
    assert not stored.payload_encrypted
    assert b"Alex" in bytes(stored.payload)


def test_rotation_old_rows_stay_readable_and_replayable(durable: Callable[..., Flask]) -> None:
    calls: list[str] = []

    @on(BV)
    def flaky(event: Event) -> None:
        calls.append(event.delivery_id)
        if len(calls) == 1:
            raise RuntimeError("first try fails")

    before = durable(ENCRYPTION_KEYS=[OLD_KEY])
    old = sample_payload(BV)
    assert send_webhook(before.test_client(), old).status_code == 500

    after = durable(ENCRYPTION_KEYS=[NEW_KEY, OLD_KEY])
    runner = after.test_cli_runner()
    shown = runner.invoke(args=["devhealth", "show", "--payload", old["event_id"]])
    replayed = runner.invoke(args=["devhealth", "replay", old["event_id"]])
    new = sample_payload(BV)
    assert send_webhook(after.test_client(), new).status_code == 200

    assert shown.exit_code == 0, shown.output
    assert "Alex" in shown.output
    assert replayed.exit_code == 0, replayed.output
    assert f"{old['event_id']}  processed" in replayed.output
    assert calls == [old["event_id"], old["event_id"], new["event_id"]]
    # New rows are written with the first key only.
    column = bytes(stored_row(after, new["event_id"]).payload)
    assert Fernet(NEW_KEY.encode()).decrypt(column) == encode_body(new)
    with pytest.raises(InvalidToken):
        Fernet(OLD_KEY.encode()).decrypt(column)
    new_only = durable(ENCRYPTION_KEYS=[NEW_KEY])
    assert get_state(new_only).store.payload(new["event_id"]) == encode_body(new)


def test_a_row_whose_key_was_dropped_is_reported_plainly(durable: Callable[..., Flask]) -> None:
    before = durable(ENCRYPTION_KEYS=[OLD_KEY])
    payload = sample_payload(BV)
    send_webhook(before.test_client(), payload)

    runner = durable(ENCRYPTION_KEYS=[NEW_KEY]).test_cli_runner()
    shown = runner.invoke(args=["devhealth", "show", "--payload", payload["event_id"]])
    replayed = runner.invoke(args=["devhealth", "replay", "--force", payload["event_id"]])

    for result in (shown, replayed):
        assert result.exit_code == 1
        assert not isinstance(result.exception, InvalidToken)
        assert "DEVHEALTH_WEBHOOKS_ENCRYPTION_KEYS" in result.output
        assert "Alex" not in result.output


def test_an_encrypted_row_read_without_keys_is_reported_plainly(
    durable: Callable[..., Flask],
) -> None:
    before = durable(ENCRYPTION_KEYS=[OLD_KEY])
    payload = sample_payload(BV)
    send_webhook(before.test_client(), payload)

    runner = durable().test_cli_runner()
    shown = runner.invoke(args=["devhealth", "show", "--payload", payload["event_id"]])

    assert shown.exit_code == 1
    assert "DEVHEALTH_WEBHOOKS_ENCRYPTION_KEYS" in shown.output
    assert "Alex" not in shown.output


def test_keys_as_generate_key_returns_them_are_accepted(durable: Callable[..., Flask]) -> None:
    key = Fernet.generate_key()  # bytes, as cryptography hands it out
    app = durable(ENCRYPTION_KEYS=[key])
    payload = sample_payload(BV)

    assert send_webhook(app.test_client(), payload).status_code == 200
    column = bytes(stored_row(app, payload["event_id"]).payload)
    assert Fernet(key).decrypt(column) == encode_body(payload)


def test_a_single_key_string_is_accepted(durable: Callable[..., Flask]) -> None:
    app = durable(ENCRYPTION_KEYS=OLD_KEY)
    payload = sample_payload(BV)

    send_webhook(app.test_client(), payload)

    column = bytes(stored_row(app, payload["event_id"]).payload)
    assert Fernet(OLD_KEY.encode()).decrypt(column) == encode_body(payload)


def test_no_payload_is_stored_when_payloads_are_off(durable: Callable[..., Flask]) -> None:
    app = durable(ENCRYPTION_KEYS=[OLD_KEY], STORE_PAYLOADS=False)
    payload = sample_payload(BV)

    send_webhook(app.test_client(), payload)

    stored = stored_row(app, payload["event_id"])
    assert stored.payload is None
    assert not stored.payload_encrypted


@pytest.mark.parametrize(
    "keys",
    [
        ["not-a-fernet-key"],
        "not-a-fernet-key",
        [OLD_KEY, "c2hvcnQ="],
        [OLD_KEY[:-2]],
        42,
        [None],
    ],
    ids=["not-base64-key", "bare-string", "short-second-key", "truncated", "int", "none"],
)
def test_a_malformed_key_is_a_configuration_error_at_registration(keys: Any) -> None:
    with pytest.raises(ConfigurationError, match="DEVHEALTH_WEBHOOKS_ENCRYPTION_KEYS") as info:
        build_app(None, ENCRYPTION_KEYS=keys)
    message = str(info.value)
    assert "not-a-fernet-key" not in message
    assert OLD_KEY[:-2] not in message
