"""Logs: one line per delivery with ids and outcome; rejections at WARNING; never PHI or tokens."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from conftest import SECRET, fixture
from flask import Flask
from flask.testing import FlaskClient

from flask_devhealth_webhooks import Event, on
from flask_devhealth_webhooks.testing import make_token

URL = "/webhooks/devhealth"
LOGGER = "flask_devhealth_webhooks"

#: Patient (and provider) values from the fixtures that must never reach a log line.
PHI = [
    "Alex",
    "Sample",
    "alex.sample",
    "1980-01-01",
    "MBR-0001",
    "MRN-0001",
    "pt-000123",
    "555-010",
    "100 Example Way",
    "62701",
    "Jordan",
    "Placeholder",
    "Example Health Plan",
    "E66.9",
    "Wegovy",
]


def post(client: FlaskClient, body: dict[str, Any] | bytes, token: str) -> int:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(URL, data=raw, headers={"X-Webhook-Secret": token})
    assert response.is_json
    return response.status_code


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def summaries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The per-delivery summary lines (the ones naming the event)."""
    return [r for r in ours(caplog) if "event=" in r.getMessage()]


def assert_clean(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """No PHI, token or secret anywhere in what was captured (every logger, every level)."""
    text = caplog.text + "\n".join(
        str(r.args) + str(r.exc_info) + str(getattr(r, "stack_info", "")) for r in caplog.records
    )
    for value in [*PHI, SECRET, *secrets]:
        assert value not in text, f"{value!r} leaked into the logs"


@pytest.fixture(autouse=True)
def _debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


@pytest.mark.parametrize(
    ("name", "event", "delivery_id", "object_id", "status"),
    [
        (
            "benefit_verification_status_change_failed",
            "benefit_verification.updated",
            "wh_evt_bV0001a",
            "bv_Fa1lEd9",
            "failed",
        ),
        (
            "prior_authorization_status_change_approved",
            "prior_authorization.updated",
            "wh_evt_pA0002b",
            "pa_sdkfj3f",
            "completed",
        ),
        (
            "prior_authorization_message",
            "prior_authorization.message",
            "wh_evt_mSg0003c",
            "pa_sdkfj3f",
            "awaiting_provider_response",
        ),
        (
            "prior_authorization_provider_outreach_change",
            "prior_authorization.provider_outreach_change",
            "wh_evt_pQrStUv",
            "prov_outreach_aBcDeFg",
            "in_progress",
        ),
    ],
)
def test_accepted_delivery_logs_one_line(
    client: FlaskClient,
    caplog: pytest.LogCaptureFixture,
    name: str,
    event: str,
    delivery_id: str,
    object_id: str,
    status: str,
) -> None:
    on("*")(lambda e: None)
    token = make_token(SECRET)
    assert post(client, fixture(name), token) == 200
    lines = summaries(caplog)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    line = lines[0].getMessage()
    assert lines[0].levelno == logging.INFO
    assert "processed" in line
    assert f"event={event}" in line
    assert f"delivery_id={delivery_id}" in line
    assert object_id in line
    assert status in line
    assert "duration" in line
    assert [r for r in ours(caplog) if r.levelno >= logging.WARNING] == []
    assert_clean(caplog, token)


def test_legacy_delivery_logs_its_hash_id(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    token = make_token(SECRET)
    body = fixture("benefit_verification_updated_legacy")
    response = client.post(URL, data=json.dumps(body), headers={"X-Webhook-Secret": token})
    delivery_id = response.get_json()["delivery_id"]
    lines = summaries(caplog)
    assert len(lines) == 1
    assert f"delivery_id={delivery_id}" in lines[0].getMessage()
    assert "bv_nBElDPw" in lines[0].getMessage()
    assert_clean(caplog, token)


def test_ignored_delivery_logs_one_line(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = fixture("prior_authorization_message")
    body["event_type"] = "prior_authorization.not_catalogued"
    token = make_token(SECRET)
    assert post(client, body, token) == 200
    lines = summaries(caplog)
    assert len(lines) == 1
    assert "ignored" in lines[0].getMessage()
    assert "event=prior_authorization.not_catalogued" in lines[0].getMessage()
    assert_clean(caplog, token)


def test_failing_delivery_logs_one_summary_and_no_exception_text(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    @on("benefit_verification.updated")
    def broken(event: Event) -> None:
        patient = event.data["patient"]
        raise RuntimeError(f"cannot file {patient['first_name']} {patient['last_name']}")

    @on("benefit_verification.updated")
    def fine(event: Event) -> None: ...

    token = make_token(SECRET)
    assert post(client, fixture("benefit_verification_status_change_failed"), token) == 500
    lines = summaries(caplog)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    line = lines[0].getMessage()
    assert "failed" in line
    assert "event=benefit_verification.updated" in line
    assert "delivery_id=wh_evt_bV0001a" in line
    assert "bv_Fa1lEd9" in line
    errors = [r for r in ours(caplog) if r.levelno >= logging.ERROR]
    assert errors, "a failing handler is logged at ERROR"
    assert any("broken" in r.getMessage() and "RuntimeError" in r.getMessage() for r in errors)
    assert_clean(caplog, token, "cannot file")


REJECTIONS: list[Any] = [
    pytest.param(None, None, "missing_token", id="missing"),
    pytest.param("Alex-Sample-MBR-0001.not.a-jwt", None, "malformed_token", id="malformed"),
    pytest.param("forged", None, "invalid_signature", id="forged"),
    pytest.param("expired", None, "token_expired", id="expired"),
    pytest.param("valid", b'{"data": "Alex Sample", "n": NaN}', "invalid_json", id="json"),
    pytest.param("valid", "no-id", "invalid_payload", id="payload"),
]


@pytest.mark.parametrize(("kind", "body", "reason"), REJECTIONS)
def test_rejection_is_logged_at_warning_with_the_reason(
    client: FlaskClient,
    caplog: pytest.LogCaptureFixture,
    kind: str | None,
    body: bytes | str | None,
    reason: str,
) -> None:
    tokens = {
        "forged": make_token("forged-secret-0123456789abcdefghijklmnop"),
        "expired": make_token(SECRET, exp=1_000_000),
        "valid": make_token(SECRET),
    }
    token = tokens.get(kind or "", kind or "")
    payload: dict[str, Any] | bytes = fixture("benefit_verification_status_change_failed")
    if isinstance(body, bytes):
        payload = body
    elif body == "no-id":
        assert isinstance(payload, dict)
        del payload["data"]["id"]
        payload["data"]["patient"]["first_name"] = 42
    headers = {} if kind is None else {"X-Webhook-Secret": token}
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = client.post(URL, data=raw, headers=headers)
    assert response.get_json()["error"] == reason
    warned = [r for r in ours(caplog) if r.levelno == logging.WARNING]
    assert len(warned) == 1, [r.getMessage() for r in ours(caplog)]
    assert reason in warned[0].getMessage()
    assert summaries(caplog) == []
    assert_clean(caplog, *tokens.values(), "Alex-Sample-MBR-0001")


def test_oversized_body_is_logged_at_warning(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app(MAX_BODY=64).test_client()
    token = make_token(SECRET)
    assert post(client, fixture("benefit_verification_status_change_failed"), token) == 413
    warned = [r for r in ours(caplog) if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "payload_too_large" in warned[0].getMessage()
    assert_clean(caplog, token)


def test_many_deliveries_one_line_each(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    on("*")(lambda e: None)
    token = make_token(SECRET)
    names = [
        "benefit_verification_status_change_failed",
        "benefit_verification_updated_legacy",
        "prior_authorization_status_change_approved",
        "prior_authorization_determination_legacy",
        "prior_authorization_message",
        "prior_authorization_provider_outreach_change",
    ]
    for name in names:
        assert post(client, fixture(name), token) == 200
    post(client, b"{}", "")
    assert len(summaries(caplog)) == len(names)
    assert_clean(caplog, token)


def test_unprintable_identifiers_cannot_forge_log_lines(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = fixture("prior_authorization_message")
    body["event_id"] = "wh_evt_1\nwebhook processed event=forged"
    body["data"]["id"] = "pa_1\r\nINFO forged"
    assert post(client, body, make_token(SECRET)) == 200
    lines = summaries(caplog)
    assert len(lines) == 1
    assert "\n" not in lines[0].getMessage()
    assert "\r" not in lines[0].getMessage()
