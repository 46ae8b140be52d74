"""The request path, row by row of the responses table: size, token, JSON, schema, dispatch."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from conftest import SECRET, fixture
from flask import Flask, request
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from flask_devhealth_webhooks import Event, blueprint, on
from flask_devhealth_webhooks.testing import make_token, sample_payload

URL = "/webhooks/devhealth"
HEADER = "X-Webhook-Secret"
NO_TOKEN = object()


def post(
    client: FlaskClient,
    body: bytes | dict[str, Any],
    token: Any = None,
    *,
    url: str = URL,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> TestResponse:
    """POST ``body`` with a valid token (default), a given token, or none (``NO_TOKEN``)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent: dict[str, str] = {}
    if token is None:
        sent[HEADER] = make_token(SECRET)
    elif token is not NO_TOKEN:
        sent[HEADER] = token
    sent.update(headers or {})
    response = client.post(url, data=raw, headers=sent, **kwargs)
    assert response.is_json, "every POST must be answered in JSON"
    return response


def post_chunked(client: FlaskClient, raw: bytes) -> TestResponse:
    """POST ``raw`` with a valid token as a chunked body: no Content-Length, server-ended."""
    return client.post(
        URL,
        input_stream=io.BytesIO(raw),
        headers={HEADER: make_token(SECRET), "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def record(name: str, *, strict: bool = True) -> list[Event]:
    """Connect a handler for ``name`` that collects the events it receives."""
    seen: list[Event] = []

    @on(name, strict=strict)
    def handler(event: Event) -> None:
        seen.append(event)

    return seen


def bv_body() -> dict[str, Any]:
    return fixture("benefit_verification_status_change_failed")


# -- 200 processed / ignored ------------------------------------------------------------


def test_handled_delivery_is_processed(client: FlaskClient) -> None:
    seen = record("benefit_verification.updated")
    response = post(client, bv_body())
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "processed",
        "event": "benefit_verification.updated",
        "delivery_id": "wh_evt_bV0001a",
    }
    assert [e.object_id for e in seen] == ["bv_Fa1lEd9"]


def test_catalogued_event_without_handlers_is_processed(client: FlaskClient) -> None:
    response = post(client, bv_body())
    assert response.status_code == 200
    assert response.get_json()["status"] == "processed"


def uncatalogued_body() -> dict[str, Any]:
    body = fixture("prior_authorization_message")
    body["event_type"] = "prior_authorization.brand_new_thing"
    return body


def test_uncatalogued_event_without_handler_is_ignored(client: FlaskClient) -> None:
    response = post(client, uncatalogued_body())
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ignored",
        "event": "prior_authorization.brand_new_thing",
        "delivery_id": "wh_evt_mSg0003c",
    }


def test_uncatalogued_event_with_non_strict_handler_is_processed(client: FlaskClient) -> None:
    seen = record("prior_authorization.brand_new_thing", strict=False)
    response = post(client, uncatalogued_body())
    assert response.status_code == 200
    assert response.get_json()["status"] == "processed"
    assert [(e.name, e.event_type) for e in seen] == [
        ("prior_authorization.brand_new_thing", "prior_authorization.brand_new_thing")
    ]


def test_uncatalogued_event_reaches_star_handlers(client: FlaskClient) -> None:
    seen = record("*")
    response = post(client, uncatalogued_body())
    assert response.status_code == 200
    assert response.get_json()["status"] == "processed"
    assert [e.name for e in seen] == ["prior_authorization.brand_new_thing"]


def test_handler_for_another_uncatalogued_name_does_not_make_it_processed(
    client: FlaskClient,
) -> None:
    seen = record("prior_authorization.something_else", strict=False)
    response = post(client, uncatalogued_body())
    assert response.get_json()["status"] == "ignored"
    assert seen == []


def test_unknown_legacy_title_is_ignored(client: FlaskClient) -> None:
    body = fixture("benefit_verification_updated_legacy")
    body["title"] = "Something The Vendor Added Later"
    response = post(client, body)
    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"


# -- 413 payload_too_large ---------------------------------------------------------------


def test_body_over_limit_by_content_length(make_app: Callable[..., Flask]) -> None:
    raw = json.dumps(bv_body()).encode()
    client = make_app(MAX_BODY=len(raw) - 1).test_client()
    seen = record("*")
    response = post(client, raw)
    assert response.status_code == 413
    body = response.get_json()
    assert body["error"] == "payload_too_large"
    assert isinstance(body["message"], str)
    assert body["message"]
    assert seen == []


def test_declared_content_length_over_limit_is_refused_before_reading(
    client: FlaskClient,
) -> None:
    """A Content-Length over the default 1 MiB is refused from the header alone."""
    response = post(
        client,
        b"{}",
        environ_overrides={"CONTENT_LENGTH": str(1024 * 1024 + 1)},
    )
    assert response.status_code == 413
    assert response.get_json()["error"] == "payload_too_large"


def test_body_over_limit_without_content_length(make_app: Callable[..., Flask]) -> None:
    """A chunked body (no Content-Length) is cut off at the limit and refused."""
    raw = json.dumps(bv_body()).encode()
    client = make_app(MAX_BODY=len(raw) - 1).test_client()
    response = post_chunked(client, raw)
    assert response.status_code == 413
    assert response.get_json()["error"] == "payload_too_large"


def test_chunked_body_within_limit_is_accepted(make_app: Callable[..., Flask]) -> None:
    raw = json.dumps(bv_body()).encode()
    client = make_app(MAX_BODY=len(raw)).test_client()
    response = post_chunked(client, raw)
    assert response.status_code == 200
    assert response.get_json()["status"] == "processed"


def test_body_shorter_than_its_content_length_is_refused(client: FlaskClient) -> None:
    """The client went away mid-body: a JSON 400, and no handler sees the fragment."""
    seen = record("*")
    raw = json.dumps(bv_body()).encode()
    response = post(client, raw, environ_overrides={"CONTENT_LENGTH": str(len(raw) + 10)})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_json"
    assert "Content-Length" in response.get_json()["message"]
    assert seen == []


def test_only_the_declared_length_is_read(client: FlaskClient) -> None:
    """Bytes after the declared length (a pipelined request, say) are not part of the body."""
    raw = json.dumps(bv_body()).encode()
    response = client.post(
        URL,
        input_stream=io.BytesIO(raw + b"GET / HTTP/1.1"),
        headers={HEADER: make_token(SECRET)},
        environ_overrides={"CONTENT_LENGTH": str(len(raw))},
    )
    assert response.status_code == 200, response.get_json()


def test_handlers_and_hooks_can_still_read_the_body(make_app: Callable[..., Flask]) -> None:
    """The body is read once from the server's stream and put back for request.get_data()."""
    from flask import request

    app = make_app()
    app.config["TESTING"] = False
    seen: list[bytes] = []

    @on("benefit_verification.updated")
    def handler(event: Event) -> None:
        seen.append(request.get_data())

    @app.after_request
    def hook(response: Any) -> Any:
        seen.append(request.get_data())
        return response

    raw = json.dumps(bv_body()).encode()
    response = post(app.test_client(), raw)
    assert response.status_code == 200, response.get_json()
    assert seen == [raw, raw]


def test_flask_max_content_length_is_answered_in_json(make_app: Callable[..., Flask]) -> None:
    """Flask's MAX_CONTENT_LENGTH, when lower than MAX_BODY, is refused like MAX_BODY: JSON."""
    app = make_app()
    app.config["MAX_CONTENT_LENGTH"] = 64
    raw = json.dumps(bv_body()).encode()
    response = post(app.test_client(), raw)
    assert response.status_code == 413
    assert response.get_json()["error"] == "payload_too_large"
    assert "MAX_CONTENT_LENGTH (64 bytes)" in response.get_json()["message"]
    chunked = post_chunked(app.test_client(), raw)
    assert chunked.status_code == 413
    assert chunked.get_json()["error"] == "payload_too_large"
    app.config["MAX_CONTENT_LENGTH"] = len(raw)
    assert post(app.test_client(), raw).status_code == 200


def test_body_exactly_at_limit_is_accepted(make_app: Callable[..., Flask]) -> None:
    raw = json.dumps(bv_body()).encode()
    client = make_app(MAX_BODY=len(raw)).test_client()
    assert post(client, raw).status_code == 200


def test_default_limit_is_one_mebibyte(client: FlaskClient) -> None:
    body = bv_body()
    padding = 1024 * 1024 - len(json.dumps({**body, "pad": ""}).encode())
    body["pad"] = "x" * padding
    assert len(json.dumps(body).encode()) == 1024 * 1024
    assert post(client, body).status_code == 200
    body["pad"] += "x"
    body["event_id"] = "wh_evt_bV0001b"  # same length, so not a duplicate
    assert len(json.dumps(body).encode()) == 1024 * 1024 + 1
    assert post(client, body).status_code == 413


# -- 401 token errors (details in test_verify.py) ------------------------------------------


@pytest.mark.parametrize("value", ["", "   ", "\t", "Bearer ", "bearer    "])
def test_missing_or_empty_token(client: FlaskClient, value: str) -> None:
    response = post(client, bv_body(), value)
    assert response.status_code == 401
    assert response.get_json()["error"] == "missing_token"


def test_header_absent(client: FlaskClient) -> None:
    response = post(client, bv_body(), NO_TOKEN)
    assert response.status_code == 401
    body = response.get_json()
    assert body["error"] == "missing_token"
    assert isinstance(body["message"], str)
    assert body["message"]


@pytest.mark.parametrize("value", ["not-a-jwt", "a.b.c", "Bearer abc.def", "....", "e30.e30"])
def test_malformed_token(client: FlaskClient, value: str) -> None:
    response = post(client, bv_body(), value)
    assert response.status_code == 401
    assert response.get_json()["error"] == "malformed_token"


def test_wrong_secret(client: FlaskClient) -> None:
    response = post(client, bv_body(), make_token("another-secret-0123456789abcdefghijklmnop"))
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_signature"


# -- 400 invalid_json ----------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    """A valid body whose deepest value sits ``depth`` levels down (the body is level 1)."""
    body = bv_body()
    value: Any = []
    for _ in range(depth - 2):
        value = [value]
    body["deep"] = value
    return body


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"title": "Benefit Verification Updated", "x": "\xff\xfe"}', id="bad-utf8"),
        pytest.param(json.dumps({"a": 1}).encode("utf-16"), id="utf16"),
        pytest.param(b'{"data": {"id": "x", "object": "y"}, "n": NaN}', id="nan"),
        pytest.param(b'{"data": {"id": "x", "object": "y"}, "n": Infinity}', id="infinity"),
        pytest.param(b'{"data": {"id": "x", "object": "y"}, "n": -Infinity}', id="-infinity"),
        pytest.param(b'{"data": {"id": "x", "object": "y"}, "n": 1e999}', id="overflow-exponent"),
        pytest.param(b'{"data": {"id": "x", "object": "y", "n": -1E400}}', id="overflow-in-data"),
        pytest.param(
            b'{"data": {"id": "x", "object": "y"}, "n": 1' + b"0" * 400 + b".0}",
            id="overflow-digits",
        ),
        pytest.param(b"[]", id="array"),
        pytest.param(b"[{}]", id="array-of-object"),
        pytest.param(b"", id="empty"),
        pytest.param(b"   \n", id="whitespace"),
        pytest.param(b'"a string"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"42", id="number"),
        pytest.param(b'{"title": "x"', id="truncated"),
        pytest.param(b'{"a": 1} {"b": 2}', id="two-objects"),
        pytest.param(json.dumps(nested(65)).encode(), id="depth-65"),
        pytest.param(b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="depth-100k"),
    ],
)
def test_invalid_json(client: FlaskClient, raw: bytes) -> None:
    seen = record("*")
    response = post(client, raw)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "invalid_json"
    assert isinstance(body["message"], str)
    assert body["message"]
    assert seen == []


def test_numbers_no_float_can_hold_name_the_problem(client: FlaskClient) -> None:
    body = bv_body()
    raw = json.dumps(body).encode()[:-1] + b', "extra": 1e999}'

    response = post(client, raw)

    assert response.status_code == 400
    assert "too large for a float" in response.get_json()["message"]


def test_large_finite_numbers_are_kept(client: FlaskClient) -> None:
    seen = record("benefit_verification.updated")
    body = bv_body()
    raw = json.dumps(body).encode()[:-1] + b', "extra": 1.7e308, "tiny": 1e-999}'

    response = post(client, raw)

    assert response.status_code == 200, response.get_json()
    assert seen[0].payload["extra"] == 1.7e308
    assert seen[0].payload["tiny"] == 0.0


class BrokenStream(io.RawIOBase):
    """A server's input stream whose framing breaks mid-body, as gunicorn's does."""

    def read(self, size: int = -1) -> bytes:
        raise ValueError('Invalid chunk size: b\'"first_name": "ZZ-PHI-NAME", "last_name"\'')


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"wsgi.input_terminated": True}, id="chunked"),
        pytest.param({"CONTENT_LENGTH": "500"}, id="content-length"),
    ],
)
def test_a_body_the_server_cannot_read_is_invalid_json_and_not_logged(
    client: FlaskClient, caplog: pytest.LogCaptureFixture, environ: dict[str, Any]
) -> None:
    seen = record("*")
    with caplog.at_level("DEBUG"):
        response = client.post(
            URL,
            headers={HEADER: make_token(SECRET)},
            environ_overrides={"wsgi.input": BrokenStream(), **environ},
        )

    assert response.status_code == 400
    assert response.is_json
    assert response.get_json()["error"] == "invalid_json"
    assert "chunked framing" in response.get_json()["message"]
    assert "ZZ-PHI-NAME" not in response.get_data(as_text=True)
    assert "ZZ-PHI-NAME" not in caplog.text
    assert "Traceback" not in caplog.text
    assert seen == []


def test_nesting_of_64_levels_is_accepted(client: FlaskClient) -> None:
    response = post(client, nested(64))
    assert response.status_code == 200
    assert response.get_json()["status"] == "processed"


# -- 400 invalid_payload -------------------------------------------------------------------

SENTINEL = "ZZ-SENTINEL-VALUE-42"


def _without_data(body: dict[str, Any]) -> None:
    del body["data"]


def _data_string(body: dict[str, Any]) -> None:
    body["data"] = SENTINEL


def _without_id(body: dict[str, Any]) -> None:
    del body["data"]["id"]


def _empty_id(body: dict[str, Any]) -> None:
    body["data"]["id"] = ""


def _without_object(body: dict[str, Any]) -> None:
    del body["data"]["object"]


def _quantity_string(body: dict[str, Any]) -> None:
    body["data"]["drugs"][0]["quantity"] = SENTINEL


def _name_number(body: dict[str, Any]) -> None:
    body["data"]["patient"]["first_name"] = 4242424242


def _wrong_object(body: dict[str, Any]) -> None:
    body["data"]["object"] = "prior_authorization"


def _no_event_name(body: dict[str, Any]) -> None:
    del body["event_type"]
    del body["title"]


def _bad_occurred_at(body: dict[str, Any]) -> None:
    body["occurred_at"] = SENTINEL


def _occurred_at_past_utc_range(body: dict[str, Any]) -> None:
    body["occurred_at"] = "9999-12-31T23:59:59-23:59"


def _event_type_number(body: dict[str, Any]) -> None:
    body["event_type"] = 4242424242


def _drugs_object(body: dict[str, Any]) -> None:
    body["data"]["drugs"] = {"name": SENTINEL}


def _dob_bad(body: dict[str, Any]) -> None:
    body["data"]["patient"]["date_of_birth"] = SENTINEL


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (_without_data, "data"),
        (_data_string, "data"),
        (_without_id, "data.id"),
        (_empty_id, "data.id"),
        (_without_object, "data.object"),
        (_quantity_string, "data.drugs.0.quantity"),
        (_name_number, "data.patient.first_name"),
        (_wrong_object, "data.object"),
        (_no_event_name, "event_type"),
        (_bad_occurred_at, "occurred_at"),
        (_occurred_at_past_utc_range, "occurred_at"),
        (_event_type_number, "event_type"),
        (_drugs_object, "data.drugs"),
        (_dob_bad, "data.patient.date_of_birth"),
    ],
)
def test_invalid_payload(
    client: FlaskClient, mutate: Callable[[dict[str, Any]], None], path: str
) -> None:
    seen = record("*")
    body = bv_body()
    mutate(body)
    response = post(client, body)
    assert response.status_code == 400
    answer = response.get_json()
    assert answer["error"] == "invalid_payload"
    assert isinstance(answer["message"], str)
    assert answer["message"]
    errors = answer["errors"]
    assert path in errors, errors
    # Flat: dotted paths to lists of messages, nothing nested.
    for key, messages in errors.items():
        assert isinstance(key, str)
        assert isinstance(messages, list)
        assert messages
        assert all(isinstance(m, str) for m in messages)
    text = response.get_data(as_text=True)
    for value in (SENTINEL, "4242424242", "Alex", "Sample", "1980-01-01", "MBR-0001"):
        assert value not in text
    assert seen == []


def test_several_errors_are_reported_together(client: FlaskClient) -> None:
    body = bv_body()
    _without_id(body)
    _quantity_string(body)
    _name_number(body)
    errors = post(client, body).get_json()["errors"]
    assert {"data.id", "data.drugs.0.quantity", "data.patient.first_name"} <= set(errors)


# -- 500 handler_failed --------------------------------------------------------------------


def test_handler_failure_runs_every_other_handler(client: FlaskClient) -> None:
    calls: list[str] = []

    @on("benefit_verification.updated")
    def first(event: Event) -> None:
        calls.append("first")

    @on("benefit_verification.status_change")
    def broken(event: Event) -> None:
        calls.append("broken")
        raise RuntimeError("Alex Sample broke it")

    @on("benefit_verification.updated")
    def last(event: Event) -> None:
        calls.append("last")

    @on("*")
    def everything(event: Event) -> None:
        calls.append("star")

    response = post(client, bv_body())
    assert response.status_code == 500
    answer = response.get_json()
    assert answer["error"] == "handler_failed"
    assert answer["event"] == "benefit_verification.updated"
    assert answer["delivery_id"] == "wh_evt_bV0001a"
    assert isinstance(answer["message"], str)
    assert answer["message"]
    assert sorted(calls) == ["broken", "first", "last", "star"]
    text = response.get_data(as_text=True)
    assert "Alex" not in text
    assert "Traceback" not in text


def test_every_failing_handler_runs(client: FlaskClient) -> None:
    calls: list[str] = []

    @on("benefit_verification.updated")
    def one(event: Event) -> None:
        calls.append("one")
        raise ValueError("one")

    @on("benefit_verification.updated")
    def two(event: Event) -> None:
        calls.append("two")
        raise KeyError("two")

    response = post(client, bv_body())
    assert response.status_code == 500
    assert response.get_json()["error"] == "handler_failed"
    assert sorted(calls) == ["one", "two"]


# -- order: size, token, JSON, schema ------------------------------------------------------


def test_oversized_body_without_token_is_413(make_app: Callable[..., Flask]) -> None:
    client = make_app(MAX_BODY=10).test_client()
    assert post(client, b"not json at all", NO_TOKEN).status_code == 413


def test_oversized_body_with_bad_token_is_413(make_app: Callable[..., Flask]) -> None:
    client = make_app(MAX_BODY=10).test_client()
    assert post(client, bv_body(), "not-a-jwt").status_code == 413


def test_bad_json_without_token_is_401(client: FlaskClient) -> None:
    response = post(client, b"{not json", NO_TOKEN)
    assert response.status_code == 401
    assert response.get_json()["error"] == "missing_token"


def test_bad_json_with_forged_token_is_401(client: FlaskClient) -> None:
    response = post(client, b"[1, 2", make_token("forged-secret-0123456789abcdefghijklmnop"))
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_signature"


def test_invalid_payload_with_expired_token_is_401(client: FlaskClient) -> None:
    body = bv_body()
    del body["data"]
    response = post(client, body, make_token(SECRET, exp=1_000_000))
    assert response.status_code == 401
    assert response.get_json()["error"] == "token_expired"


def test_invalid_payload_that_is_also_bad_json_is_invalid_json(client: FlaskClient) -> None:
    response = post(client, b'{"data": NaN}')
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_json"


def test_rejected_delivery_runs_no_handler(client: FlaskClient) -> None:
    seen = record("*")
    specific = record("benefit_verification.updated")
    post(client, bv_body(), NO_TOKEN)
    post(client, bv_body(), "not-a-jwt")
    post(client, bv_body(), make_token("forged-secret-0123456789abcdefghijklmnop"))
    assert seen == []
    assert specific == []


# -- Content-Type, header, route -------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "Application/Json; Charset=UTF-8",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
    ],
)
def test_content_type_is_ignored(app: Flask, content_type: str | None) -> None:
    sent: list[str | None] = []

    @app.before_request
    def capture() -> None:
        sent.append(request.headers.get("Content-Type"))

    seen = record("benefit_verification.updated")
    client = app.test_client()
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = post(client, bv_body(), headers=headers)
    assert sent == [content_type]
    assert response.status_code == 200
    assert response.get_json()["status"] == "processed"
    assert len(seen) == 1


@pytest.mark.parametrize(
    "template",
    ["{}", "Bearer {}", "bearer {}", "BEARER {}", "BeArEr {}", "  Bearer   {}  ", "  {}\t"],
)
def test_token_trimmed_and_bearer_prefix_in_any_case(client: FlaskClient, template: str) -> None:
    response = post(client, bv_body(), template.format(make_token(SECRET)))
    assert response.status_code == 200


@pytest.mark.parametrize("name", ["x-webhook-secret", "X-WEBHOOK-SECRET", "x-Webhook-SECRET"])
def test_header_lookup_is_case_insensitive(client: FlaskClient, name: str) -> None:
    response = post(client, bv_body(), NO_TOKEN, headers={name: make_token(SECRET)})
    assert response.status_code == 200


def test_custom_header(make_app: Callable[..., Flask]) -> None:
    client = make_app(HEADER="x-devhealth-token").test_client()
    token = make_token(SECRET)
    refused = post(client, bv_body(), token)
    assert refused.status_code == 401
    assert refused.get_json()["error"] == "missing_token"
    accepted = post(client, bv_body(), NO_TOKEN, headers={"X-DevHealth-Token": token})
    assert accepted.status_code == 200


def test_url_prefix_override() -> None:
    app = Flask("prefixed")
    app.config["TESTING"] = True
    app.config["DEVHEALTH_WEBHOOKS_SECRET"] = SECRET
    app.config["DEVHEALTH_WEBHOOKS_DATABASE_URL"] = "sqlite://"
    app.register_blueprint(blueprint, url_prefix="/hooks/dh")
    client = app.test_client()
    response = post(client, bv_body(), url="/hooks/dh")
    assert response.status_code == 200
    assert response.get_json()["status"] == "processed"
    assert client.post(URL, data=b"{}").status_code == 404


def test_blueprint_contract() -> None:
    assert blueprint.name == "devhealth_webhooks"
    assert blueprint.url_prefix == "/webhooks/devhealth"


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_other_methods_get_a_json_405(
    client: FlaskClient, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    """Not Flask's HTML page: a JSON 405 naming the method, with Allow, and no handler run."""
    seen = record("*")
    body = json.dumps(bv_body()).encode()
    with caplog.at_level("INFO"):
        response = client.open(URL, method=method, data=body, headers={HEADER: make_token(SECRET)})
    assert response.status_code == 405
    assert response.get_json() == {
        "error": "method_not_allowed",
        "message": f"This URL accepts only POST, not {method}.",
    }
    assert response.headers["Allow"] == "OPTIONS, POST"
    assert seen == []
    assert "webhook rejected reason=method_not_allowed status=405" in caplog.text


def test_head_gets_a_405_without_a_body(client: FlaskClient) -> None:
    response = client.head(URL)
    assert response.status_code == 405
    assert response.headers["Allow"] == "OPTIONS, POST"
    assert response.data == b""


def test_options_lists_only_post(client: FlaskClient) -> None:
    """Flask's automatic answer would list the 405 rule's methods as allowed too."""
    response = client.options(URL)
    assert response.status_code == 204
    assert response.headers["Allow"] == "OPTIONS, POST"
    assert response.data == b""


def test_the_405_follows_a_moved_route() -> None:
    app = Flask("prefixed")
    app.config["DEVHEALTH_WEBHOOKS_SECRET"] = SECRET
    app.config["DEVHEALTH_WEBHOOKS_DATABASE_URL"] = "sqlite://"
    app.register_blueprint(blueprint, url_prefix="/hooks/dh")
    response = app.test_client().get("/hooks/dh")
    assert response.status_code == 405
    assert response.get_json()["error"] == "method_not_allowed"


def test_sample_body_with_unicode_is_accepted(client: FlaskClient) -> None:
    body = sample_payload("prior_authorization.message", status="ünïcødé ✓")
    raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
    seen = record("prior_authorization.message")
    assert post(client, raw).status_code == 200
    assert seen[0].status == "ünïcødé ✓"


def test_leading_byte_order_mark_is_tolerated(client: FlaskClient) -> None:
    """Some senders prefix UTF-8 with a BOM; a lost delivery is worse than a lenient parser."""
    response = post(client, b"\xef\xbb\xbf" + json.dumps(bv_body()).encode())
    assert response.status_code == 200
    assert response.get_json()["status"] == "processed"
