"""The extension's exceptions: one base class, HTTP-facing rejections carry their status."""

from __future__ import annotations


class WebhookError(Exception):
    """Base class of every exception this extension raises."""


class ConfigurationError(WebhookError):
    """A ``DEVHEALTH_WEBHOOKS_*`` setting is missing or invalid; raised at registration."""


class WebhookRejected(WebhookError):
    """A delivery was refused before any handler ran; answered with ``status_code``.

    ``code`` is the stable machine-readable reason put in the JSON body's ``error`` key; the
    message is a full sentence that never contains a payload value, a token or a secret.
    """

    status_code: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class MethodNotAllowed(WebhookRejected):
    """The callback URL was called with a method other than POST."""

    status_code = 405
    code = "method_not_allowed"


class PayloadTooLarge(WebhookRejected):
    """The body is larger than ``DEVHEALTH_WEBHOOKS_MAX_BODY``."""

    status_code = 413
    code = "payload_too_large"


class TokenError(WebhookRejected):
    """The ``X-Webhook-Secret`` JWT is missing, malformed, forged, expired or has bad claims."""

    status_code = 401
    code = "invalid_signature"


class InvalidJSON(WebhookRejected):
    """The body is not one UTF-8 encoded JSON object."""

    status_code = 400
    code = "invalid_json"


class InvalidPayload(WebhookRejected):
    """The JSON object does not match the schema; ``errors`` maps field paths to messages."""

    status_code = 400
    code = "invalid_payload"

    def __init__(self, message: str, errors: dict[str, list[str]]) -> None:
        super().__init__(message)
        self.errors = errors


class RetryLater(WebhookError):
    """Raise from a handler for a transient failure: answered 503 with ``Retry-After``.

    The delivery stays ``failed`` so the sender's next attempt takes it over and reruns only the
    handlers that have not succeeded yet. ``retry_after`` is in seconds (default from config).
    """

    def __init__(self, message: str = "", *, retry_after: int | None = None) -> None:
        super().__init__(message or "The handler asked for the delivery to be retried later.")
        self.retry_after = retry_after


class PermanentFailure(WebhookError):
    """Raise from a handler when retrying cannot help: the delivery becomes ``dead_letter``.

    It is answered 200 so the sender stops retrying, and it stays replayable from the CLI.
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "The handler reported a permanent failure.")
        self.reason = reason


class DeliveryNotFound(WebhookError):
    """No delivery with that id is in the delivery log."""


class NotReplayable(WebhookError):
    """A delivery cannot be replayed (its payload was not stored or has been purged)."""
