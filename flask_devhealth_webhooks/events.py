"""The event catalogue (canonical names, vendor aliases, legacy titles) and the ``Event`` value."""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

ANY = "*"
DETERMINATION = "prior_authorization.determination"


@dataclass(frozen=True)
class EventType:
    """One catalogued event: its canonical name, aliases, legacy title and resource object."""

    name: str
    object: str
    aliases: tuple[str, ...] = ()
    title: str | None = None
    description: str = ""


CATALOGUE: tuple[EventType, ...] = (
    EventType(
        "benefit_verification.updated",
        "benefit_verification",
        ("benefit_verification.status_change",),
        "Benefit Verification Updated",
        "A benefit verification changed status.",
    ),
    EventType(
        "prior_authorization.updated",
        "prior_authorization",
        ("prior_authorization.status_change",),
        "Prior Authorization Updated",
        "A prior authorization changed status.",
    ),
    EventType(
        DETERMINATION,
        "prior_authorization",
        (),
        "Prior Authorization Determination",
        "The payer's determination; also fired by prior_authorization.updated when completed.",
    ),
    EventType(
        "prior_authorization.activity_log_updated",
        "prior_authorization",
        description="An entry was added to a prior authorization's activity log.",
    ),
    EventType(
        "prior_authorization.prescription_transfer_change",
        "prior_authorization",
        description="A prescription transfer changed state.",
    ),
    EventType(
        "prior_authorization.real_time_benefits_check_change",
        "prior_authorization",
        description="A real-time benefits check changed state.",
    ),
    EventType(
        "prior_authorization.message",
        "prior_authorization",
        description="A message was added to a prior authorization.",
    ),
    EventType(
        "prior_authorization.provider_outreach_change",
        "provider_outreach",
        description="A provider outreach attempt or sequence changed state.",
    ),
)

EVENT_TYPES: Mapping[str, EventType] = {e.name: e for e in CATALOGUE}
_BY_ALIAS: Mapping[str, EventType] = {alias: e for e in CATALOGUE for alias in (e.name, *e.aliases)}
_BY_TITLE: Mapping[str, EventType] = {e.title: e for e in CATALOGUE if e.title}


def canonical_name(name: str) -> str | None:
    """The canonical name for a canonical name or vendor alias; None when uncatalogued."""
    event_type = _BY_ALIAS.get(name)
    return event_type.name if event_type else None


def closest_names(name: str) -> list[str]:
    """Known names (canonical and aliases) that look like ``name``, for error messages."""
    return difflib.get_close_matches(name, list(_BY_ALIAS), n=3, cutoff=0.4)


def resolve_name(event_type: Any, title: Any) -> str:
    """The delivery's event name: from ``event_type`` when sent, else from the legacy title.

    An uncatalogued ``event_type`` is kept as sent, so ``strict=False`` handlers can match it.
    """
    if isinstance(event_type, str) and event_type:
        return canonical_name(event_type) or event_type
    if isinstance(title, str) and title in _BY_TITLE:
        return _BY_TITLE[title].name
    return "unknown"


def loggable(value: Any) -> str:
    """An identifier made safe for a log line or a terminal: printable, no spaces, bounded.

    Ids come from the sender; a newline in one must not forge a log line.
    """
    text = "-" if value is None else str(value)
    return "".join(ch if ch.isprintable() and ch != " " else "?" for ch in text[:255])


def canonical_json(body: Any) -> bytes:
    """The canonical encoding every instance and version hashes for the delivery id."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def delivery_id_for(body: Mapping[str, Any]) -> str:
    """The vendor's ``event_id`` when sent, else ``sha256:`` + the canonical body's digest."""
    event_id = body.get("event_id")
    if isinstance(event_id, str) and event_id:
        return event_id
    return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()


@dataclass(frozen=True)
class Event:
    """One verified, schema-loaded delivery as handed to handlers; attributes are read-only.

    ``data``, ``payload`` and ``claims`` are plain dicts shared by all of the delivery's handlers.
    """

    name: str
    event_type: str | None
    title: str | None
    description: str | None
    event_id: str | None
    occurred_at: datetime | None
    data: dict[str, Any]
    payload: dict[str, Any]
    delivery_id: str
    claims: dict[str, Any]
    received_at: datetime

    @property
    def object(self) -> str:
        """``data.object``: the resource kind, e.g. ``"benefit_verification"``."""
        return str(self.data["object"])

    @property
    def object_id(self) -> str:
        """``data.id``: the resource id, e.g. ``"bv_nBElDPw"``."""
        return str(self.data["id"])

    @property
    def status(self) -> str | None:
        """``data.status`` when present, e.g. ``"completed"``."""
        status = self.data.get("status")
        return status if isinstance(status, str) else None

    def derived(self) -> list[Event]:
        """Events this delivery also fires: a completed PA update is the payer's determination."""
        if self.name == "prior_authorization.updated" and self.status == "completed":
            return [replace(self, name=DETERMINATION)]
        return []


def expected_object(name: str) -> str | None:
    """The ``data.object`` a catalogued event carries; None for uncatalogued names."""
    event_type = EVENT_TYPES.get(name)
    return event_type.object if event_type else None
