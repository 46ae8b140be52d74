"""Verify the ``X-Webhook-Secret`` JWT: pure functions over PyJWT, no Flask globals.

The algorithm allow-list always comes from settings, never from the token. Only PyJWT's token
errors are caught, so a broken key surfaces as a configuration problem rather than a 401.

Speed: PyJWT's general pipeline (segment checks character by character, header extensions, key
preparation, every claim option) costs more than the rest of a delivery's checks together.
``Verifier`` first tries a narrow fast path that accepts only the plain shape the platform
sends (an ``alg``/``typ``/``kid`` header, the canonical unpadded encoding, numeric time claims)
and only when every check PyJWT would make passes; anything else, and every token that is to be
refused, goes through PyJWT, which gives the answer and names the reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
from typing import TYPE_CHECKING, Any

import jwt
from jwt.algorithms import HMACAlgorithm

from .exceptions import ConfigurationError, TokenError

if TYPE_CHECKING:
    from .config import Settings


class _Secret(bytes):
    """A configured secret that already passed PyJWT's HMAC key checks, once, at setup."""


class _HMAC(HMACAlgorithm):
    """PyJWT's HMAC, minus the per-call work a configured secret does not need.

    No short-key warning on every call (registration warns once instead), and no key checks
    for a ``_Secret``: PyJWT parses every key as PEM, SSH, DER, X.509 and JSON on each decode
    to refuse asymmetric keys, which costs more than the HMAC itself. ``Verifier`` runs those
    checks once per secret.
    """

    def check_key_length(self, key: Any) -> str | None:
        return None

    def prepare_key(self, key: Any) -> bytes:
        if type(key) is _Secret:
            return key
        return super().prepare_key(key)


_HASHES = {
    "HS256": HMACAlgorithm.SHA256,
    "HS384": HMACAlgorithm.SHA384,
    "HS512": HMACAlgorithm.SHA512,
}
_jws = jwt.PyJWS(algorithms=[])
for _name, _hash in _HASHES.items():
    _jws.register_algorithm(_name, _HMAC(_hash))
_claims_reader = jwt.PyJWT()

#: Three unpadded base64url segments: the only token shape the fast path looks at.
_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
#: Header parameters the fast path understands; PyJWT handles any other (``crit``, ``b64``...).
_PLAIN_HEADER_KEYS = frozenset({"alg", "typ", "kid"})
#: Claims that must be strings when present, as ``jwt.decode`` requires (PyJWT 2.10 and later).
_STRING_CLAIMS = ("sub", "jti")
#: Distinct header segments remembered per app (the platform sends one); beyond it, re-parse.
_HEADER_CACHE_SIZE = 8


def prepare_secret(secret: bytes) -> bytes:
    """Run PyJWT's HMAC key checks on ``secret`` once; raise ConfigurationError if it fails."""
    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except jwt.InvalidKeyError as exc:
        raise ConfigurationError(
            f"DEVHEALTH_WEBHOOKS_SECRET cannot be used as an HMAC secret: {exc}"
        ) from None
    return _Secret(secret)


class Verifier:
    """Everything verification derives from the settings, built once per app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.secrets = tuple(prepare_secret(secret) for secret in settings.secrets)
        self.algorithms = list(settings.algorithms)
        self._required = tuple(_claim_options(settings)["require"])
        #: Per allowed algorithm, one keyed HMAC per secret, copied for each token: the copy
        #: skips hashing the key and looking the digest up by name (OpenSSL 3 fetches it).
        self._macs = {
            alg: tuple(hmac.new(secret, digestmod=_HASHES[alg]) for secret in self.secrets)
            for alg in self.algorithms
            if alg in _HASHES
        }
        #: Header segments already found plain -> their (allowed) algorithm.
        self._headers: dict[str, str] = {}

    def verify(self, header_value: str | None, body: bytes) -> tuple[dict[str, Any], int]:
        """The verified claims and the index of the secret that verified them.

        Raises ``TokenError`` whose ``code`` names the reason.
        """
        settings = self.settings
        token = extract_token(header_value)
        verified = self.fast_verify(token)
        if verified is not None:
            claims, slot = verified
        else:
            slot = _check_signature(token, self.secrets, self.algorithms)
            claims = _check_claims(token, settings)
        if settings.body_hash_claim is not None:
            expected = body_digest(body)
            sent = claims[settings.body_hash_claim]
            # As bytes: compare_digest refuses str with non-ASCII characters.
            if not isinstance(sent, str) or not hmac.compare_digest(
                sent.lower().encode("utf-8", "surrogatepass"), expected.encode("ascii")
            ):
                raise TokenError("The token's body-hash claim does not match the body received.")
        return claims, slot

    def fast_verify(self, token: str) -> tuple[dict[str, Any], int] | None:
        """Claims and secret slot of a plain token that PyJWT would accept; else ``None``.

        Never refuses: ``None`` sends the token to PyJWT, which accepts it or names the reason.
        """
        match = _COMPACT.fullmatch(token)
        if match is None:
            return None
        head, body, signature = match.groups()
        alg = self._headers.get(head)
        if alg is None:
            alg = self._plain_header(head)
            if alg is None:
                return None
        slot = self._signed_by(f"{head}.{body}".encode("ascii"), signature, alg)
        if slot is None:
            return None
        if head not in self._headers and len(self._headers) < _HEADER_CACHE_SIZE:
            self._headers[head] = alg  # only signed headers: junk cannot fill the cache
        claims = _json_segment(body)
        if type(claims) is not dict or not self._claims_accepted(claims):
            return None
        return claims, slot

    def _signed_by(self, signing_input: bytes, signature: str, alg: str) -> int | None:
        """The slot of the secret whose HMAC is ``signature``, in its canonical encoding."""
        for slot, keyed in enumerate(self._macs[alg]):
            mac = keyed.copy()
            mac.update(signing_input)
            if hmac.compare_digest(_b64encode(mac.digest()), signature):
                return slot
        return None

    def _plain_header(self, segment: str) -> str | None:
        """The ``alg`` of a header of only ``alg``/``typ``/``kid``, when it is an allowed HMAC."""
        header = _json_segment(segment)
        if type(header) is not dict or not header.keys() <= _PLAIN_HEADER_KEYS:
            return None
        alg = header.get("alg")
        if type(alg) is not str or alg not in self._macs:
            return None
        if type(header.get("kid", "")) is not str:
            return None
        return alg

    def _claims_accepted(self, claims: dict[str, Any]) -> bool:
        """True when PyJWT (and ``MAX_AGE``) would accept these claims; False to let it judge."""
        settings = self.settings
        for name in self._required:
            if claims.get(name) is None:
                return False
        for name in _STRING_CLAIMS:
            if name in claims and type(claims[name]) is not str:
                return False
        now = time.time()
        leeway = settings.leeway
        for name in ("iat", "nbf", "exp"):
            if name in claims:
                value = claims[name]
                if type(value) is not int and not (type(value) is float and math.isfinite(value)):
                    return False
                # PyJWT compares the claim truncated to an integer.
                if name == "exp" and int(value) <= now - leeway:
                    return False
                if name != "exp" and int(value) > now + leeway:
                    return False
        # Compared, not subtracted: a huge integer iat cannot be converted to a float.
        if settings.max_age is not None and claims["iat"] < now - settings.max_age - leeway:
            return False
        if settings.issuer is not None and claims.get("iss") != settings.issuer:
            return False
        if settings.audience is not None:
            aud = claims.get("aud")
            if not (
                aud == settings.audience
                or (type(aud) is list and settings.audience in aud and _all_str(aud))
            ):
                return False
        return True


def _all_str(values: list[Any]) -> bool:
    return all(type(value) is str for value in values)


def _json_segment(segment: str) -> Any:
    """The JSON value of a canonical base64url segment; None when it is not one."""
    decoded = _b64decode(segment)
    if decoded is None:
        return None
    try:
        return json.loads(decoded)
    except (ValueError, RecursionError):
        return None


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(segment: str) -> bytes | None:
    """The bytes of a canonical unpadded base64url segment; None for any other encoding."""
    if len(segment) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None
    # Unused low bits set in the last character decode too: PyJWT refuses those encodings.
    return data if _b64encode(data) == segment else None


def extract_token(value: str | None) -> str:
    """Return the bare token from a header value: trimmed, an optional ``Bearer `` removed."""
    token = (value or "").strip()
    if not token.isascii():  # a JWT is base64url and dots; PyJWT would fail to encode this
        raise TokenError("The token is not a well-formed JWT.", code="malformed_token")
    parts = token.split(None, 1)
    if parts and parts[0].lower() == "bearer":
        token = parts[1] if len(parts) > 1 else ""
    if not token:
        raise TokenError("The webhook token header is missing or empty.", code="missing_token")
    return token


def body_digest(body: bytes) -> str:
    """Hex SHA-256 of the raw body, as compared with ``DEVHEALTH_WEBHOOKS_BODY_HASH_CLAIM``."""
    return hashlib.sha256(body).hexdigest()


def verify_token(header_value: str | None, body: bytes, settings: Settings) -> dict[str, Any]:
    """Check the token's signature against every configured secret, then its claims.

    Returns the verified claims; raises ``TokenError`` whose ``code`` names the reason. The
    view uses the app's ``Verifier``, built once; this builds one per call.
    """
    return Verifier(settings).verify(header_value, body)[0]


def verify(header_value: str | None, body: bytes, settings: Settings) -> tuple[dict[str, Any], int]:
    """Like ``verify_token``, also returning the index of the secret that verified it."""
    return Verifier(settings).verify(header_value, body)


def _check_signature(token: str, secrets: tuple[bytes, ...], algorithms: list[str]) -> int:
    """Return the slot of the secret that verifies the signature (for rotation logs)."""
    for slot, secret in enumerate(secrets):
        try:
            _jws.decode_complete(token, secret, algorithms=algorithms)
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidAlgorithmError as exc:
            raise TokenError("The token is signed with an algorithm that is not allowed.") from exc
        except jwt.InvalidTokenError as exc:  # bad segments, header fields (kid, crit), ...
            raise TokenError("The token is not a well-formed JWT.", code="malformed_token") from exc
        return slot
    raise TokenError("The token's signature does not match any configured secret.")


def _claim_options(settings: Settings) -> dict[str, Any]:
    """PyJWT options for the claims the settings ask for (signature not included)."""
    required = set(settings.required_claims)
    if settings.audience is not None:
        required.add("aud")
    if settings.issuer is not None:
        required.add("iss")
    if settings.max_age is not None:
        required.add("iat")
    if settings.body_hash_claim is not None:
        required.add(settings.body_hash_claim)
    return {
        "verify_exp": True,
        "verify_nbf": True,
        "verify_iat": True,
        "verify_aud": settings.audience is not None,
        "verify_iss": settings.issuer is not None,
        "require": sorted(required),
    }


def _check_claims(token: str, settings: Settings) -> dict[str, Any]:
    # The signature was verified by _check_signature with the allow-listed algorithms.
    options: Any = {**_claim_options(settings), "verify_signature": False}
    try:
        claims: dict[str, Any] = _claims_reader.decode(
            token,
            options=options,
            audience=settings.audience,
            issuer=settings.issuer,
            leeway=settings.leeway,
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("The token has expired.", code="token_expired") from exc
    except jwt.ImmatureSignatureError as exc:
        raise TokenError("The token is not valid yet.", code="token_not_yet_valid") from exc
    except jwt.InvalidTokenError as exc:
        raise TokenError(_claim_message(exc), code="invalid_claims") from exc
    # PyJWT skips these checks when it is not verifying the signature, as here.
    for name in _STRING_CLAIMS:
        if name in claims and not isinstance(claims[name], str):
            raise TokenError(f"The token's {name!r} claim must be a string.", code="invalid_claims")
    if settings.max_age is not None:
        iat = claims["iat"]
        if isinstance(iat, bool) or not isinstance(iat, (int, float)):
            raise TokenError("The token's 'iat' claim must be a number.", code="invalid_claims")
        # Compared, not subtracted: a huge integer iat cannot be converted to a float.
        if iat < time.time() - settings.max_age - settings.leeway:
            raise TokenError(
                "The token was issued longer ago than DEVHEALTH_WEBHOOKS_MAX_AGE allows.",
                code="token_expired",
            )
    return claims


def _claim_message(exc: jwt.InvalidTokenError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"The token lacks the required claim {exc.claim!r}."
    if isinstance(exc, jwt.InvalidAudienceError):
        return "The token's audience ('aud') does not match DEVHEALTH_WEBHOOKS_AUDIENCE."
    if isinstance(exc, jwt.InvalidIssuerError):
        return "The token's issuer ('iss') does not match DEVHEALTH_WEBHOOKS_ISSUER."
    return "The token's claims are invalid."
