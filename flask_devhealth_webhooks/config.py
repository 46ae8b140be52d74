"""Every ``DEVHEALTH_WEBHOOKS_*`` key, its default and its check, read once into ``Settings``."""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from .events import loggable
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from flask import Flask

logger = logging.getLogger("flask_devhealth_webhooks")

PREFIX = "DEVHEALTH_WEBHOOKS_"
ALLOWED_ALGORITHMS = ("HS256", "HS384", "HS512")
MIN_SECRET_BYTES = 32
DAY = 86400
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an RFC 9110 token

#: Every key with its default; applied with ``app.config.setdefault`` at registration.
DEFAULTS: Mapping[str, Any] = {
    "SECRET": None,
    "ALGORITHMS": ["HS256"],
    "LEEWAY": 30,
    "MAX_AGE": None,
    "REQUIRED_CLAIMS": [],
    "AUDIENCE": None,
    "ISSUER": None,
    "HEADER": "X-Webhook-Secret",
    "MAX_BODY": 1024 * 1024,
    "BODY_HASH_CLAIM": None,
    "DATABASE_URL": None,
    "ENGINE": None,
    "LEASE_SECONDS": 300,
    "RETRY_AFTER": 60,
    "STORE_PAYLOADS": True,
    "ENCRYPTION_KEYS": [],
    "RETENTION_DAYS": 30,
}


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one app; built once at blueprint registration."""

    secrets: tuple[bytes, ...]
    algorithms: tuple[str, ...]
    leeway: float
    max_age: float | None
    required_claims: tuple[str, ...]
    audience: str | None
    issuer: str | None
    header: str
    max_body: int
    body_hash_claim: str | None
    database_url: str | None
    engine: Engine | None
    lease_seconds: float
    retry_after: int
    store_payloads: bool
    encryption_keys: tuple[str, ...]
    retention_days: int | None


def _key(name: str) -> str:
    return PREFIX + name


def _string_list(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{_key(name)} must be a string or a list of strings.")
    return tuple(value)


def _secrets(value: Any) -> tuple[bytes, ...]:
    key = _key("SECRET")
    if value is None or value == "" or value == [] or value == ():
        raise ConfigurationError(
            f"{key} is not set. Set app.config[{key!r}] to the webhook secret typed in the "
            "Develop Health admin panel before registering the blueprint."
        )
    values = [value] if isinstance(value, (str, bytes)) else value
    if not isinstance(values, (list, tuple)):
        raise ConfigurationError(f"{key} must be a string or a list of strings (for rotation).")
    secrets: list[bytes] = []
    for slot, secret in enumerate(values):
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not isinstance(secret, bytes) or not secret:
            raise ConfigurationError(
                f"{key} slot {slot} is empty or not a string; every secret must be a non-empty "
                "string."
            )
        if len(secret) < MIN_SECRET_BYTES:
            logger.warning(
                "%s slot %d is shorter than %d bytes; HS256 secrets that short are guessable. "
                "Use a longer secret in the Develop Health admin panel.",
                key,
                slot,
                MIN_SECRET_BYTES,
            )
        if secret != secret.strip():
            logger.warning(
                "%s slot %d has leading or trailing whitespace; check that it was pasted "
                "exactly as typed in the admin panel.",
                key,
                slot,
            )
        secrets.append(secret)
    return tuple(secrets)


def _algorithms(value: Any) -> tuple[str, ...]:
    algorithms = _string_list("ALGORITHMS", value)
    bad = [a for a in algorithms if a not in ALLOWED_ALGORITHMS]
    if not algorithms or bad:
        raise ConfigurationError(
            f"{_key('ALGORITHMS')} must list only {', '.join(ALLOWED_ALGORITHMS)}; "
            "the webhook JWT is signed with a shared secret."
        )
    return algorithms


def _number(
    name: str, value: Any, *, maximum: float, optional: bool = False, minimum: float = 0
) -> Any:
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not minimum <= value <= maximum
    ):
        raise ConfigurationError(f"{_key(name)} must be a number from {minimum:g} to {maximum:g}.")
    return value


def _optional_string(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{_key(name)} must be a non-empty string or None.")
    return value


def _database_url(value: Any) -> str | None:
    url = _optional_string("DATABASE_URL", value)
    if url is not None:
        # Neither message quotes the URL: it may hold a password.
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):  # ValueError: a port that is not a number
            raise ConfigurationError(
                f"{_key('DATABASE_URL')} is not a SQLAlchemy database URL, such as "
                "'postgresql://user@host/db' or 'sqlite:////path/to/file.sqlite3'."
            ) from None
        try:
            parsed.get_dialect()
        except NoSuchModuleError:
            raise ConfigurationError(
                f"{_key('DATABASE_URL')} names a database SQLAlchemy does not know "
                f"({loggable(parsed.drivername)!r}); use 'sqlite:///...' or 'postgresql://...'."
            ) from None
    return url


def _warn_unknown_keys(config: Mapping[str, Any]) -> None:
    """A mistyped key (``..._MAXAGE``, ``DEVHEALTH_WEBHOOK_...``, lower case) is otherwise
    silently ignored, its check never applied."""
    for key in config:
        if not isinstance(key, str) or not key.upper().startswith("DEVHEALTH_WEBHOOK"):
            continue
        if key.startswith(PREFIX) and key[len(PREFIX) :] in DEFAULTS:
            continue
        name = key.upper().removeprefix(PREFIX).removeprefix("DEVHEALTH_WEBHOOK_")
        close = difflib.get_close_matches(name, DEFAULTS, n=1, cutoff=0.6)
        logger.warning(
            "%s is not a flask_devhealth_webhooks setting and is ignored%s",
            loggable(key),
            f"; did you mean {_key(close[0])}?" if close else "",
        )


def load_settings(app: Flask) -> Settings:
    """Apply defaults to ``app.config`` and validate every key; raise ConfigurationError."""
    _warn_unknown_keys(app.config)
    for name, default in DEFAULTS.items():
        app.config.setdefault(_key(name), list(default) if isinstance(default, list) else default)
    c = {name: app.config[_key(name)] for name in DEFAULTS}

    header = c["HEADER"]
    if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header.strip()):
        raise ConfigurationError(
            f"{_key('HEADER')} must be an HTTP header name (letters, digits, '-'), "
            "such as 'X-Webhook-Secret'."
        )
    engine = c["ENGINE"]
    if engine is not None and not isinstance(engine, Engine):
        raise ConfigurationError(
            f"{_key('ENGINE')} must be a SQLAlchemy Engine; use {_key('DATABASE_URL')} for a URL."
        )
    if not isinstance(c["STORE_PAYLOADS"], bool):
        raise ConfigurationError(f"{_key('STORE_PAYLOADS')} must be True or False.")
    keys = c["ENCRYPTION_KEYS"]
    if isinstance(keys, (str, bytes)):
        keys = [keys]
    if isinstance(keys, (list, tuple)):  # Fernet.generate_key() returns bytes
        keys = [k.decode("ascii", "replace") if isinstance(k, bytes) else k for k in keys]
    encryption_keys = _string_list("ENCRYPTION_KEYS", keys)
    if encryption_keys:
        from .store import make_fernet  # imported lazily: cryptography is an optional extra

        make_fernet(encryption_keys)  # raises ConfigurationError on a malformed key
    retention = c["RETENTION_DAYS"]
    return Settings(
        secrets=_secrets(c["SECRET"]),
        algorithms=_algorithms(c["ALGORITHMS"]),
        leeway=float(_number("LEEWAY", c["LEEWAY"], maximum=DAY)),
        max_age=_number("MAX_AGE", c["MAX_AGE"], optional=True, maximum=365 * DAY),
        required_claims=_string_list("REQUIRED_CLAIMS", c["REQUIRED_CLAIMS"]),
        audience=_optional_string("AUDIENCE", c["AUDIENCE"]),
        issuer=_optional_string("ISSUER", c["ISSUER"]),
        header=header.strip(),
        max_body=int(_number("MAX_BODY", c["MAX_BODY"], minimum=1, maximum=2**30)),
        body_hash_claim=_optional_string("BODY_HASH_CLAIM", c["BODY_HASH_CLAIM"]),
        database_url=_database_url(c["DATABASE_URL"]),
        engine=engine,
        lease_seconds=float(
            _number("LEASE_SECONDS", c["LEASE_SECONDS"], minimum=1, maximum=7 * DAY)
        ),
        retry_after=int(_number("RETRY_AFTER", c["RETRY_AFTER"], maximum=DAY)),
        store_payloads=c["STORE_PAYLOADS"],
        encryption_keys=encryption_keys,
        retention_days=None
        if retention is None
        else int(_number("RETENTION_DAYS", retention, maximum=36500)),
    )
