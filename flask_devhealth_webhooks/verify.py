"""Verify the ``X-Webhook-Secret`` JWT: pure functions over PyJWT, no Flask globals.

The algorithm allow-list always comes from settings, never from the token. Only PyJWT's token
errors are caught, so a broken key surfaces as a configuration problem rather than a 401.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import jwt
from jwt.algorithms import HMACAlgorithm

from .config import Settings
from .exceptions import TokenError


class _HMAC(HMACAlgorithm):
    """HMAC without PyJWT's per-call short-key warning; registration warns once instead."""

    def check_key_length(self, key: Any) -> str | None:
        return None


_HASHES = {
    "HS256": HMACAlgorithm.SHA256,
    "HS384": HMACAlgorithm.SHA384,
    "HS512": HMACAlgorithm.SHA512,
}
_jws = jwt.PyJWS(algorithms=[])
for _name, _hash in _HASHES.items():
    _jws.register_algorithm(_name, _HMAC(_hash))
_claims_reader = jwt.PyJWT()


def extract_token(value: str | None) -> str:
    """Return the bare token from a header value: trimmed, an optional ``Bearer `` removed."""
    token = (value or "").strip()
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

    Returns the verified claims; raises ``TokenError`` whose ``code`` names the reason.
    """
    return verify(header_value, body, settings)[0]


def verify(header_value: str | None, body: bytes, settings: Settings) -> tuple[dict[str, Any], int]:
    """Like ``verify_token``, also returning the index of the secret that verified it."""
    token = extract_token(header_value)
    verified = _verify_in_one_pass(token, settings)
    if verified is not None:
        claims, slot = verified
    else:
        slot = _check_signature(token, settings)
        claims = _check_claims(token, settings)
    if settings.body_hash_claim is not None:
        expected = body_digest(body)
        sent = claims[settings.body_hash_claim]
        if not isinstance(sent, str) or not hmac.compare_digest(sent.lower(), expected):
            raise TokenError("The token's body-hash claim does not match the body received.")
    return claims, slot


#: Key lengths under which PyJWT (2.10 and later) warns on every decode with its own HMAC.
_MIN_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_one_pass = jwt.PyJWT()


def _verify_in_one_pass(token: str, settings: Settings) -> tuple[dict[str, Any], int] | None:
    """Signature and claims in one parse of the token (parsing is most of the cost).

    Used when every secret is long enough for PyJWT not to warn and no max age is set; the same
    allow-list and claim options apply. ``None`` sends the token down the step-by-step path,
    which also names the exact reason a token is refused.
    """
    if settings.max_age is not None or any(
        len(secret) < _MIN_KEY_BYTES[algorithm]
        for secret in settings.secrets
        for algorithm in settings.algorithms
    ):
        return None
    options: Any = {**_claim_options(settings), "verify_signature": True}
    algorithms = list(settings.algorithms)
    for slot, secret in enumerate(settings.secrets):
        try:
            claims: dict[str, Any] = _one_pass.decode(
                token,
                secret,
                algorithms=algorithms,
                options=options,
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidTokenError:
            return None
        return claims, slot
    return None


def _check_signature(token: str, settings: Settings) -> int:
    """Return the slot of the secret that verifies the signature (for rotation logs)."""
    algorithms = list(settings.algorithms)
    for slot, secret in enumerate(settings.secrets):
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
    if settings.max_age is not None:
        iat = claims["iat"]
        if isinstance(iat, bool) or not isinstance(iat, (int, float)):
            raise TokenError("The token's 'iat' claim must be a number.", code="invalid_claims")
        if time.time() - iat > settings.max_age + settings.leeway:
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
