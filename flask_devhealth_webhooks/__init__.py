"""Receive, verify and dispatch Develop Health webhooks in a Flask app."""

from __future__ import annotations

from . import cli as _cli  # noqa: F401 - attaches the `flask devhealth` commands
from .blueprint import blueprint, get_state
from .events import CATALOGUE, Event
from .exceptions import (
    ConfigurationError,
    InvalidJSON,
    InvalidPayload,
    MethodNotAllowed,
    PayloadTooLarge,
    PermanentFailure,
    RetryLater,
    TokenError,
    WebhookError,
    WebhookRejected,
)
from .signals import on
from .store import DeliveryStore, deliveries

__all__ = [
    "CATALOGUE",
    "ConfigurationError",
    "DeliveryStore",
    "Event",
    "InvalidJSON",
    "InvalidPayload",
    "MethodNotAllowed",
    "PayloadTooLarge",
    "PermanentFailure",
    "RetryLater",
    "TokenError",
    "WebhookError",
    "WebhookRejected",
    "blueprint",
    "deliveries",
    "get_state",
    "on",
]
