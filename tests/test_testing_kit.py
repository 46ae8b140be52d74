"""The testing kit shipped to users: tokens, sample bodies, one-line sends, the pytest plugin."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import jwt
import pytest
from conftest import SECRET
from flask import Flask, request
from flask.testing import FlaskClient

from flask_devhealth_webhooks import CATALOGUE, Event, blueprint, on
from flask_devhealth_webhooks.testing import (
    make_token,
    record_events,
    sample_payload,
    send_webhook,
)

pytest_plugins = ["pytester"]

DETERMINATION = "prior_authorization.determination"
NAMES = [e.name for e in CATALOGUE]
TITLED = [e.name for e in CATALOGUE if e.title]
UNTITLED = [e.name for e in CATALOGUE if not e.title]
OBJECTS = {e.name: e.object for e in CATALOGUE}


def captured_tokens(app: Flask) -> list[str]:
    """Every token the app receives in its configured header, in order."""
    tokens: list[str] = []
    header = app.config["DEVHEALTH_WEBHOOKS_HEADER"]

    @app.before_request
    def capture() -> None:
        tokens.append(request.headers.get(header, ""))

    return tokens


# -- make_token --------------------------------------------------------------------------------


def test_make_token_defaults() -> None:
    before = int(time.time())
    token = make_token(SECRET)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] == claims["iat"] + 300
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_make_token_with_claims() -> None:
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    token = make_token(SECRET, sub="dh", aud="clinic", nbf=moment, exp=None)
    claims = jwt.decode(
        token, SECRET, algorithms=["HS256"], audience="clinic", options={"verify_nbf": False}
    )
    assert claims["sub"] == "dh"
    assert claims["aud"] == "clinic"
    assert claims["nbf"] == int(moment.timestamp())
    assert "exp" not in claims


def test_make_token_can_leave_iat_out() -> None:
    claims = jwt.decode(make_token(SECRET, iat=None), SECRET, algorithms=["HS256"])
    assert "iat" not in claims
    assert "exp" in claims


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_make_token_algorithm(algorithm: str) -> None:
    key = SECRET * 2  # long enough for HS512 without PyJWT's key-length warning
    token = make_token(key, algorithm=algorithm)
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    assert "exp" in jwt.decode(token, key, algorithms=[algorithm])


def test_make_token_accepts_bytes() -> None:
    token = make_token(SECRET.encode())
    assert "iat" in jwt.decode(token, SECRET, algorithms=["HS256"])


def test_make_token_is_accepted_by_the_app(client: FlaskClient) -> None:
    response = client.post(
        "/webhooks/devhealth",
        data=json.dumps(sample_payload("benefit_verification.updated")),
        headers={"X-Webhook-Secret": make_token(SECRET)},
    )
    assert response.status_code == 200


# -- sample_payload ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_sample_payload_for_every_event(client: FlaskClient, name: str) -> None:
    body = sample_payload(name)
    assert body["event_id"]
    assert body["occurred_at"]
    assert body["event_type"]
    assert body["data"]["object"] == OBJECTS[name]
    with record_events() as events:
        response = send_webhook(client, body)
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["status"] == "processed"
    assert answer["delivery_id"] == body["event_id"]
    assert name in [e.name for e in events]
    if name == DETERMINATION:
        assert answer["event"] == "prior_authorization.updated"
        assert body["event_type"] == "prior_authorization.status_change"
        assert body["data"]["status"] == "completed"
    else:
        assert answer["event"] == name


def test_sample_payload_uses_the_vendor_event_type() -> None:
    assert sample_payload("benefit_verification.updated")["event_type"] == (
        "benefit_verification.status_change"
    )
    assert sample_payload("prior_authorization.updated")["event_type"] == (
        "prior_authorization.status_change"
    )
    assert sample_payload("prior_authorization.message")["event_type"] == (
        "prior_authorization.message"
    )


@pytest.mark.parametrize("name", TITLED)
def test_legacy_sample_payload(client: FlaskClient, name: str) -> None:
    body = sample_payload(name, legacy=True)
    assert "event_type" not in body
    assert "event_id" not in body
    assert body["title"] == next(e.title for e in CATALOGUE if e.name == name)
    with record_events() as events:
        response = send_webhook(client, body)
    assert response.status_code == 200
    assert response.get_json()["event"] == name
    assert response.get_json()["delivery_id"].startswith("sha256:")
    assert events[0].name == name
    assert events[0].event_type is None


@pytest.mark.parametrize("name", UNTITLED)
def test_legacy_sample_payload_without_a_title_raises(name: str) -> None:
    with pytest.raises(ValueError, match="legacy"):
        sample_payload(name, legacy=True)


def test_sample_payload_unknown_name_raises() -> None:
    with pytest.raises(ValueError, match="Unknown"):
        sample_payload("benefit_verification.nope")


def test_sample_payload_accepts_an_alias() -> None:
    body = sample_payload("prior_authorization.status_change")
    assert body["data"]["object"] == "prior_authorization"


def test_sample_payload_overrides_and_freshness() -> None:
    first = sample_payload("benefit_verification.updated", status="failed", priority=9)
    second = sample_payload("benefit_verification.updated")
    assert first["data"]["status"] == "failed"
    assert first["data"]["priority"] == 9
    assert second["data"]["status"] != "failed"
    assert first["event_id"] != second["event_id"]
    first["data"]["drugs"][0]["name"] = "changed"
    assert sample_payload("benefit_verification.updated")["data"]["drugs"][0]["name"] != "changed"


def test_determination_sample_fires_determination(client: FlaskClient) -> None:
    seen: list[Event] = []
    on(DETERMINATION)(seen.append)
    assert send_webhook(client, sample_payload(DETERMINATION)).status_code == 200
    assert [e.name for e in seen] == [DETERMINATION]


# -- send_webhook ---------------------------------------------------------------------------------


def test_send_webhook_adds_the_configured_claims(make_app: Callable[..., Flask]) -> None:
    app = make_app(
        AUDIENCE="my-clinic",
        ISSUER="https://dh.example",
        BODY_HASH_CLAIM="body_sha256",
        REQUIRED_CLAIMS=["sub"],
        MAX_AGE=60,
    )
    tokens = captured_tokens(app)
    body = sample_payload("benefit_verification.updated")
    response = send_webhook(app.test_client(), body)
    assert response.status_code == 200, response.get_json()
    claims = jwt.decode(tokens[0], SECRET, algorithms=["HS256"], audience="my-clinic")
    assert claims["iss"] == "https://dh.example"
    assert claims["body_sha256"] == hashlib.sha256(json.dumps(body).encode()).hexdigest()
    assert "sub" in claims
    assert "iat" in claims


def test_send_webhook_extra_claims_and_wrong_secret(client: FlaskClient) -> None:
    seen: list[Event] = []
    on("*")(seen.append)
    assert (
        send_webhook(client, sample_payload("prior_authorization.message"), sub="x").status_code
        == 200
    )
    assert seen[0].claims["sub"] == "x"
    refused = send_webhook(
        client,
        sample_payload("prior_authorization.message"),
        secret="not-the-secret-0123456789abcdefghijklmnop",
    )
    assert (refused.status_code, refused.get_json()["error"]) == (401, "invalid_signature")


def test_send_webhook_signs_with_the_first_secret(make_app: Callable[..., Flask]) -> None:
    first, second = (
        "first-secret-0123456789abcdefghijklmnop",
        "second-secret-0123456789abcdefghijklm",
    )
    app = make_app(SECRET=[first, second])
    tokens = captured_tokens(app)
    assert (
        send_webhook(app.test_client(), sample_payload("prior_authorization.message")).status_code
        == 200
    )
    jwt.decode(tokens[0], first, algorithms=["HS256"])


def test_send_webhook_uses_the_configured_algorithm_and_header(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(ALGORITHMS=["HS384"], HEADER="X-DH-Token")
    tokens = captured_tokens(app)
    assert (
        send_webhook(app.test_client(), sample_payload("prior_authorization.message")).status_code
        == 200
    )
    assert jwt.get_unverified_header(tokens[0])["alg"] == "HS384"


def test_send_webhook_headers_override(client: FlaskClient) -> None:
    response = send_webhook(
        client, sample_payload("prior_authorization.message"), headers={"X-Webhook-Secret": ""}
    )
    assert (response.status_code, response.get_json()["error"]) == (401, "missing_token")


def test_send_webhook_sends_bytes_as_they_are(client: FlaskClient) -> None:
    response = send_webhook(client, b"[1, 2, 3]")
    assert (response.status_code, response.get_json()["error"]) == (400, "invalid_json")


def test_send_webhook_follows_the_url_prefix() -> None:
    app = Flask("kit_prefix")
    app.config.update(
        TESTING=True,
        DEVHEALTH_WEBHOOKS_SECRET=SECRET,
        DEVHEALTH_WEBHOOKS_DATABASE_URL="sqlite://",
    )
    app.register_blueprint(blueprint, url_prefix="/hooks/dh")
    urls: list[str] = []
    app.before_request(lambda: urls.append(request.path))
    assert (
        send_webhook(app.test_client(), sample_payload("prior_authorization.message")).status_code
        == 200
    )
    assert urls == ["/hooks/dh"]


# -- record_events --------------------------------------------------------------------------------


def test_record_events_includes_derived_events(client: FlaskClient) -> None:
    with record_events() as events:
        send_webhook(client, sample_payload("prior_authorization.updated", status="completed"))
    assert sorted(e.name for e in events) == [DETERMINATION, "prior_authorization.updated"]
    assert len({e.delivery_id for e in events}) == 1


def test_record_events_only_inside_the_block(client: FlaskClient) -> None:
    with record_events() as events:
        send_webhook(client, sample_payload("prior_authorization.message"))
    send_webhook(client, sample_payload("prior_authorization.message"))
    assert [e.name for e in events] == ["prior_authorization.message"]


def test_record_events_for_one_app(make_app: Callable[..., Flask]) -> None:
    first, second = make_app(), make_app()
    with record_events(first) as events:
        send_webhook(second.test_client(), sample_payload("prior_authorization.message"))
        send_webhook(first.test_client(), sample_payload("benefit_verification.updated"))
    assert [e.name for e in events] == ["benefit_verification.updated"]


def test_record_events_does_not_record_rejected_deliveries(client: FlaskClient) -> None:
    with record_events() as events:
        send_webhook(client, sample_payload("prior_authorization.message"), secret="x" * 40)
    assert events == []


# -- the pytest plugin ----------------------------------------------------------------------------


def test_plugin_is_registered_through_the_entry_point(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("devhealth_webhooks")


def test_plugin_fixtures_directly(
    devhealth_send: Callable[..., Any],
    devhealth_events: list[Event],
    devhealth_sample: Callable[..., dict[str, Any]],
    devhealth_token: Callable[..., str],
    client: FlaskClient,
) -> None:
    response = devhealth_send(devhealth_sample("prior_authorization.updated", status="completed"))
    assert response.status_code == 200
    assert sorted(e.name for e in devhealth_events) == [
        DETERMINATION,
        "prior_authorization.updated",
    ]
    token = devhealth_token(SECRET, sub="me")
    assert jwt.decode(token, SECRET, algorithms=["HS256"])["sub"] == "me"
    manual = client.post(
        "/webhooks/devhealth",
        data=json.dumps(devhealth_sample("benefit_verification.updated", legacy=True)),
        headers={"X-Webhook-Secret": token},
    )
    assert manual.status_code == 200
    assert devhealth_events[-1].name == "benefit_verification.updated"


USER_TESTS = """
from flask import Flask
import pytest

from flask_devhealth_webhooks import Event, blueprint, on

SEEN = []


@on("benefit_verification.updated")
def keep_status(event: Event) -> None:
    SEEN.append(event.status)


@pytest.fixture
def app():
    app = Flask("user_app")
    app.config["DEVHEALTH_WEBHOOKS_SECRET"] = "user-secret-0123456789abcdefghijklmnopq"
    app.config["DEVHEALTH_WEBHOOKS_DATABASE_URL"] = "sqlite://"
    app.register_blueprint(blueprint)
    return app


def test_send(devhealth_send, devhealth_sample, devhealth_events):
    response = devhealth_send(devhealth_sample("benefit_verification.updated", status="failed"))
    assert response.status_code == 200
    assert response.get_json()["status"] == "processed"
    assert [e.status for e in devhealth_events] == ["failed"]
    assert SEEN[-1] == "failed"


def test_legacy(devhealth_send, devhealth_sample, devhealth_events):
    body = devhealth_sample("prior_authorization.determination", legacy=True)
    assert devhealth_send(body).status_code == 200
    assert [e.name for e in devhealth_events] == ["prior_authorization.determination"]


def test_token(devhealth_token, client):
    token = devhealth_token("wrong-secret-0123456789abcdefghijklmnopq")
    response = client.post("/webhooks/devhealth", data=b"{}", headers={"X-Webhook-Secret": token})
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_signature"
"""


def test_plugin_in_a_user_project(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nfilterwarnings =\n    error\n")
    pytester.makepyfile(test_user_handlers=USER_TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
