"""Pytest fixtures for testing handlers; loaded through the ``pytest11`` entry point.

They build on pytest-flask's ``client`` fixture, so define an ``app`` fixture as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .events import Event
from .testing import make_token, record_events, sample_payload, send_webhook


@pytest.fixture
def devhealth_send(client: Any) -> Callable[..., Any]:
    """``devhealth_send(payload, **kw)``: a signed POST to the app's webhook route."""

    def send(payload: Any, **kwargs: Any) -> Any:
        return send_webhook(client, payload, **kwargs)

    return send


@pytest.fixture
def devhealth_events() -> Iterator[list[Event]]:
    """The list of every ``Event`` dispatched during the test."""
    with record_events() as events:
        yield events


@pytest.fixture
def devhealth_sample() -> Callable[..., dict[str, Any]]:
    """``sample_payload`` as a fixture."""
    return sample_payload


@pytest.fixture
def devhealth_token() -> Callable[..., str]:
    """``make_token`` as a fixture."""
    return make_token
