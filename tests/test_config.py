"""Configuration: read and checked at registration; secrets, algorithms, warnings, rotation."""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from conftest import SECRET, fixture
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from flask_devhealth_webhooks import ConfigurationError, WebhookError, blueprint, get_state
from flask_devhealth_webhooks.testing import make_token, sample_payload, send_webhook

URL = "/webhooks/devhealth"
LOGGER = "flask_devhealth_webhooks"
KEY = "DEVHEALTH_WEBHOOKS_SECRET"
NEW = "new-secret-after-rotation-0123456789abcdef"
OLD = "old-secret-before-rotation-0123456789abcdef"
SHORT = "tiny-secret-x9"


def bare_app(**config: Any) -> Flask:
    """An app with only the given keys (full names) set, not yet registered."""
    app = Flask("config_app")
    app.config["TESTING"] = True
    app.config["DEVHEALTH_WEBHOOKS_DATABASE_URL"] = "sqlite://"
    app.config.update(config)
    return app


def post(client: FlaskClient, token: str, body: dict[str, Any] | None = None) -> TestResponse:
    raw = json.dumps(sample_payload("benefit_verification.updated") if body is None else body)
    response = client.post(URL, data=raw, headers={"X-Webhook-Secret": token})
    assert response.is_json
    return response


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


# -- the secret ----------------------------------------------------------------------------------


def test_missing_secret_is_an_error_at_registration() -> None:
    app = bare_app()
    with pytest.raises(ConfigurationError, match=KEY) as info:
        app.register_blueprint(blueprint)
    assert isinstance(info.value, WebhookError)
    assert "devhealth_webhooks" not in app.extensions


@pytest.mark.parametrize(
    "value", [None, "", [], (), ["", NEW], [NEW, ""], [NEW, None], 42, {"a": 1}]
)
def test_empty_or_invalid_secret_is_an_error(value: Any) -> None:
    app = bare_app(**{KEY: value})
    with pytest.raises(ConfigurationError, match=KEY) as info:
        app.register_blueprint(blueprint)
    assert NEW not in str(info.value)


def test_error_message_says_how_to_fix_it() -> None:
    with pytest.raises(ConfigurationError) as info:
        bare_app().register_blueprint(blueprint)
    message = str(info.value)
    assert f"app.config[{KEY!r}]" in message or "admin panel" in message


def test_short_secret_warns_once_at_registration(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app(SECRET=SHORT)
    registered = warnings_from(caplog)
    assert len(registered) == 1
    assert KEY in registered[0].getMessage()
    caplog.clear()
    client = app.test_client()
    for _ in range(3):
        assert (
            send_webhook(client, sample_payload("benefit_verification.updated")).status_code == 200
        )
    assert warnings_from(caplog) == []
    assert SHORT not in caplog.text


def test_secret_with_surrounding_whitespace_warns_once(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    padded = f"  {SECRET}\n"
    app = make_app(SECRET=padded)
    registered = warnings_from(caplog)
    assert len(registered) == 1
    assert "whitespace" in registered[0].getMessage()
    caplog.clear()
    assert (
        send_webhook(app.test_client(), sample_payload("prior_authorization.message")).status_code
        == 200
    )
    assert warnings_from(caplog) == []
    assert SECRET not in caplog.text


def test_a_mistyped_key_warns_with_the_closest_setting(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    """DEVHEALTH_WEBHOOKS_MAXAGE would otherwise leave tokens unchecked for age, silently."""
    caplog.set_level(logging.DEBUG)
    make_app(MAXAGE=300, FROBNICATE=1)
    messages = [record.getMessage() for record in warnings_from(caplog)]
    assert messages == [
        "DEVHEALTH_WEBHOOKS_MAXAGE is not a flask_devhealth_webhooks setting and is ignored; "
        "did you mean DEVHEALTH_WEBHOOKS_MAX_AGE?",
        "DEVHEALTH_WEBHOOKS_FROBNICATE is not a flask_devhealth_webhooks setting and is ignored",
    ]


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("DEVHEALTH_WEBHOOKS_secret", "SECRET"),
        ("DEVHEALTH_WEBHOOK_MAX_AGE", "MAX_AGE"),
        ("devhealth_webhooks_max_age", "MAX_AGE"),
    ],
)
def test_a_mistyped_prefix_or_case_warns_too(
    caplog: pytest.LogCaptureFixture, key: str, meant: str
) -> None:
    caplog.set_level(logging.DEBUG)
    bare_app(**{KEY: NEW, key: "ZZ-VALUE-NEVER-LOGGED"}).register_blueprint(blueprint)
    [warning] = [r.getMessage() for r in warnings_from(caplog)]
    assert warning.startswith(f"{key} is not a flask_devhealth_webhooks setting")
    assert warning.endswith(f"did you mean DEVHEALTH_WEBHOOKS_{meant}?")
    assert "ZZ-VALUE-NEVER-LOGGED" not in caplog.text


def test_good_secret_does_not_warn(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    make_app()
    assert warnings_from(caplog) == []


def test_no_insecure_key_length_warning_with_a_short_secret(
    make_app: Callable[..., Flask],
) -> None:
    """PyJWT's per-call key-length warning must not reach users' test suites."""
    app = make_app(SECRET=SHORT, ALGORITHMS=["HS256", "HS384", "HS512"])
    client = app.test_client()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        responses = [
            send_webhook(client, sample_payload("benefit_verification.updated")),
            post(client, make_token(SHORT)),
            post(client, make_token(SHORT, algorithm="HS384")),
            post(client, make_token(SHORT, algorithm="HS512")),
            post(client, make_token("another-short")),
        ]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 401]
    assert [w for w in caught if issubclass(w.category, jwt.InsecureKeyLengthWarning)] == []
    assert caught == []


def test_hs512_with_a_secret_shorter_than_its_block_does_not_warn(
    make_app: Callable[..., Flask],
) -> None:
    client = make_app(ALGORITHMS=["HS512"]).test_client()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert (
            send_webhook(client, sample_payload("benefit_verification.updated")).status_code == 200
        )
    assert caught == []


# -- algorithms ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        ["RS256"],
        "RS256",
        ["HS256", "RS256"],
        ["none"],
        [],
        "",
        None,
        42,
        [256],
        ["HS256", 5],
        {"HS256"},
        {"HS256": True},
        ["hs256"],
    ],
)
def test_bad_algorithms_are_a_configuration_error(
    make_app: Callable[..., Flask], value: Any
) -> None:
    with pytest.raises(ConfigurationError, match="DEVHEALTH_WEBHOOKS_ALGORITHMS"):
        make_app(ALGORITHMS=value)


def test_bare_string_algorithm_is_normalised(make_app: Callable[..., Flask]) -> None:
    app = make_app(ALGORITHMS="HS384")
    assert get_state(app).settings.algorithms == ("HS384",)
    client = app.test_client()
    assert post(client, make_token(SECRET, algorithm="HS384")).status_code == 200
    refused = post(client, make_token(SECRET, algorithm="HS256"))
    assert refused.status_code == 401
    assert refused.get_json()["error"] == "invalid_signature"


def test_defaults_are_applied(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    config = app.config
    assert config["DEVHEALTH_WEBHOOKS_ALGORITHMS"] == ["HS256"]
    assert config["DEVHEALTH_WEBHOOKS_LEEWAY"] == 30
    assert config["DEVHEALTH_WEBHOOKS_MAX_AGE"] is None
    assert config["DEVHEALTH_WEBHOOKS_AUDIENCE"] is None
    assert config["DEVHEALTH_WEBHOOKS_ISSUER"] is None
    assert config["DEVHEALTH_WEBHOOKS_HEADER"] == "X-Webhook-Secret"
    assert config["DEVHEALTH_WEBHOOKS_MAX_BODY"] == 1024 * 1024
    assert config["DEVHEALTH_WEBHOOKS_BODY_HASH_CLAIM"] is None
    assert app.extensions["devhealth_webhooks"] is get_state(app)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("LEEWAY", -1),
        ("LEEWAY", "30"),
        ("MAX_AGE", "60"),
        ("MAX_BODY", 0),
        ("MAX_BODY", True),
        ("HEADER", ""),
        ("HEADER", "   "),
        ("HEADER", None),
        ("AUDIENCE", ""),
        ("ISSUER", 5),
        ("REQUIRED_CLAIMS", [1]),
        ("BODY_HASH_CLAIM", ""),
        ("LEEWAY", float("inf")),
        ("LEEWAY", float("nan")),
        ("MAX_AGE", float("nan")),
        ("MAX_BODY", float("inf")),
        ("RETRY_AFTER", float("nan")),
        ("LEASE_SECONDS", float("inf")),
        ("HEADER", "X Bad: Header"),
        ("DATABASE_URL", "not a url"),
        ("ENGINE", "sqlite://"),
        ("LEASE_SECONDS", 1e12),
        ("LEASE_SECONDS", 1e300),
        ("RETENTION_DAYS", 1e7),
        ("RETRY_AFTER", 1e300),
        ("MAX_BODY", 2**40),
    ],
)
def test_other_bad_values_are_configuration_errors(
    make_app: Callable[..., Flask], key: str, value: Any
) -> None:
    with pytest.raises(ConfigurationError, match=f"DEVHEALTH_WEBHOOKS_{key}"):
        make_app(**{key: value})


@pytest.mark.parametrize(
    "url", ["postgresql://u:ZZ-PASSWORD@h:notaport/db", "nosuchdb://u:ZZ-PASSWORD@h/db"]
)
def test_a_bad_database_url_is_a_configuration_error_without_its_password(
    make_app: Callable[..., Flask], url: str
) -> None:
    """A port that is not a number raised ValueError, an unknown dialect NoSuchModuleError."""
    with pytest.raises(ConfigurationError, match="DEVHEALTH_WEBHOOKS_DATABASE_URL") as info:
        make_app(DATABASE_URL=url)
    assert "ZZ-PASSWORD" not in str(info.value)


def test_a_log_folder_that_cannot_be_created_is_a_configuration_error(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match="DEVHEALTH_WEBHOOKS_DATABASE_URL") as info:
        make_app(DATABASE_URL=f"sqlite:///{blocker / 'log.sqlite3'}")
    assert str(blocker) in str(info.value)


def test_config_is_read_at_registration(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    app.config[KEY] = NEW
    app.config["DEVHEALTH_WEBHOOKS_MAX_BODY"] = 1
    client = app.test_client()
    assert post(client, make_token(SECRET)).status_code == 200
    assert post(client, make_token(NEW)).status_code == 401


# -- several apps and rotation ---------------------------------------------------------------


def test_two_apps_each_accept_only_their_own_secret(make_app: Callable[..., Flask]) -> None:
    first, second = make_app(SECRET=NEW), make_app(SECRET=OLD)
    a, b = first.test_client(), second.test_client()
    assert post(a, make_token(NEW)).status_code == 200
    assert post(b, make_token(OLD)).status_code == 200
    wrong_a, wrong_b = post(a, make_token(OLD)), post(b, make_token(NEW))
    assert (wrong_a.status_code, wrong_a.get_json()["error"]) == (401, "invalid_signature")
    assert (wrong_b.status_code, wrong_b.get_json()["error"]) == (401, "invalid_signature")
    assert send_webhook(a, sample_payload("prior_authorization.message")).status_code == 200
    assert send_webhook(b, sample_payload("prior_authorization.message")).status_code == 200


def test_one_blueprint_on_two_apps_with_different_prefixes(make_app: Callable[..., Flask]) -> None:
    first = make_app(SECRET=NEW)
    second = bare_app(**{KEY: OLD})
    second.register_blueprint(blueprint, url_prefix="/other")
    assert post(first.test_client(), make_token(NEW)).status_code == 200
    response = second.test_client().post(
        "/other",
        data=json.dumps(sample_payload("benefit_verification.updated")),
        headers={"X-Webhook-Secret": make_token(OLD)},
    )
    assert response.status_code == 200


def test_rotation_every_slot_verifies(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app(SECRET=[NEW, OLD])
    assert get_state(app).settings.secrets == (NEW.encode(), OLD.encode())
    client = app.test_client()
    assert post(client, make_token(NEW)).status_code == 200
    assert post(client, make_token(OLD)).status_code == 200
    refused = post(client, make_token("third-secret-0123456789abcdefghijklmnop"))
    assert (refused.status_code, refused.get_json()["error"]) == (401, "invalid_signature")
    assert NEW not in caplog.text
    assert OLD not in caplog.text


def test_rotation_log_names_the_slot_never_the_value(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app(SECRET=[NEW, OLD]).test_client()
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    assert post(client, make_token(OLD), fixture("prior_authorization_message")).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any(re.search(r"slot\D{0,3}1\b", line) for line in lines), lines
    caplog.clear()
    assert (
        post(client, make_token(NEW), fixture("benefit_verification_updated_legacy")).status_code
        == 200
    )
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert not any(re.search(r"slot\D{0,3}1\b", line) for line in lines), lines
    assert NEW not in caplog.text
    assert OLD not in caplog.text


def test_rotation_with_a_short_slot_warns_naming_the_slot(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    make_app(SECRET=[NEW, SHORT])
    registered = warnings_from(caplog)
    assert len(registered) == 1
    assert re.search(r"slot\D{0,3}1\b", registered[0].getMessage())
    assert SHORT not in caplog.text
    assert NEW not in caplog.text
