"""The verifier's fast path: it accepts only what PyJWT accepts, and it is the path used.

The reference is the PyJWT path (``_check_signature`` + ``_check_claims``), which gives every
refusal its reason. Tokens are built by hand (base64url + HMAC) so the shapes PyJWT would never
write (padding, non-canonical encodings, odd header parameters, claims of any JSON type) are
covered; hypothesis explores their combinations.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
from conftest import SECRET
from flask import Flask
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from flask_devhealth_webhooks.config import Settings, load_settings
from flask_devhealth_webhooks.exceptions import TokenError
from flask_devhealth_webhooks.testing import make_token
from flask_devhealth_webhooks.verify import Verifier, _check_claims, _check_signature

OLD = "old-secret-0123456789abcdefghijklmnopqrstuvwxyz"
WRONG = "wrong-secret-0123456789abcdefghijklmnopqrstuvwx"
HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
EXAMPLES = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_segments(head: str, body: str, key: str, alg: str = "HS256") -> str:
    digest = HASHES.get(alg, hashlib.sha256)
    mac = hmac.new(key.encode(), f"{head}.{body}".encode(), digest).digest()
    return f"{head}.{body}.{b64(mac)}"


def sign(claims: Any, key: str = SECRET, header: Any = None, alg: str = "HS256") -> str:
    head = b64(json.dumps({"alg": alg, "typ": "JWT"} if header is None else header).encode())
    return sign_segments(head, b64(json.dumps(claims).encode()), key, alg)


def settings_for(**config: Any) -> Settings:
    """Settings as an app with these ``DEVHEALTH_WEBHOOKS_*`` keys would read them."""
    app = Flask("fast_path")
    app.config["DEVHEALTH_WEBHOOKS_SECRET"] = [SECRET, OLD]
    app.config["DEVHEALTH_WEBHOOKS_ALGORITHMS"] = ["HS256", "HS512"]
    for key, value in config.items():
        app.config[f"DEVHEALTH_WEBHOOKS_{key}"] = value
    return load_settings(app)


def reference(token: str, config: Settings) -> tuple[dict[str, Any], int] | None:
    """What PyJWT (and our MAX_AGE check) says: the claims and slot, or None when refused."""
    verifier = Verifier(config)
    try:
        slot = _check_signature(token, verifier.secrets, verifier.algorithms)
        return _check_claims(token, config), slot
    except TokenError:
        return None


def agrees(token: str, config: Settings) -> tuple[dict[str, Any], int] | None:
    """The fast path's answer, checked against PyJWT's whenever the fast path accepts."""
    fast = Verifier(config).fast_verify(token)
    if fast is not None:
        assert reference(token, config) == fast, token
    return fast


# -- the fast path is the one that runs --------------------------------------------------------

CONFIGS = {
    "defaults": settings_for(),
    "max_age": settings_for(MAX_AGE=600),
    "audience_issuer": settings_for(AUDIENCE="acme", ISSUER="develop-health"),
    "required": settings_for(REQUIRED_CLAIMS=["sub"]),
    "body_hash": settings_for(BODY_HASH_CLAIM="body_sha256"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("key", [SECRET, OLD], ids=["current", "rotated"])
def test_platform_shaped_tokens_take_the_fast_path(name: str, key: str) -> None:
    claims = {"sub": "develop-health", "aud": "acme", "iss": "develop-health", "body_sha256": "0"}
    token = make_token(key, **claims)
    fast = agrees(token, CONFIGS[name])
    assert fast is not None
    assert fast[1] == (0 if key == SECRET else 1)
    assert fast[0]["sub"] == "develop-health"


@pytest.mark.parametrize("key", [SECRET, OLD], ids=["current", "rotated"])
def test_every_allowed_algorithm_takes_the_fast_path(key: str) -> None:
    """Each allowed algorithm has its own keyed HMACs, one per secret, in secret order."""
    for alg in ("HS256", "HS512"):
        fast = agrees(sign({"exp": now() + 300}, key, alg=alg), settings_for())
        assert fast is not None, alg
        assert fast[1] == (0 if key == SECRET else 1)


def test_the_keyed_hmacs_are_not_changed_by_use() -> None:
    """Each token is signed-checked on a copy: the same token verifies again, others still do."""
    verifier = Verifier(settings_for())
    token = sign({"exp": now() + 300})
    for _ in range(3):
        assert verifier.fast_verify(token) is not None
    assert verifier.fast_verify(sign({"exp": now() + 300, "n": 1}, OLD)) is not None
    assert verifier.fast_verify(sign({"exp": now() + 300}, WRONG)) is None


def test_threads_share_one_verifier() -> None:
    """gthread workers verify on one Verifier at once: each token still gets its own slot."""
    verifier = Verifier(settings_for())
    tokens = [(sign({"exp": now() + 300, "n": i}, (SECRET, OLD)[i % 2]), i % 2) for i in range(400)]

    def check(chunk: list[tuple[str, int]]) -> list[bool]:
        return [
            (found := verifier.fast_verify(token)) is not None and found[1] == slot
            for token, slot in chunk
        ]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [ok for part in pool.map(check, [tokens[i::8] for i in range(8)]) for ok in part]
    assert len(results) == 400
    assert all(results)


def test_the_view_uses_the_fast_path(make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An accepted platform token never reaches PyJWT's decode."""
    import jwt

    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("PyJWT decode ran for a plain token")

    client = make_app().test_client()
    monkeypatch.setattr(jwt.PyJWS, "decode_complete", fail)
    monkeypatch.setattr(jwt.PyJWT, "decode_complete", fail)
    body = json.dumps({"event_type": "x.y", "title": "t", "data": {"id": "1", "object": "o"}})
    response = client.post(
        "/webhooks/devhealth", data=body, headers={"X-Webhook-Secret": make_token(SECRET)}
    )
    assert response.status_code == 200, response.get_json()


# -- what it leaves to PyJWT -----------------------------------------------------------------------


def now() -> int:
    return int(time.time())


def padded(token: str) -> str:
    head, body, signature = token.split(".")
    return f"{head}.{body}.{signature}{'=' * (-len(signature) % 4)}"


def non_canonical_signature(token: str) -> str:
    """The same signature bytes with unused low bits set in its last character."""
    head, body, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    return f"{head}.{body}.{signature[:-1]}{alphabet[last | 1]}"


@pytest.mark.parametrize(
    ("token", "accepted_by_pyjwt"),
    [
        (sign({"exp": now() + 300}, header={"alg": "HS256", "kid": 7}), False),
        (sign({"exp": now() + 300}, header={"alg": "HS256", "crit": ["b64"], "b64": True}), True),
        (sign({"exp": now() + 300}, header={"alg": "HS256", "x5u": "https://k"}), True),
        (sign({"exp": now() + 300}, header={"alg": "none"}, alg="none"), False),
        (sign({"exp": now() + 300}, alg="HS384"), False),  # not in the allow-list
        (sign({"exp": True, "iat": now()}), False),
        (sign({"exp": str(now() + 300)}), True),  # PyJWT takes numeric strings
        (sign({"iat": True}), True),  # ... and booleans, as integers
        (sign([1, 2]), False),
        (sign({"exp": now() + 300}, WRONG), False),
        (padded(sign({"exp": now() + 300})), True),
        (sign({"exp": now() + 300}, header={"alg": ["HS256"]}), False),
        (sign({"exp": now() + 300}, header={"alg": {"HS256": 1}}), False),
    ],
    ids=[
        "int-kid",
        "crit",
        "other-header-param",
        "alg-none",
        "alg-not-allowed",
        "bool-exp",
        "string-exp",
        "bool-iat",
        "array-claims",
        "wrong-secret",
        "padded-signature",
        "list-alg",
        "object-alg",
    ],
)
def test_unusual_tokens_are_left_to_pyjwt(token: str, accepted_by_pyjwt: bool) -> None:
    config = settings_for()
    assert Verifier(config).fast_verify(token) is None
    assert (reference(token, config) is not None) is accepted_by_pyjwt


@pytest.mark.parametrize("claims", [{"iss": 5}, {"aud": 1}])
def test_claims_pyjwt_does_not_check_here_are_accepted_by_both(claims: dict[str, Any]) -> None:
    """No ISSUER or AUDIENCE is configured, so neither claim is looked at."""
    assert agrees(sign(claims), settings_for()) == (claims, 0)


@pytest.mark.parametrize(
    "claims",
    [{"sub": 12}, {"sub": None}, {"jti": ["a"]}, {"jti": {"a": 1}}, {"sub": "a", "jti": 7}],
)
def test_claims_that_must_be_strings_are_refused_like_jwt_decode_refuses_them(
    claims: dict[str, Any],
) -> None:
    """``jwt.decode`` refuses a non-string ``sub`` or ``jti``; so does the extension, by name."""
    token = sign({"exp": now() + 300, **claims})
    config = settings_for()
    assert Verifier(config).fast_verify(token) is None
    with pytest.raises(TokenError, match="claim must be a string") as refused:
        _check_claims(token, config)
    assert refused.value.code == "invalid_claims"
    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(token, SECRET, algorithms=["HS256"])


def test_string_sub_and_jti_keep_the_fast_path() -> None:
    claims = {"exp": now() + 300, "sub": "develop-health", "jti": "j-1"}
    assert agrees(sign(claims), settings_for()) == (claims, 0)


def test_a_non_canonical_signature_is_refused_like_pyjwt_refuses_it() -> None:
    token = sign({"exp": now() + 300})
    mutated = non_canonical_signature(token)
    if mutated == token:  # the last character already had its low bit set
        pytest.skip("this signature's encoding has no unused bit to set")
    config = settings_for()
    assert Verifier(config).fast_verify(mutated) is None
    assert reference(mutated, config) is None


def test_the_header_cache_is_bounded_and_holds_only_signed_headers() -> None:
    verifier = Verifier(settings_for())
    for index in range(50):  # unsigned junk must not take the places of the real header
        assert verifier.fast_verify(sign({}, WRONG, {"alg": "HS256", "kid": f"j{index}"})) is None
    assert verifier._headers == {}
    for index in range(50):
        token = sign({}, header={"alg": "HS256", "kid": f"k{index}"})
        assert verifier.fast_verify(token) is not None
    assert len(verifier._headers) == 8


# -- and whatever the token, it never accepts what PyJWT refuses ----------------------------------

TIMES = st.sampled_from([-100_000, -45, -20, 0, 20, 45, 100_000]).map(lambda d: now() + d)
JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.lists(st.text(max_size=3), max_size=2),
)
CLAIM = st.one_of(TIMES, TIMES.map(float), TIMES.map(str), JSON_VALUES)
#: Values the configurations above accept, so that generated tokens are often valid too.
LIKELY = {
    "iat": TIMES,
    "nbf": TIMES,
    "exp": TIMES,
    "sub": st.just("develop-health"),
    "jti": st.text(max_size=3),
    "iss": st.sampled_from(["develop-health", "someone-else"]),
    "aud": st.sampled_from(["acme", ["acme", "b"], ["acme", 1], ["b"], "b", []]),
    "body_sha256": st.just("0"),
}


@st.composite
def claim_sets(draw: st.DrawFn) -> dict[str, Any]:
    """Claims every configuration above accepts, with up to four keys dropped or changed."""
    claims: dict[str, Any] = {
        "iat": now(),
        "exp": now() + 300,
        "sub": "develop-health",
        "iss": "develop-health",
        "aud": "acme",
        "body_sha256": "0",
    }
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from([*LIKELY, "x"]))
        change = draw(st.sampled_from(["drop", "likely", "likely", "any"]))
        if change == "drop":
            claims.pop(key, None)
        elif change == "likely" and key in LIKELY:
            claims[key] = draw(LIKELY[key])
        else:
            claims[key] = draw(CLAIM)
    return claims


CLAIMS = claim_sets()
ANY_HEADER = st.fixed_dictionaries(
    {"alg": st.sampled_from(["HS256", "HS512", "HS384", "none", "RS256", 5])},
    optional={
        "typ": st.sampled_from(["JWT", "jwt", 1]),
        "kid": st.one_of(st.text(max_size=3), st.integers()),
        "crit": st.just(["b64"]),
        "cty": st.just("JWT"),
    },
)
HEADERS = st.one_of(st.just({"alg": "HS256", "typ": "JWT"}), st.just({"alg": "HS512"}), ANY_HEADER)


def set_unused_bit(segment: str) -> str:
    """The same bytes in a non-canonical encoding (unused low bit set), where one exists."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    if len(segment) % 4 in (0, 1):
        return segment
    last = alphabet.index(segment[-1])
    return segment[:-1] + alphabet[last | 1]


@st.composite
def tokens(draw: st.DrawFn) -> str:
    """Signed tokens of any header and claims, mis-encoded before or after signing."""
    header = draw(HEADERS)
    alg = header["alg"] if header["alg"] in HASHES else "HS256"
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(draw(st.one_of(CLAIMS, CLAIMS, JSON_VALUES))).encode())
    before = draw(st.sampled_from(["none"] * 6 + ["head-bit", "body-bit"]))
    if before == "head-bit":
        head = set_unused_bit(head)
    elif before == "body-bit":
        body = set_unused_bit(body)
    token = sign_segments(head, body, draw(st.sampled_from([SECRET, SECRET, OLD, WRONG])), alg)
    mutation = draw(st.sampled_from(["none"] * 10 + ["pad", "bit", "flip", "cut", "dot"]))
    if mutation == "pad":
        token = padded(token)
    elif mutation == "bit":
        token = non_canonical_signature(token)
    elif mutation == "flip":
        index = draw(st.integers(0, len(token) - 1))
        token = token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]
    elif mutation == "cut":
        token = token[: draw(st.integers(0, len(token) - 1))]
    elif mutation == "dot":
        token += "."
    return token


@pytest.mark.parametrize("name", list(CONFIGS))
@EXAMPLES
@given(token=tokens())
def test_the_fast_path_never_accepts_what_pyjwt_refuses(name: str, token: str) -> None:
    agrees(token, CONFIGS[name])


@EXAMPLES
@given(claims=CLAIMS)
def test_well_formed_tokens_agree_with_pyjwt_on_their_claims(claims: dict[str, Any]) -> None:
    """Only the claims vary: the fast path must not lose sight of any rule PyJWT applies."""
    for config in CONFIGS.values():
        agrees(sign(claims), config)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_generated_tokens_reach_both_answers(name: str) -> None:
    """The properties above are not vacuous: the fast path accepts some tokens, refuses others."""
    config = CONFIGS[name]
    quiet = settings(database=None, derandomize=True, max_examples=2000)

    def fast(token: str) -> bool:
        return Verifier(config).fast_verify(token) is not None

    assert fast(find(tokens(), fast, settings=quiet))
    assert not fast(find(tokens(), lambda t: not fast(t), settings=quiet))
