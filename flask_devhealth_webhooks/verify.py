"""Verify the ``X-Webhook-Secret`` JWT: pure functions over PyJWT, no Flask globals.

The algorithm allow-list always comes from settings, never from the token. Only PyJWT's token
errors are caught, so a broken key surfaces as a configuration problem rather than a 401.
"""

from __future__ import annotations

import hashlib
import hmac
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
#: Signature and claims in one parse, with the HMAC above. PyJWT has no public way to hand a
#: PyJWT its PyJWS; it sets ``_jws`` the same way for its own module-level instance.
_one_pass = jwt.PyJWT()
_one_pass._jws = _jws


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
        self.options: Any = {**_claim_options(settings), "verify_signature": True}

    def verify(self, header_value: str | None, body: bytes) -> tuple[dict[str, Any], int]:
        """The verified claims and the index of the secret that verified them.

        Raises ``TokenError`` whose ``code`` names the reason.
        """
        settings = self.settings
        token = extract_token(header_value)
        verified = self._verify_in_one_pass(token)
        if verified is not None:
            claims, slot = verified
        else:
            slot = _check_signature(token, self.secrets, self.algorithms)
            claims = _check_claims(token, settings)
        if settings.body_hash_claim is not None:
            expected = body_digest(body)
            sent = claims[settings.body_hash_claim]
            if not isinstance(sent, str) or not hmac.compare_digest(sent.lower(), expected):
                raise TokenError("The token's body-hash claim does not match the body received.")
        return claims, slot

    def _verify_in_one_pass(self, token: str) -> tuple[dict[str, Any], int] | None:
        """Signature and claims in one parse of the token (parsing is most of the cost).

        ``None`` sends the token down the step-by-step path, which names the exact reason a
        token is refused and checks ``MAX_AGE``; accepted tokens never need it.
        """
        settings = self.settings
        if settings.max_age is not None:
            return None
        for slot, secret in enumerate(self.secrets):
            try:
                claims: dict[str, Any] = _one_pass.decode(
                    token,
                    secret,
                    algorithms=self.algorithms,
                    options=self.options,
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
