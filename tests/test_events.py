"""Event names (aliases, legacy titles), the derived determination, delivery ids, ``Event``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from conftest import SECRET, fixture
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from flask_devhealth_webhooks import CATALOGUE, Event, on
from flask_devhealth_webhooks.testing import make_token, sample_payload

URL = "/webhooks/devhealth"
UTC = timezone.utc
DETERMINATION = "prior_authorization.determination"

#: The catalogue as the issue states it: canonical name -> (aliases, legacy title, data.object).
EXPECTED: dict[str, tuple[tuple[str, ...], str | None, str]] = {
    "benefit_verification.updated": (
        ("benefit_verification.status_change",),
        "Benefit Verification Updated",
        "benefit_verification",
    ),
    "prior_authorization.updated": (
        ("prior_authorization.status_change",),
        "Prior Authorization Updated",
        "prior_authorization",
    ),
    DETERMINATION: ((), "Prior Authorization Determination", "prior_authorization"),
    "prior_authorization.activity_log_updated": ((), None, "prior_authorization"),
    "prior_authorization.prescription_transfer_change": ((), None, "prior_authorization"),
    "prior_authorization.real_time_benefits_check_change": ((), None, "prior_authorization"),
    "prior_authorization.message": ((), None, "prior_authorization"),
    "prior_authorization.provider_outreach_change": ((), None, "provider_outreach"),
}


def post(client: FlaskClient, body: dict[str, Any] | bytes, **claims: Any) -> TestResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(
        URL, data=raw, headers={"X-Webhook-Secret": make_token(SECRET, **claims)}
    )
    assert response.is_json
    return response


def record(name: str) -> list[Event]:
    seen: list[Event] = []

    @on(name)
    def handler(event: Event) -> None:
        seen.append(event)

    return seen


def record_all() -> dict[str, list[Event]]:
    """A recorder on every catalogued event and on "*"."""
    return {name: record(name) for name in [*EXPECTED, "*"]}


def names(seen: dict[str, list[Event]]) -> dict[str, int]:
    return {name: len(events) for name, events in seen.items() if events}


def data_for(obj: str, status: str = "in_progress") -> dict[str, Any]:
    """Resource data of the given object kind, from the shared fixtures."""
    source = {
        "benefit_verification": "benefit_verification_status_change_failed",
        "prior_authorization": "prior_authorization_message",
        "provider_outreach": "prior_authorization_provider_outreach_change",
    }[obj]
    data: dict[str, Any] = fixture(source)["data"]
    data["status"] = status
    return data


def test_catalogue_matches_the_issue() -> None:
    assert {e.name: (e.aliases, e.title, e.object) for e in CATALOGUE} == EXPECTED


# -- resolution: event_type (canonical or alias) and legacy title ----------------------------

RESOLUTION = [
    *(
        pytest.param({"event_type": sent}, name, id=f"event_type={sent}")
        for name, (aliases, _, _) in EXPECTED.items()
        for sent in (name, *aliases)
    ),
    *(
        pytest.param({"title": title}, name, id=f"title={title}")
        for name, (_, title, _) in EXPECTED.items()
        if title is not None
    ),
]


@pytest.mark.parametrize(("envelope", "name"), RESOLUTION)
def test_name_resolution(client: FlaskClient, envelope: dict[str, str], name: str) -> None:
    seen = record_all()
    obj = EXPECTED[name][2]
    body = {**envelope, "description": "d", "data": data_for(obj)}
    response = post(client, body)
    assert response.status_code == 200
    assert response.get_json()["event"] == name
    assert response.get_json()["status"] == "processed"
    assert names(seen) == {name: 1, "*": 1}
    event = seen[name][0]
    assert event.name == name
    assert event.event_type == envelope.get("event_type")
    assert event.title == envelope.get("title")
    assert event.object == obj


def test_event_type_wins_over_title(client: FlaskClient) -> None:
    seen = record_all()
    body = {
        "event_type": "prior_authorization.message",
        "title": "Benefit Verification Updated",
        "data": data_for("prior_authorization"),
    }
    assert post(client, body).get_json()["event"] == "prior_authorization.message"
    assert names(seen) == {"prior_authorization.message": 1, "*": 1}


def test_object_must_match_the_event(client: FlaskClient) -> None:
    body = {
        "event_type": "benefit_verification.status_change",
        "data": data_for("provider_outreach"),
    }
    response = post(client, body)
    assert response.status_code == 400
    assert "data.object" in response.get_json()["errors"]


# -- prior_authorization.updated + completed -> prior_authorization.determination --------------


@pytest.mark.parametrize(
    "envelope",
    [
        {"event_type": "prior_authorization.status_change"},
        {"event_type": "prior_authorization.updated"},
        {"title": "Prior Authorization Updated"},
    ],
)
def test_completed_update_also_fires_determination(
    client: FlaskClient, envelope: dict[str, str]
) -> None:
    seen = record_all()
    body = {
        **envelope,
        "event_id": "wh_evt_det1",
        "data": data_for("prior_authorization", "completed"),
    }
    response = post(client, body)
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "processed",
        "event": "prior_authorization.updated",
        "delivery_id": "wh_evt_det1",
    }
    assert names(seen) == {"prior_authorization.updated": 1, DETERMINATION: 1, "*": 1}
    primary = seen["prior_authorization.updated"][0]
    derived = seen[DETERMINATION][0]
    assert derived.name == DETERMINATION
    assert derived.delivery_id == primary.delivery_id == "wh_evt_det1"
    assert derived.payload == primary.payload == body
    assert derived.data == primary.data
    assert derived.status == "completed"
    assert seen["*"][0].name == "prior_authorization.updated"


def test_approved_fixture_fires_determination(client: FlaskClient) -> None:
    seen = record_all()
    response = post(client, fixture("prior_authorization_status_change_approved"))
    assert response.get_json()["event"] == "prior_authorization.updated"
    assert names(seen) == {"prior_authorization.updated": 1, DETERMINATION: 1, "*": 1}
    assert seen[DETERMINATION][0].data["outcome"]["result"] == "Approved"


@pytest.mark.parametrize(
    "status",
    ["in_progress", "awaiting_provider_response", "cancelled", "failed", "Completed", None],
)
def test_update_not_completed_does_not_fire_determination(
    client: FlaskClient, status: str | None
) -> None:
    seen = record_all()
    data = data_for("prior_authorization")
    data["status"] = status
    body = {"event_type": "prior_authorization.status_change", "data": data}
    assert post(client, body).status_code == 200
    assert names(seen) == {"prior_authorization.updated": 1, "*": 1}


@pytest.mark.parametrize(
    "name",
    [
        "benefit_verification.updated",
        "prior_authorization.activity_log_updated",
        "prior_authorization.prescription_transfer_change",
        "prior_authorization.real_time_benefits_check_change",
        "prior_authorization.message",
        "prior_authorization.provider_outreach_change",
    ],
)
def test_other_completed_events_do_not_fire_determination(client: FlaskClient, name: str) -> None:
    seen = record_all()
    body = {"event_type": name, "data": data_for(EXPECTED[name][2], "completed")}
    assert post(client, body).status_code == 200
    assert names(seen) == {name: 1, "*": 1}


def test_legacy_determination_fires_once(client: FlaskClient) -> None:
    seen = record_all()
    response = post(client, fixture("prior_authorization_determination_legacy"))
    assert response.get_json()["event"] == DETERMINATION
    assert names(seen) == {DETERMINATION: 1, "*": 1}
    assert seen[DETERMINATION][0].data["outcome"]["result"] == "Denied"


# -- delivery ids ---------------------------------------------------------------------------------


def expected_id(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_delivery_id_is_the_event_id(client: FlaskClient) -> None:
    seen = record("*")
    response = post(client, fixture("prior_authorization_message"))
    assert response.get_json()["delivery_id"] == "wh_evt_mSg0003c"
    assert seen[0].delivery_id == "wh_evt_mSg0003c"
    assert seen[0].event_id == "wh_evt_mSg0003c"


def test_delivery_id_without_event_id_hashes_the_canonical_body(client: FlaskClient) -> None:
    seen = record("*")
    body = fixture("benefit_verification_updated_legacy")
    response = post(client, body)
    assert response.get_json()["delivery_id"] == expected_id(body)
    assert seen[0].delivery_id == expected_id(body)
    assert seen[0].event_id is None


def test_delivery_id_ignores_formatting_and_key_order(make_app: Any) -> None:
    body = fixture("benefit_verification_updated_legacy")
    body["data"]["note"] = "café ✓ 日本"
    reordered = dict(reversed(list(body.items())))
    variants = [
        json.dumps(body).encode(),
        json.dumps(body, ensure_ascii=False).encode("utf-8"),
        json.dumps(reordered, indent=4, sort_keys=False).encode(),
    ]
    ids = set()
    for raw in variants:
        client = make_app().test_client()
        ids.add(post(client, raw).get_json()["delivery_id"])
    assert ids == {expected_id(body)}


def test_delivery_id_differs_when_the_body_differs(client: FlaskClient) -> None:
    first = fixture("benefit_verification_updated_legacy")
    second = fixture("benefit_verification_updated_legacy")
    second["data"]["status"] = "failed"
    a = post(client, first).get_json()["delivery_id"]
    b = post(client, second).get_json()["delivery_id"]
    assert a == expected_id(first)
    assert b == expected_id(second)
    assert a != b


# -- the Event value ------------------------------------------------------------------------------


def test_event_fields(client: FlaskClient) -> None:
    seen = record("prior_authorization.updated")
    body = fixture("prior_authorization_status_change_approved")
    body["data"]["brand_new_field"] = {"kept": [1, 2]}
    body["data"]["activity_log"][1]["details"] = {"future": "shape"}
    body["top_level_extra"] = "kept"
    before = datetime.now(UTC)
    response = post(client, body, sub="develop-health")
    after = datetime.now(UTC)
    assert response.status_code == 200
    event = seen[0]

    assert isinstance(event, Event)
    assert event.name == "prior_authorization.updated"
    assert event.event_type == "prior_authorization.status_change"
    assert event.title == "Prior Authorization Updated"
    assert event.description == "A Prior Authorization has been updated."
    assert event.event_id == "wh_evt_pA0002b"
    assert event.delivery_id == "wh_evt_pA0002b"
    assert event.occurred_at == datetime(2026, 7, 30, 9, 0, tzinfo=UTC)
    assert event.occurred_at is not None
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.object == "prior_authorization"
    assert event.object_id == "pa_sdkfj3f"
    assert event.status == "completed"

    # data is schema-loaded: dates and datetimes, unknown fields and enum values kept
    assert event.data["outcome"]["authorization_start_date"] == date(2026, 7, 1)
    assert event.data["outcome"]["authorization_expiration"] == date(2027, 6, 30)
    assert event.data["patient"]["date_of_birth"] == date(1980, 1, 1)
    prescribed = event.data["prescription"]["prescription_date"]
    assert isinstance(prescribed, datetime)
    assert prescribed.tzinfo is not None
    assert prescribed == datetime(2026, 6, 14, 5, 46, 7, 764000, tzinfo=UTC)
    created = event.data["activity_log"][0]["created_at"]
    assert isinstance(created, datetime)
    assert created.tzinfo is not None
    assert event.data["activity_log"][1]["type"] == "some_future_type"
    assert event.data["activity_log"][1]["details"] == {"future": "shape"}
    assert event.data["brand_new_field"] == {"kept": [1, 2]}

    # payload is the body as received, unconverted
    assert event.payload == body
    assert event.payload["data"]["patient"]["date_of_birth"] == "1980-01-01"

    assert event.claims["sub"] == "develop-health"
    assert {"iat", "exp"} <= set(event.claims)
    assert event.received_at.tzinfo is not None
    assert before <= event.received_at <= after


def test_event_is_immutable(client: FlaskClient) -> None:
    seen = record("*")
    post(client, fixture("prior_authorization_message"))
    event = seen[0]
    for field in dataclasses.fields(event):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, field.name, None)
    with pytest.raises(AttributeError):
        event.status = "x"  # type: ignore[misc]


def test_naive_occurred_at_is_taken_as_utc(client: FlaskClient) -> None:
    seen = record("*")
    body = fixture("prior_authorization_message")
    body["occurred_at"] = "2026-07-31T12:00:00"
    post(client, body)
    assert seen[0].occurred_at == datetime(2026, 7, 31, 12, 0, tzinfo=UTC)


def test_occurred_at_with_offset_is_kept_aware(client: FlaskClient) -> None:
    seen = record("*")
    body = fixture("prior_authorization_message")
    body["occurred_at"] = "2026-07-31T14:00:00+02:00"
    post(client, body)
    occurred = seen[0].occurred_at
    assert occurred is not None
    assert occurred.tzinfo is not None
    assert occurred == datetime(2026, 7, 31, 12, 0, tzinfo=UTC)


def test_legacy_event_has_no_event_id_nor_occurred_at(client: FlaskClient) -> None:
    seen = record("*")
    post(client, fixture("benefit_verification_updated_legacy"))
    event = seen[0]
    assert event.event_type is None
    assert event.event_id is None
    assert event.occurred_at is None
    assert event.title == "Benefit Verification Updated"
    assert event.status == "completed"


def test_status_is_none_when_absent(client: FlaskClient) -> None:
    seen = record("*")
    body = fixture("prior_authorization_provider_outreach_change")
    del body["data"]["status"]
    post(client, body)
    assert seen[0].status is None
    assert seen[0].object == "provider_outreach"
    assert seen[0].object_id == "prov_outreach_aBcDeFg"


def test_unknown_enum_values_are_accepted(client: FlaskClient) -> None:
    seen = record("benefit_verification.updated")
    body = sample_payload("benefit_verification.updated", status="a_status_from_2030")
    body["data"]["drugs"][0]["coverage"] = "a_coverage_from_2030"
    assert post(client, body).status_code == 200
    assert seen[0].status == "a_status_from_2030"
    assert seen[0].data["drugs"][0]["coverage"] == "a_coverage_from_2030"
