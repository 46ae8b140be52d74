"""Property-based tests of the endpoint: whatever arrives, the answer is a JSON 2xx/4xx.

Random headers, tokens and bodies, and mutations of valid signed deliveries (flipped bytes,
truncation, huge numbers, deep nesting, wrong types in every field of every fixture) must never
produce a 5xx, never reach a handler without a valid token, and never put a token, the secret or
a patient field in the logs or the response. Examples are derandomized and bounded, so the file
is reproducible in CI and runs in seconds.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jwt
import pytest
from conftest import SECRET, build_app, fixture
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_devhealth_webhooks import Event, on
from flask_devhealth_webhooks.exceptions import TokenError
from flask_devhealth_webhooks.signals import _signals
from flask_devhealth_webhooks.testing import make_token
from flask_devhealth_webhooks.verify import extract_token

URL = "/webhooks/devhealth"
HEADER = "X-Webhook-Secret"
FIXTURES = (
    "benefit_verification_status_change_failed",
    "benefit_verification_updated_legacy",
    "prior_authorization_determination_legacy",
    "prior_authorization_message",
    "prior_authorization_provider_outreach_change",
    "prior_authorization_status_change_approved",
)
#: Patient values of the fixtures that must never reach a log line or a response.
PHI = ("Alex", "Sample", "alex.sample", "1980-01-01", "MBR-0001", "pt-000123", "555-010")

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- helpers ------------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter().format(record) + repr(record.args))


@contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every record of every logger, at every level, formatted with args and tracebacks."""
    handler = _Records()
    root = logging.getLogger()
    ours = logging.getLogger("flask_devhealth_webhooks")
    level = ours.level
    root.addHandler(handler)
    ours.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        root.removeHandler(handler)
        ours.setLevel(level)


def assert_clean(text: str, *values: str) -> None:
    for value in (*PHI, SECRET, *values):
        if value:
            assert value not in text


class Endpoint:
    """One app (in-memory log) with a catch-all handler; every reply checked for the basics."""

    def __init__(self) -> None:
        self.app: Flask = build_app()
        self.client = self.app.test_client()
        self.seen: list[Event] = []
        on("*")(self.seen.append)

    def post(
        self, raw: bytes, headers: dict[str, str], content_length: str | None = None
    ) -> tuple[int, int]:
        """POST and return (status, handler calls it caused); assert no 5xx and no leak."""
        before = len(self.seen)
        overrides = {} if content_length is None else {"CONTENT_LENGTH": content_length}
        with captured_logs() as lines:
            response = self.client.post(URL, data=raw, headers=headers, environ_overrides=overrides)
        assert response.status_code < 500, response.get_data(as_text=True)[:300]
        assert response.is_json
        # A token is long; a short random header value may well occur in a log line by chance.
        token = headers.get(HEADER, "")
        assert_clean(
            "\n".join(lines) + response.get_data(as_text=True), token if len(token) >= 20 else ""
        )
        return response.status_code, len(self.seen) - before


# One app for every example of a hypothesis test: building one per example would dominate the
# run time. Handlers connected here are removed after each test by conftest's autouse fixture.
_current: dict[str, Endpoint] = {}


@pytest.fixture(autouse=True)
def _fresh_endpoint() -> Iterator[None]:
    _current.clear()
    yield
    _current.clear()


def _endpoint() -> Endpoint:
    if "endpoint" not in _current:
        _current["endpoint"] = Endpoint()
    return _current["endpoint"]


def token_is_valid(header_value: str | None) -> bool:
    """The oracle: PyJWT's own verdict on the header (HS256, the app's secret and leeway)."""
    try:
        token = extract_token(header_value)
        # Audience and issuer are checked only when configured (they are not, here).
        options: Any = {"verify_aud": False, "verify_iss": False}
        jwt.decode(token, SECRET, algorithms=["HS256"], leeway=30, options=options)
    except (TokenError, jwt.InvalidTokenError):
        return False
    return True


def fresh(name: str) -> dict[str, Any]:
    """A fixture with a new event_id (so it is not a duplicate of an earlier example)."""
    body = fixture(name)
    if "event_id" in body:
        body["event_id"] = "wh_evt_" + secrets.token_hex(8)
    else:  # legacy deliveries are identified by their content
        body["description"] = "fuzz " + secrets.token_hex(8)
    return body


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (dict keys and list indexes)."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield (*prefix, index)
            yield from paths(child, (*prefix, index))


def put(body: Any, path: tuple[Any, ...], value: Any) -> None:
    target = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


def splice(body: dict[str, Any], path: tuple[Any, ...], literal: str) -> bytes:
    """The body as JSON with the value at ``path`` replaced by raw JSON text ``literal``."""
    marker = "@@fuzz-" + secrets.token_hex(6) + "@@"
    put(body, path, marker)
    return json.dumps(body).replace(json.dumps(marker), literal).encode()


WRONG_VALUES: tuple[Any, ...] = (None, True, 0, -1, 2.5, "", "x", [], [1, "a"], {}, {"k": 1})


def wrong_values(original: Any) -> list[Any]:
    """Values of a different JSON type than ``original``."""

    def kind(value: Any) -> str:
        if isinstance(value, bool) or value is None:
            return repr(value)
        if isinstance(value, (int, float)):
            return "number"
        return type(value).__name__

    return [v for v in WRONG_VALUES if kind(v) != kind(original)]


# -- random requests ----------------------------------------------------------------------------

printable = st.characters(min_codepoint=32, max_codepoint=126)
segment = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=", max_size=60
)
token_like = st.one_of(
    st.builds(lambda a, b, c: f"{a}.{b}.{c}", segment, segment, segment),
    st.builds(lambda t: f"Bearer {t}", segment),
    st.text(alphabet=printable, max_size=120),
    st.just(""),
    st.just(jwt.encode({"iat": 0}, key=None, algorithm="none")),
    st.builds(lambda s: jwt.encode({"sub": "x"}, "w" * 64 + s, algorithm="HS256"), segment),
)
header_name = st.sampled_from(
    [HEADER, HEADER.lower(), "Authorization", "Content-Type", "Content-Encoding", "Accept"]
) | st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z")
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=15), children, max_size=5)
    ),
    max_leaves=30,
)
bodies = st.one_of(
    st.binary(max_size=3000),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from(FIXTURES).map(lambda name: json.dumps(fixture(name)).encode()),
)


@FUZZ
@given(
    headers=st.dictionaries(header_name, token_like | st.text(alphabet=printable, max_size=80)),
    body=bodies,
    content_length=st.none() | st.sampled_from(["0", "1", "-1", "abc", "99999999999", "2049"]),
)
def test_random_requests_are_refused_without_reaching_a_handler(
    headers: dict[str, str], body: bytes, content_length: str | None
) -> None:
    endpoint = _endpoint()
    status, calls = endpoint.post(body, headers, content_length)
    assert calls == 0
    assert 400 <= status < 500


# -- tokens -------------------------------------------------------------------------------------


def mutate_token(token: str, data: st.DataObject) -> str:
    how = data.draw(
        st.sampled_from(
            ["flip", "truncate", "append", "drop_part", "swap_part", "resign", "claims"]
        )
    )
    header, payload, signature = token.split(".")
    if how == "flip":
        index = data.draw(st.integers(0, len(token) - 1))
        char = data.draw(st.sampled_from("AaZz09-_.= +/"))
        return token[:index] + char + token[index + 1 :]
    if how == "truncate":
        return token[: data.draw(st.integers(0, len(token) - 1))]
    if how == "append":
        return token + data.draw(st.text(alphabet=printable, min_size=1, max_size=10))
    if how == "drop_part":
        parts = [header, payload, signature]
        del parts[data.draw(st.integers(0, 2))]
        return ".".join(parts)
    if how == "swap_part":
        other = jwt.encode({"iat": 0, "exp": 2**40}, key=None, algorithm="none").split(".")
        parts = [header, payload, signature]
        index = data.draw(st.integers(0, 2))
        parts[index] = other[index] or "x"
        return ".".join(parts)
    if how == "resign":
        # Long enough for every HS algorithm: PyJWT warns (an error here) on short keys.
        secret = data.draw(st.sampled_from([SECRET * 2, SECRET.upper() * 2]))
        algorithm = data.draw(st.sampled_from(["HS256", "HS384", "HS512"]))
        return jwt.encode({"iat": 1}, secret, algorithm=algorithm)
    claims = data.draw(
        st.sampled_from(
            [
                {"exp": 1},
                {"nbf": 2**40},
                {"iat": "yesterday"},
                {"exp": "never"},
                {"exp": None, "iat": None},
                {"aud": "someone"},
                {"exp": 2**70},
            ]
        )
    )
    return make_token(SECRET, **claims)


@FUZZ
@given(name=st.sampled_from(FIXTURES), data=st.data())
def test_mutated_tokens_never_reach_a_handler(name: str, data: st.DataObject) -> None:
    endpoint = _endpoint()
    value = mutate_token(make_token(SECRET), data)
    if data.draw(st.booleans()):
        value = data.draw(st.sampled_from(["Bearer ", "bearer ", " ", ""])) + value
    status, calls = endpoint.post(json.dumps(fresh(name)).encode(), {HEADER: value})
    if token_is_valid(value):
        assert status == 200
    else:
        assert status == 401
        assert calls == 0


# -- mutated valid deliveries -------------------------------------------------------------------

HUGE = ("1e400", "-1e400", "1e-400", "1" + "0" * 400, "9" * 5000, "-" + "9" * 30, "1.5e308")


@FUZZ
@given(name=st.sampled_from(FIXTURES), data=st.data())
def test_mutated_signed_deliveries_never_fail_the_server(name: str, data: st.DataObject) -> None:
    endpoint = _endpoint()
    body = fresh(name)
    raw = json.dumps(body).encode()
    how = data.draw(st.sampled_from(["flip", "truncate", "huge", "deep", "wrong_type", "many"]))
    every_path = list(paths(body))
    if how == "flip":
        index = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:index] + bytes([raw[index] ^ data.draw(st.integers(1, 255))]) + raw[index + 1 :]
    elif how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "huge":
        raw = splice(body, data.draw(st.sampled_from(every_path)), data.draw(st.sampled_from(HUGE)))
    elif how == "deep":
        depth = data.draw(st.sampled_from([10, 62, 63, 64, 65, 200, 5000, 200_000]))
        opener, closer = data.draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        raw = splice(body, data.draw(st.sampled_from(every_path)), opener * depth + closer * depth)
    elif how == "wrong_type":
        path = data.draw(st.sampled_from(every_path))
        original: Any = body
        for part in path:
            original = original[part]
        put(body, path, data.draw(st.sampled_from(wrong_values(original))))
        raw = json.dumps(body).encode()
    else:  # the same delivery many times, with new tokens: duplicates, never a second run
        status, calls = endpoint.post(raw, {HEADER: make_token(SECRET)})
        assert (status, calls) == (200, 1)
        for _ in range(data.draw(st.integers(1, 3))):
            assert endpoint.post(raw, {HEADER: make_token(SECRET)}) == (200, 0)
        return
    status, calls = endpoint.post(raw, {HEADER: make_token(SECRET)})
    assert status in (200, 400, 413, 422)
    assert calls == (1 if status == 200 else 0)


@pytest.mark.parametrize("name", FIXTURES)
def test_wrong_types_in_every_field_of_every_fixture(name: str) -> None:
    """Systematic sweep: each field replaced by each value of another JSON type."""
    endpoint = Endpoint()
    statuses: set[int] = set()
    for path in paths(fixture(name)):
        original: Any = fixture(name)
        for part in path:
            original = original[part]
        for wrong in wrong_values(original):
            body = fresh(name)
            put(body, path, wrong)
            status, calls = endpoint.post(json.dumps(body).encode(), {HEADER: make_token(SECRET)})
            assert status in (200, 400, 422), (path, wrong)
            assert calls == (1 if status == 200 else 0)
            statuses.add(status)
    assert 200 in statuses  # some fields are free-form...
    assert statuses - {200}  # ...and most are checked


# -- found by the fuzzing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [("event_id",), ("event_type",), ("data", "id"), ("data", "status")]
)
def test_lone_surrogate_in_an_identifier_is_answered_not_a_500(path: tuple[str, ...]) -> None:
    """``"\\ud800"`` is valid JSON but not encodable as UTF-8: the log must not crash on it."""
    endpoint = Endpoint()
    body = fresh("benefit_verification_status_change_failed")
    raw = splice(body, path, '"x\\ud800y"')
    status, _ = endpoint.post(raw, {HEADER: make_token(SECRET)})
    assert status in (200, 400, 422)


def test_uncatalogued_event_types_do_not_grow_the_signal_namespace() -> None:
    """Each new vendor name must not leave a signal behind (memory grows with every name)."""
    endpoint = Endpoint()
    before = set(_signals)
    for _ in range(20):
        body = fresh("prior_authorization_message")
        body["event_type"] = "prior_authorization.fuzz_" + secrets.token_hex(6)
        status, calls = endpoint.post(json.dumps(body).encode(), {HEADER: make_token(SECRET)})
        assert (status, calls) == (200, 1)
    assert set(_signals) == before


def test_an_event_type_of_star_reaches_the_catch_all_handlers_once() -> None:
    endpoint = Endpoint()
    body = fresh("prior_authorization_message")
    body["event_type"] = "*"
    status, calls = endpoint.post(json.dumps(body).encode(), {HEADER: make_token(SECRET)})
    assert (status, calls) == (200, 1)
