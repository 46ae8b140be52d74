"""The JWT in ``X-Webhook-Secret``: signature, algorithm allow-list, time claims, claim checks.

Tokens are signed by hand here (base64url + HMAC), independently of PyJWT and the testing kit,
so a bug in either cannot hide a bug in verification.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import SECRET, fixture
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from flask_devhealth_webhooks import Event, TokenError, get_state, on
from flask_devhealth_webhooks.verify import extract_token, verify_token

URL = "/webhooks/devhealth"
HEADER = "X-Webhook-Secret"
HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(
    claims: dict[str, Any],
    key: str = SECRET,
    alg: str = "HS256",
    *,
    header: dict[str, Any] | None = None,
) -> str:
    """A compact JWS over ``claims``; ``alg="none"`` gives an unsigned token."""
    head = {"alg": alg, "typ": "JWT", **(header or {})}
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b""
    if alg in HASHES:
        signature = hmac.new(key.encode(), signing_input.encode(), HASHES[alg]).digest()
    return f"{signing_input}.{b64(signature)}"


def now() -> int:
    return int(time.time())


def fresh(**claims: Any) -> dict[str, Any]:
    """Claims as the platform would send them: issued now, expiring in five minutes."""
    return {"iat": now(), "exp": now() + 300, **claims}


def raw_body() -> bytes:
    return json.dumps(fixture("benefit_verification_status_change_failed")).encode()


def post(client: FlaskClient, token: str | None, body: bytes | None = None) -> TestResponse:
    headers = {} if token is None else {HEADER: token}
    response = client.post(URL, data=raw_body() if body is None else body, headers=headers)
    assert response.is_json
    return response


def error(response: TestResponse) -> str | None:
    if response.status_code == 200:
        return None
    assert response.status_code == 401, response.get_json()
    code: str = response.get_json()["error"]
    return code


def collect() -> list[Event]:
    seen: list[Event] = []

    @on("*")
    def handler(event: Event) -> None:
        seen.append(event)

    return seen


# -- signature and algorithm ---------------------------------------------------------------


def test_valid_token_is_accepted_and_claims_are_handed_over(client: FlaskClient) -> None:
    seen = collect()
    claims = fresh(sub="develop-health", custom={"nested": [1, 2]})
    response = post(client, sign(claims))
    assert response.status_code == 200
    assert seen[0].claims == claims


def test_token_without_any_time_claim_is_accepted(client: FlaskClient) -> None:
    """The sender's claims are undocumented: exp/nbf/iat are checked only when present."""
    assert error(post(client, sign({}))) is None


def test_wrong_secret(client: FlaskClient) -> None:
    seen = collect()
    assert error(post(client, sign(fresh(), "wrong-secret-0123456789abcdefghijklmnop"))) == (
        "invalid_signature"
    )
    assert seen == []


def test_tampered_claims(client: FlaskClient) -> None:
    head, _, signature = sign(fresh()).split(".")
    forged = b64(json.dumps(fresh(sub="admin")).encode())
    assert error(post(client, f"{head}.{forged}.{signature}")) == "invalid_signature"


def test_stripped_signature(client: FlaskClient) -> None:
    head, claims, _ = sign(fresh()).split(".")
    assert error(post(client, f"{head}.{claims}.")) == "invalid_signature"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(client: FlaskClient, alg: str) -> None:
    seen = collect()
    assert error(post(client, sign(fresh(), alg=alg))) == "invalid_signature"
    assert seen == []


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_algorithm_not_allowed_is_refused_even_with_the_right_secret(
    client: FlaskClient, alg: str
) -> None:
    assert error(post(client, sign(fresh(), alg=alg))) == "invalid_signature"


def test_algorithm_is_never_read_from_the_token(make_app: Callable[..., Flask]) -> None:
    client = make_app(ALGORITHMS=["HS512"]).test_client()
    assert error(post(client, sign(fresh(), alg="HS256"))) == "invalid_signature"
    assert error(post(client, sign(fresh(), alg="HS512"))) is None


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "EdDSA", "HS1", "XYZ"])
def test_other_algorithms_in_the_header_are_refused(client: FlaskClient, alg: str) -> None:
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    claims = b64(json.dumps(fresh()).encode())
    signature = b64(hmac.new(SECRET.encode(), f"{head}.{claims}".encode(), "sha256").digest())
    assert error(post(client, f"{head}.{claims}.{signature}")) == "invalid_signature"


def test_several_allowed_algorithms(make_app: Callable[..., Flask]) -> None:
    client = make_app(ALGORITHMS=["HS256", "HS384", "HS512"]).test_client()
    for index, alg in enumerate(["HS256", "HS384", "HS512"]):
        body = json.dumps({**json.loads(raw_body()), "event_id": f"wh_evt_{index}"}).encode()
        assert error(post(client, sign(fresh(), alg=alg), body)) is None


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b",
        "a.b.c.d",
        "!!!.@@@.###",
        b64(b"not json") + "." + b64(b"{}") + ".",
        b64(b'["a list"]') + "." + b64(b"{}") + ".",
    ],
)
def test_malformed_token(client: FlaskClient, token: str) -> None:
    assert error(post(client, token)) == "malformed_token"


def test_signed_non_json_claims_are_refused(client: FlaskClient) -> None:
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(b"definitely not json")
    signature = b64(hmac.new(SECRET.encode(), f"{head}.{claims}".encode(), "sha256").digest())
    response = post(client, f"{head}.{claims}.{signature}")
    assert response.status_code == 401
    assert response.get_json()["error"] in {"malformed_token", "invalid_claims"}


@pytest.mark.parametrize("value", [None, "", "   ", "\t \t", "Bearer", "Bearer ", "bearer   "])
def test_missing_token(client: FlaskClient, value: str | None) -> None:
    assert error(post(client, value)) == "missing_token"


# -- the body-hash claim -----------------------------------------------------------------------


def test_body_hash_claim_matches(make_app: Callable[..., Flask]) -> None:
    client = make_app(BODY_HASH_CLAIM="body_sha256").test_client()
    digest = hashlib.sha256(raw_body()).hexdigest()
    assert error(post(client, sign(fresh(body_sha256=digest)))) is None


def test_body_hash_claim_in_upper_case_hex_matches(make_app: Callable[..., Flask]) -> None:
    client = make_app(BODY_HASH_CLAIM="body_sha256").test_client()
    digest = hashlib.sha256(raw_body()).hexdigest().upper()
    assert error(post(client, sign(fresh(body_sha256=digest)))) is None


def test_body_hash_mismatch(make_app: Callable[..., Flask]) -> None:
    client = make_app(BODY_HASH_CLAIM="body_sha256").test_client()
    seen = collect()
    other = hashlib.sha256(raw_body() + b" ").hexdigest()
    assert error(post(client, sign(fresh(body_sha256=other)))) == "invalid_signature"
    assert seen == []


@pytest.mark.parametrize("value", [12345, None, ["abc"], {"sha": "x"}, ""])
def test_body_hash_claim_of_the_wrong_type(make_app: Callable[..., Flask], value: Any) -> None:
    client = make_app(BODY_HASH_CLAIM="body_sha256").test_client()
    assert error(post(client, sign(fresh(body_sha256=value)))) in {
        "invalid_signature",
        "invalid_claims",
    }


@pytest.mark.parametrize("value", ["é" * 64, "\ud800"])
def test_body_hash_claim_with_non_ascii_characters(
    make_app: Callable[..., Flask], value: str
) -> None:
    """Compared as bytes: a non-ASCII claim is a mismatch (401), never a 500."""
    client = make_app(BODY_HASH_CLAIM="body_sha256").test_client()
    assert error(post(client, sign(fresh(body_sha256=value)))) == "invalid_signature"


def test_body_hash_claim_missing(make_app: Callable[..., Flask]) -> None:
    client = make_app(BODY_HASH_CLAIM="body_sha256").test_client()
    assert error(post(client, sign(fresh()))) == "invalid_claims"


# -- exp / nbf / iat and the leeway --------------------------------------------------------


def test_expired_beyond_leeway(client: FlaskClient) -> None:
    seen = collect()
    assert error(post(client, sign({"exp": now() - 60}))) == "token_expired"
    assert seen == []


def test_expired_within_leeway_is_accepted(client: FlaskClient) -> None:
    assert error(post(client, sign({"exp": now() - 10}))) is None


def test_leeway_zero(make_app: Callable[..., Flask]) -> None:
    client = make_app(LEEWAY=0).test_client()
    assert error(post(client, sign({"exp": now() - 10}))) == "token_expired"


def test_larger_leeway(make_app: Callable[..., Flask]) -> None:
    client = make_app(LEEWAY=600).test_client()
    assert error(post(client, sign({"exp": now() - 300, "nbf": now() + 300}))) is None


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid_beyond_leeway(client: FlaskClient, claim: str) -> None:
    seen = collect()
    assert error(post(client, sign({claim: now() + 120}))) == "token_not_yet_valid"
    assert seen == []


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid_within_leeway_is_accepted(client: FlaskClient, claim: str) -> None:
    assert error(post(client, sign({claim: now() + 10}))) is None


def test_old_iat_without_max_age_is_accepted(client: FlaskClient) -> None:
    assert error(post(client, sign({"iat": now() - 10 * 365 * 86400}))) is None


def test_iat_older_than_max_age(make_app: Callable[..., Flask]) -> None:
    client = make_app(MAX_AGE=60).test_client()
    assert error(post(client, sign({"iat": now() - 60 - 30 - 15, "exp": now() + 300}))) == (
        "token_expired"
    )


def test_iat_within_max_age_plus_leeway(make_app: Callable[..., Flask]) -> None:
    client = make_app(MAX_AGE=60).test_client()
    assert error(post(client, sign({"iat": now() - 60 - 15, "exp": now() + 300}))) is None


@pytest.mark.parametrize(
    ("iat", "code"),
    [(-(10**400), "token_expired"), (10**400, "token_not_yet_valid")],
    ids=["huge-past", "huge-future"],
)
def test_max_age_with_an_iat_too_large_for_a_float(
    make_app: Callable[..., Flask], iat: int, code: str
) -> None:
    client = make_app(MAX_AGE=60).test_client()
    assert error(post(client, sign({"iat": iat}))) == code


def test_max_age_requires_iat(make_app: Callable[..., Flask]) -> None:
    client = make_app(MAX_AGE=60).test_client()
    assert error(post(client, sign({"exp": now() + 300}))) == "invalid_claims"


@pytest.mark.parametrize(
    "iat",
    [
        pytest.param("soon", id="word"),
        pytest.param(str(int(time.time())), id="numeric-string"),
        pytest.param([1], id="list"),
        pytest.param({"t": 1}, id="object"),
    ],
)
def test_max_age_with_non_numeric_iat(make_app: Callable[..., Flask], iat: Any) -> None:
    """A signed token whose iat is not a number is refused in JSON, never a 500."""
    client = make_app(MAX_AGE=60).test_client()
    assert error(post(client, sign({"iat": iat}))) == "invalid_claims"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_non_numeric_time_claim(client: FlaskClient, claim: str) -> None:
    response = post(client, sign({claim: "tomorrow"}))
    assert response.status_code == 401
    assert response.get_json()["error"] in {"invalid_claims", "malformed_token"}


# -- required claims, audience, issuer ---------------------------------------------------------


def test_required_claims(make_app: Callable[..., Flask]) -> None:
    client = make_app(REQUIRED_CLAIMS=["sub", "jti"]).test_client()
    assert error(post(client, sign(fresh(sub="dh")))) == "invalid_claims"
    assert error(post(client, sign(fresh(jti="j1")))) == "invalid_claims"
    assert error(post(client, sign(fresh(sub="dh", jti="j1")))) is None


def test_required_exp(make_app: Callable[..., Flask]) -> None:
    client = make_app(REQUIRED_CLAIMS=["exp"]).test_client()
    assert error(post(client, sign({"iat": now()}))) == "invalid_claims"


def test_audience(make_app: Callable[..., Flask]) -> None:
    client = make_app(AUDIENCE="my-clinic").test_client()
    assert error(post(client, sign(fresh(aud="someone-else")))) == "invalid_claims"
    assert error(post(client, sign(fresh()))) == "invalid_claims"
    assert error(post(client, sign(fresh(aud="my-clinic")))) is None


def test_audience_in_a_list(make_app: Callable[..., Flask]) -> None:
    client = make_app(AUDIENCE="my-clinic").test_client()
    assert error(post(client, sign(fresh(aud=["other", "my-clinic"])))) is None


def test_issuer(make_app: Callable[..., Flask]) -> None:
    client = make_app(ISSUER="https://develophealth.example").test_client()
    assert error(post(client, sign(fresh(iss="https://evil.example")))) == "invalid_claims"
    assert error(post(client, sign(fresh()))) == "invalid_claims"
    assert error(post(client, sign(fresh(iss="https://develophealth.example")))) is None


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "whatever-the-sender-puts"},
        {"aud": ["a", "b"]},
        {"iss": "https://sender.example"},
        {"aud": "x", "iss": "y"},
    ],
)
def test_audience_and_issuer_not_checked_when_unset(
    client: FlaskClient, claims: dict[str, Any]
) -> None:
    assert error(post(client, sign(fresh(**claims)))) is None


def test_claim_error_messages_name_the_claim_not_the_value(
    make_app: Callable[..., Flask],
) -> None:
    client = make_app(AUDIENCE="my-clinic").test_client()
    token = sign(fresh(aud="Alex-Sample-aud-value"))
    body = post(client, token).get_data(as_text=True)
    assert "Alex-Sample-aud-value" not in body
    assert token not in body
    assert SECRET not in body


# -- the pure functions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("abc.def.ghi", "abc.def.ghi"),
        ("  abc.def.ghi  ", "abc.def.ghi"),
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc.def.ghi", "abc.def.ghi"),
        ("BEARER   abc.def.ghi ", "abc.def.ghi"),
        ("Bearer\tabc.def.ghi", "abc.def.ghi"),
    ],
)
def test_extract_token(value: str, token: str) -> None:
    assert extract_token(value) == token


@pytest.mark.parametrize("value", [None, "", "  ", "Bearer", "Bearer ", "bearer  "])
def test_extract_token_missing(value: str | None) -> None:
    with pytest.raises(TokenError) as info:
        extract_token(value)
    assert info.value.code == "missing_token"
    assert info.value.status_code == 401


def test_verify_token_is_usable_without_a_request(app: Flask) -> None:
    settings = get_state(app).settings
    claims = fresh(sub="x")
    assert verify_token(sign(claims), b"{}", settings) == claims
    with pytest.raises(TokenError) as info:
        verify_token(sign(claims, "nope-0123456789abcdefghijklmnopqrstuvwxyz"), b"{}", settings)
    assert info.value.code == "invalid_signature"
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("token", ["\ud800.a.b", "é.a.b", "a.b.c\u00a0", "eyJ\u2028.e30.x"])
def test_verify_token_refuses_a_token_that_is_not_ascii(app: Flask, token: str) -> None:
    """Only the API can pass one (WSGI headers arrive as Latin-1): it must not escape as a
    UnicodeEncodeError from PyJWT."""
    with pytest.raises(TokenError) as info:
        verify_token(token, b"{}", get_state(app).settings)
    assert info.value.code == "malformed_token"


@pytest.mark.parametrize(("name", "value"), [("sub", 123), ("sub", None), ("jti", ["a"])])
def test_a_subject_or_token_id_that_is_not_a_string_is_refused(
    client: FlaskClient, name: str, value: Any
) -> None:
    response = post(client, sign(fresh(**{name: value})))
    assert response.status_code == 401
    assert response.get_json() == {
        "error": "invalid_claims",
        "message": f"The token's {name!r} claim must be a string.",
    }


# -- keys are checked once, at registration -------------------------------------------------


def test_pyjwt_key_checks_run_once_per_secret_not_per_request(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    from jwt.algorithms import HMACAlgorithm

    checked: list[bytes] = []
    original = HMACAlgorithm.prepare_key

    def counting(self: HMACAlgorithm, key: Any) -> bytes:
        checked.append(bytes(key) if isinstance(key, bytes) else key.encode())
        return original(self, key)

    monkeypatch.setattr(HMACAlgorithm, "prepare_key", counting)
    old = "old-0123456789abcdefghijklmnopqrstuvwxyz"
    app = make_app(SECRET=[SECRET, old])
    assert checked == [SECRET.encode(), old.encode()]  # each secret, once, at registration
    client = app.test_client()
    for key in (SECRET, old, SECRET):
        assert error(post(client, sign(fresh(), key))) is None
    assert error(post(client, sign(fresh(), "nope-0123456789abcdefghijklmnopqrstuvwxyz"))) == (
        "invalid_signature"
    )
    assert len(checked) == 2  # no request ran PyJWT's key checks again


@pytest.mark.parametrize(
    "secret",
    [
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
        "-----END PUBLIC KEY-----",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 user@host",
        '{"kty": "oct", "k": "c2VjcmV0LTAxMjM0NTY3ODlhYmNkZWZnaGlqa2xtbm9w"}',
    ],
    ids=["pem", "ssh", "jwk"],
)
def test_a_key_pyjwt_refuses_as_hmac_secret_fails_at_registration(
    make_app: Callable[..., Flask], secret: str
) -> None:
    from flask_devhealth_webhooks import ConfigurationError

    with pytest.raises(ConfigurationError, match="cannot be used as an HMAC secret") as info:
        make_app(SECRET=secret)
    assert secret not in str(info.value)
