"""The webhook body schemas: what loads, what is converted, what is kept, what is rejected."""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from marshmallow import ValidationError

from flask_devhealth_webhooks.schemas import (
    ENVELOPE_SCHEMA,
    RESOURCE_SCHEMA,
    SCHEMAS_BY_OBJECT,
    BenefitVerificationSchema,
    PriorAuthorizationSchema,
    ProviderOutreachSchema,
    _parse_datetime,
    flatten_errors,
    load_envelope,
)

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_NAMES = sorted(path.stem for path in FIXTURES.glob("*.json"))
BV_LEGACY = "benefit_verification_updated_legacy"
BV_FAILED = "benefit_verification_status_change_failed"
PA_APPROVED = "prior_authorization_status_change_approved"
PA_DENIED_LEGACY = "prior_authorization_determination_legacy"
PA_MESSAGE = "prior_authorization_message"
OUTREACH = "prior_authorization_provider_outreach_change"
CANARY = "CANARY-7f3a9c-do-not-echo"
UTC = dt.timezone.utc


def body(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def errors_of(payload: Any) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as info:
        load_envelope(payload)
    messages = info.value.messages
    assert isinstance(messages, dict)
    return messages


# --- every fixture loads ---------------------------------------------------------------------


def test_fixture_set_is_the_expected_one() -> None:
    assert len(FIXTURE_NAMES) == 6
    assert {BV_LEGACY, BV_FAILED, PA_APPROVED, PA_DENIED_LEGACY, PA_MESSAGE, OUTREACH} == set(
        FIXTURE_NAMES
    )


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_fixture_loads(name: str) -> None:
    raw = body(name)
    loaded = load_envelope(raw)
    for key in ("title", "description", "event_type", "event_id", "occurred_at", "data"):
        assert key in loaded
    assert loaded["title"] == raw["title"]
    assert loaded["description"] == raw["description"]
    assert loaded["data"]["id"] == raw["data"]["id"]
    assert loaded["data"]["object"] == raw["data"]["object"]
    assert loaded["data"]["status"] == raw["data"]["status"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_key_of_every_fixture_survives(name: str) -> None:
    """Nothing is dropped: the loaded body has every key the fixture has, at every level."""

    def keys(value: Any, path: str = "") -> set[str]:
        found: set[str] = set()
        if isinstance(value, dict):
            for key, item in value.items():
                found.add(f"{path}.{key}")
                found |= keys(item, f"{path}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                found |= keys(item, f"{path}.{index}")
        return found

    raw = body(name)
    assert keys(raw) <= keys(load_envelope(raw))


def test_legacy_envelope_gets_none_for_the_newer_keys() -> None:
    loaded = load_envelope(body(BV_LEGACY))
    assert loaded["event_type"] is None
    assert loaded["event_id"] is None
    assert loaded["occurred_at"] is None
    assert loaded["title"] == "Benefit Verification Updated"


def test_new_envelope_keys_are_loaded() -> None:
    loaded = load_envelope(body(BV_FAILED))
    assert loaded["event_type"] == "benefit_verification.status_change"
    assert loaded["event_id"] == "wh_evt_bV0001a"


def test_data_is_loaded_with_the_schema_data_object_names() -> None:
    assert isinstance(SCHEMAS_BY_OBJECT["benefit_verification"], BenefitVerificationSchema)
    assert isinstance(SCHEMAS_BY_OBJECT["prior_authorization"], PriorAuthorizationSchema)
    assert isinstance(SCHEMAS_BY_OBJECT["provider_outreach"], ProviderOutreachSchema)
    # the benefit verification schema converts the nested copay option and dates
    loaded = load_envelope(body(BV_LEGACY))["data"]
    assert loaded["drugs"][0]["copay_options"] == [
        {"amount_cents": 3000, "supply_duration_days": 28}
    ]
    assert loaded["drugs"][0]["quantity"] == 1.0
    assert loaded["priority"] == 2
    assert loaded["patient"]["date_of_birth"] == dt.date(1980, 1, 1)


def test_schemas_by_object_is_read_only() -> None:
    with pytest.raises(TypeError):
        SCHEMAS_BY_OBJECT["x"] = RESOURCE_SCHEMA  # type: ignore[index]


# --- dates and datetimes ---------------------------------------------------------------------


def assert_aware_utc(value: Any, expected: dt.datetime) -> None:
    assert isinstance(value, dt.datetime)
    assert value.tzinfo is not None
    assert value.utcoffset() == dt.timedelta(0)
    assert value == expected


def test_occurred_at_is_an_aware_datetime() -> None:
    loaded = load_envelope(body(BV_FAILED))
    assert_aware_utc(loaded["occurred_at"], dt.datetime(2026, 7, 29, 18, 12, 4, tzinfo=UTC))


def test_naive_datetimes_are_taken_as_utc() -> None:
    data = load_envelope(body(PA_MESSAGE))["data"]
    assert_aware_utc(
        data["prescription"]["prescription_date"],
        dt.datetime(2026, 6, 14, 5, 46, 7, 764000, tzinfo=UTC),
    )
    assert_aware_utc(
        data["activity_log"][0]["created_at"], dt.datetime(2026, 6, 15, 10, 15, tzinfo=UTC)
    )
    assert_aware_utc(
        data["message_thread"]["messages"][0]["timestamp"],
        dt.datetime(2026, 7, 31, 11, 59, tzinfo=UTC),
    )


def test_an_explicit_offset_is_kept() -> None:
    raw = body(BV_FAILED)
    raw["occurred_at"] = "2026-07-29T20:12:04+02:00"
    occurred_at = load_envelope(raw)["occurred_at"]
    assert occurred_at.utcoffset() == dt.timedelta(hours=2)
    assert occurred_at == dt.datetime(2026, 7, 29, 18, 12, 4, tzinfo=UTC)


@pytest.mark.parametrize(
    "text", ["9999-12-31T23:59:59-23:59", "9999-12-31T23:00:00-01:00", "0001-01-01T00:00:00+14:00"]
)
def test_a_datetime_past_the_range_in_utc_is_rejected(text: str) -> None:
    """Its handlers' ``astimezone(timezone.utc)`` would raise OverflowError on every retry."""
    raw = body(BV_FAILED)
    raw["occurred_at"] = text
    assert errors_of(raw) == {"occurred_at": ["Out of range once converted to UTC."]}
    raw = body(PA_APPROVED)
    raw["data"]["activity_log"][0]["created_at"] = text
    assert list(errors_of(raw)) == ["data.activity_log.0.created_at"]


@pytest.mark.parametrize(
    "text", ["9999-12-31T23:59:59Z", "9999-12-31T12:00:00+05:00", "0001-01-01T12:00:00+05:00"]
)
def test_a_datetime_at_the_edge_of_the_range_is_kept(text: str) -> None:
    raw = body(BV_FAILED)
    raw["occurred_at"] = text
    occurred_at = load_envelope(raw)["occurred_at"]
    assert occurred_at.astimezone(UTC).tzinfo is UTC


def test_dates_become_dates() -> None:
    outcome = load_envelope(body(PA_APPROVED))["data"]["outcome"]
    assert outcome["authorization_start_date"] == dt.date(2026, 7, 1)
    assert outcome["authorization_expiration"] == dt.date(2027, 6, 30)
    assert type(outcome["authorization_start_date"]) is dt.date


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-07-29T18:12:04Z", dt.datetime(2026, 7, 29, 18, 12, 4, tzinfo=UTC)),
        ("2026-07-29T18:12:04z", dt.datetime(2026, 7, 29, 18, 12, 4, tzinfo=UTC)),
        ("2026-07-29 18:12", dt.datetime(2026, 7, 29, 18, 12)),
        ("2026-07-29T18:12:04.5Z", dt.datetime(2026, 7, 29, 18, 12, 4, 500000, tzinfo=UTC)),
        (
            "2026-07-29T18:12:04.123456789+0530",
            dt.datetime(
                2026, 7, 29, 18, 12, 4, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5.5))
            ),
        ),
        ("2026-07-29T18:12:04,25-03", dt.datetime(2026, 7, 29, 21, 12, 4, 250000, tzinfo=UTC)),
    ],
)
def test_datetime_parser_takes_iso_8601_forms_on_every_python(
    text: str, expected: dt.datetime
) -> None:
    # fromisoformat on Python 3.10 rejects "Z" and odd fraction lengths; the fallback takes them
    assert _parse_datetime(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01T00:00:00", "2026-07-29T25:00:00Z"])
def test_datetime_parser_rejects_non_dates(text: str) -> None:
    with pytest.raises(ValueError, match="not an ISO 8601 datetime") as info:
        _parse_datetime(text)
    if text:
        assert text not in str(info.value)


# --- unknown fields and unknown enum values are kept -----------------------------------------


def test_unknown_fields_are_kept_at_every_level() -> None:
    raw = body(BV_LEGACY)
    raw["delivery_attempt"] = 3
    raw["data"]["brand_new_field"] = {"nested": [1, 2]}
    raw["data"]["patient"]["preferred_language"] = "fr"
    raw["data"]["patient"]["address"]["plus_code"] = "849VCWC8+R9"
    raw["data"]["drugs"][0]["tier"] = 2
    raw["data"]["drugs"][0]["copay_options"][0]["currency"] = "USD"
    raw["data"]["insurance"][0]["scanned_content"]["rx_plan_id"] = "P1"
    loaded = load_envelope(raw)
    assert loaded["delivery_attempt"] == 3
    data = loaded["data"]
    assert data["brand_new_field"] == {"nested": [1, 2]}
    assert data["patient"]["preferred_language"] == "fr"
    assert data["patient"]["address"]["plus_code"] == "849VCWC8+R9"
    assert data["drugs"][0]["tier"] == 2
    assert data["drugs"][0]["copay_options"][0]["currency"] == "USD"
    assert data["insurance"][0]["scanned_content"]["rx_plan_id"] == "P1"


def test_undocumented_pa_fields_are_kept_as_sent() -> None:
    raw = body(PA_APPROVED)
    raw["data"]["prescription_transfer"] = {"status": "in_progress", "transfer_attempts": []}
    raw["data"]["outcome"]["appeal_deadline"] = "2026-08-01"
    loaded = load_envelope(raw)["data"]
    assert loaded["prescription_transfer"] == {"status": "in_progress", "transfer_attempts": []}
    assert loaded["outcome"]["appeal_deadline"] == "2026-08-01"


@pytest.mark.parametrize(
    ("name", "path", "value"),
    [
        (BV_LEGACY, ("data", "status"), "escalated_to_human"),
        (BV_LEGACY, ("data", "review_status"), "partially_reviewed"),
        (BV_LEGACY, ("data", "patient_coverage_status"), "coverage_suspended"),
        (BV_LEGACY, ("data", "patient", "gender"), "unknown_future_gender_code"),
        (BV_LEGACY, ("data", "drugs", 0, "coverage"), "covered_with_conditions"),
        (BV_LEGACY, ("data", "drugs", 0, "prior_authorization_required"), "maybe"),
        (BV_LEGACY, ("data", "verification_methods", 0, "type"), "fax_inquiry"),
        (PA_APPROVED, ("data", "status"), "awaiting_pharmacy"),
        (PA_APPROVED, ("data", "outcome", "result"), "Partially Approved"),
        (PA_APPROVED, ("data", "activity_log", 0, "type"), "carrier_pigeon"),
        (PA_MESSAGE, ("data", "message_thread", "messages", 0, "direction"), "internal"),
        (PA_MESSAGE, ("event_type",), "prior_authorization.something_new"),
        (OUTREACH, ("data", "status"), "paused"),
    ],
)
def test_unknown_enum_values_are_accepted(
    name: str, path: tuple[str | int, ...], value: str
) -> None:
    raw = body(name)
    set_path(raw, path, value)
    assert get_path(load_envelope(raw), path) == value


def test_unknown_activity_type_keeps_any_details_object() -> None:
    raw = body(PA_APPROVED)
    details = {"url": ["a", "b"], "duration_seconds": 12}  # not the fax shape: fine here
    raw["data"]["activity_log"][1]["details"] = details
    loaded = load_envelope(raw)["data"]["activity_log"][1]
    assert loaded["type"] == "some_future_type"
    assert loaded["details"] == details


# --- nulls -----------------------------------------------------------------------------------


def test_nulls_in_the_failed_fixture_are_loaded_as_none() -> None:
    data = load_envelope(body(BV_FAILED))["data"]
    drug = data["drugs"][0]
    for key in ("ndc", "coverage", "coverage_detail_code", "prior_authorization_required"):
        assert drug[key] is None
    assert drug["copay"] is None
    assert drug["copay_options"] is None
    assert drug["has_active_prior_auth"] is None
    assert drug["determination_details"]["is_prior_auth_acting_as_exception_request"] is None
    assert data["insurance"][0]["scanned_content"]["error"] is None
    assert data["verification_methods"][0]["transcript"] is None
    assert data["error"]["detail_message"] is None
    assert data["error"]["detail_code"] == "incorrect_member_id"


@pytest.mark.parametrize(
    ("name", "path"),
    [
        (BV_FAILED, ("occurred_at",)),
        (BV_FAILED, ("event_id",)),
        (BV_FAILED, ("description",)),
        (BV_FAILED, ("data", "status")),
        (BV_FAILED, ("data", "drugs")),
        (BV_FAILED, ("data", "patient")),
        (BV_FAILED, ("data", "patient", "address")),
        (BV_FAILED, ("data", "patient", "date_of_birth")),
        (BV_FAILED, ("data", "provider", "in_network_payers")),
        (BV_FAILED, ("data", "priority")),
        (BV_FAILED, ("data", "error")),
        (PA_APPROVED, ("data", "outcome", "authorization_start_date")),
        (PA_APPROVED, ("data", "prescription", "prescription_date")),
        (PA_APPROVED, ("data", "prescription", "quantity")),
        (PA_APPROVED, ("data", "activity_log", 0, "details")),
        (PA_APPROVED, ("data", "activity_log", 0, "created_at")),
        (PA_APPROVED, ("data", "is_appeal")),
        (PA_MESSAGE, ("data", "message_thread", "messages", 0, "timestamp")),
    ],
)
def test_null_is_accepted(name: str, path: tuple[str | int, ...]) -> None:
    raw = body(name)
    set_path(raw, path, None)
    assert get_path(load_envelope(raw), path) is None


def test_null_title_is_fine_when_event_type_is_present() -> None:
    raw = body(BV_FAILED)
    raw["title"] = None
    assert load_envelope(raw)["title"] is None


# --- required parts --------------------------------------------------------------------------


def test_missing_data_is_rejected() -> None:
    raw = body(BV_FAILED)
    del raw["data"]
    assert errors_of(raw) == {"data": ["Missing data for required field."]}


@pytest.mark.parametrize("value", [None, "bv_123", 5, ["a"], True])
def test_data_must_be_an_object(value: Any) -> None:
    raw = body(BV_FAILED)
    raw["data"] = value
    assert list(errors_of(raw)) == ["data"]


@pytest.mark.parametrize("key", ["id", "object"])
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_missing_data_id_or_object_is_rejected(name: str, key: str) -> None:
    raw = body(name)
    del raw["data"][key]
    assert errors_of(raw) == {f"data.{key}": ["Missing data for required field."]}


@pytest.mark.parametrize(("key", "value"), [("id", None), ("id", 42), ("object", None)])
def test_data_id_and_object_must_be_strings(key: str, value: Any) -> None:
    raw = body(BV_LEGACY)
    raw["data"][key] = value
    assert list(errors_of(raw)) == [f"data.{key}"]


@pytest.mark.parametrize("value", ["", " ", "\t\n"])
@pytest.mark.parametrize("key", ["id", "object"])
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_empty_or_blank_data_id_or_object_is_rejected(name: str, key: str, value: str) -> None:
    raw = body(name)
    raw["data"][key] = value
    assert errors_of(raw) == {f"data.{key}": ["Must not be empty or blank."]}


def test_a_non_string_object_is_rejected_by_the_generic_schema() -> None:
    raw = body(PA_APPROVED)
    raw["data"]["object"] = ["prior_authorization"]
    assert errors_of(raw) == {"data.object": ["Not a valid string."]}


def test_neither_event_type_nor_title_is_rejected_on_event_type() -> None:
    raw = body(BV_FAILED)
    del raw["event_type"]
    del raw["title"]
    errors = errors_of(raw)
    assert list(errors) == ["event_type"]
    assert "event_type" in errors["event_type"][0]
    assert "title" in errors["event_type"][0]


def test_null_event_type_and_null_title_are_rejected() -> None:
    raw = body(BV_FAILED)
    raw["event_type"] = None
    raw["title"] = None
    assert list(errors_of(raw)) == ["event_type"]


def test_title_alone_or_event_type_alone_is_enough() -> None:
    legacy = body(BV_LEGACY)
    assert "event_type" not in legacy
    assert load_envelope(legacy)["title"] == "Benefit Verification Updated"
    modern = body(PA_MESSAGE)
    del modern["title"]
    loaded = load_envelope(modern)
    assert loaded["event_type"] == "prior_authorization.message"
    assert loaded["title"] is None


def test_non_string_title_without_event_type_is_rejected_on_both() -> None:
    raw = body(BV_LEGACY)
    raw["title"] = 7
    errors = errors_of(raw)
    assert errors["title"] == ["Not a valid string."]
    assert list(errors) == ["title", "event_type"]


@pytest.mark.parametrize("payload", [[], "text", 3, None])
def test_a_body_that_is_not_an_object_is_rejected(payload: Any) -> None:
    assert errors_of(payload) == {"_schema": ["Invalid input type."]}


def test_errors_in_several_places_are_all_reported() -> None:
    raw = body(PA_MESSAGE)
    del raw["data"]["id"]
    raw["occurred_at"] = "soon"
    raw["data"]["prescription"]["days_supply"] = "28"
    raw["data"]["message_thread"]["messages"][0]["is_resolution"] = "no"
    assert errors_of(raw) == {
        "occurred_at": ["Not a valid datetime."],
        "data.id": ["Missing data for required field."],
        "data.prescription.days_supply": ["Not a valid integer."],
        "data.message_thread.messages.0.is_resolution": ["Not a valid boolean."],
    }


# --- wrong types -----------------------------------------------------------------------------

WRONG_TYPES: list[tuple[str, tuple[str | int, ...], Any, str | None]] = [
    # string fields
    (BV_FAILED, ("title",), 12, "Not a valid string."),
    (BV_FAILED, ("event_type",), ["benefit_verification.status_change"], "Not a valid string."),
    (BV_FAILED, ("event_id",), 1001, "Not a valid string."),
    (BV_LEGACY, ("data", "status"), True, "Not a valid string."),
    (BV_LEGACY, ("data", "drugs", 0, "name"), 5, "Not a valid string."),
    (BV_LEGACY, ("data", "patient", "address", "city"), {"name": "x"}, "Not a valid string."),
    (BV_LEGACY, ("data", "provider", "in_network_payers", 0), 3, "Not a valid string."),
    (OUTREACH, ("data", "prior_authorization_id"), 17, "Not a valid string."),
    # numbers
    (BV_LEGACY, ("data", "drugs", 0, "quantity"), "1", "Not a valid number."),
    (BV_LEGACY, ("data", "drugs", 0, "quantity"), True, "Not a valid number."),
    (
        BV_LEGACY,
        ("data", "drugs", 0, "quantity"),
        float("nan"),
        "Special numeric values (nan or infinity) are not permitted.",
    ),
    (BV_LEGACY, ("data", "drugs", 0, "copay_options", 0, "amount_cents"), "3000", None),
    (BV_LEGACY, ("data", "drugs", 0, "copay_options", 0, "amount_cents"), 30.5, None),
    (BV_LEGACY, ("data", "priority"), True, "Not a valid integer."),
    (PA_APPROVED, ("data", "prescription", "days_supply"), [28], "Not a valid integer."),
    (PA_APPROVED, ("data", "prescription", "quantity"), 1.5, "Not a valid integer."),
    # booleans
    (BV_LEGACY, ("data", "drugs", 0, "has_active_prior_auth"), "true", "Not a valid boolean."),
    (BV_LEGACY, ("data", "drugs", 0, "determination_details", "is_on_formulary"), 1, None),
    (PA_APPROVED, ("data", "is_appeal"), "no", "Not a valid boolean."),
    # dates and datetimes
    (BV_LEGACY, ("data", "patient", "date_of_birth"), "01/01/1980", "Not a valid date."),
    (BV_LEGACY, ("data", "patient", "date_of_birth"), 19800101, "Not a valid date."),
    (PA_APPROVED, ("data", "outcome", "authorization_expiration"), "2027-02-30", None),
    (BV_FAILED, ("occurred_at",), 1722262324, "Not a valid datetime."),
    (BV_FAILED, ("occurred_at",), "last tuesday", "Not a valid datetime."),
    (PA_APPROVED, ("data", "activity_log", 0, "created_at"), "", "Not a valid datetime."),
    (PA_MESSAGE, ("data", "message_thread", "messages", 0, "timestamp"), {}, None),
    # lists
    (BV_LEGACY, ("data", "drugs"), {"name": "Wegovy"}, "Not a valid list."),
    (BV_LEGACY, ("data", "drugs"), "Wegovy", "Not a valid list."),
    (BV_LEGACY, ("data", "provider", "in_network_payers"), "Example", "Not a valid list."),
    (PA_MESSAGE, ("data", "message_thread", "messages", 0, "attachments"), {}, None),
    # objects
    (BV_LEGACY, ("data", "patient"), "Alex Sample", "Invalid input type."),
    (BV_LEGACY, ("data", "drugs", 0), "Wegovy", "Invalid input type."),
    (BV_LEGACY, ("data", "drugs", 0, "determination_details"), [True], "Invalid input type."),
    (BV_LEGACY, ("data", "insurance", 0, "scanned_content"), "n/a", "Invalid input type."),
    (PA_APPROVED, ("data", "outcome"), "Approved", "Invalid input type."),
    (PA_APPROVED, ("data", "prescription", "extra"), ["x"], "Not a valid mapping type."),
    (PA_APPROVED, ("data", "activity_log", 0, "details"), "fax", "Not a valid mapping type."),
    (PA_APPROVED, ("data", "activity_log", 1, "details"), [], "Not a valid mapping type."),
    (PA_APPROVED, ("data", "activity_log", 0, "details", "url"), 5, "Not a valid string."),
]


@pytest.mark.parametrize(("name", "path", "value", "message"), WRONG_TYPES)
def test_wrong_types_are_rejected_with_a_flat_path(
    name: str, path: tuple[str | int, ...], value: Any, message: str | None
) -> None:
    raw = body(name)
    set_path(raw, path, value)
    errors = errors_of(raw)
    key = ".".join(str(part) for part in path)
    assert list(errors) == [key]
    assert len(errors[key]) == 1
    if message is not None:
        assert errors[key] == [message]


def test_the_example_path_from_the_brief() -> None:
    raw = body(BV_LEGACY)
    raw["data"]["drugs"][0]["quantity"] = "one pen"
    assert errors_of(raw) == {"data.drugs.0.quantity": ["Not a valid number."]}


def test_each_bad_list_item_is_reported_by_index() -> None:
    raw = body(BV_LEGACY)
    raw["data"]["drugs"] = [raw["data"]["drugs"][0], {"name": 1}, "x", {"quantity": "2"}]
    assert errors_of(raw) == {
        "data.drugs.1.name": ["Not a valid string."],
        "data.drugs.2": ["Invalid input type."],
        "data.drugs.3.quantity": ["Not a valid number."],
    }


def test_integral_float_is_an_integer() -> None:
    raw = body(BV_LEGACY)
    raw["data"]["priority"] = 2.0
    priority = load_envelope(raw)["data"]["priority"]
    assert priority == 2
    assert type(priority) is int


def test_quantity_types_follow_the_api_reference() -> None:
    prescription_quantity = load_envelope(body(PA_APPROVED))["data"]["prescription"]["quantity"]
    assert prescription_quantity == 4
    assert type(prescription_quantity) is int
    raw = body(BV_LEGACY)
    raw["data"]["drugs"][0]["quantity"] = 2  # a JSON number: loads as float
    drug_quantity = load_envelope(raw)["data"]["drugs"][0]["quantity"]
    assert drug_quantity == 2.0
    assert type(drug_quantity) is float
    raw["data"]["drugs"][0]["quantity"] = 0.5
    assert load_envelope(raw)["data"]["drugs"][0]["quantity"] == 0.5


# --- error messages never echo input ---------------------------------------------------------


def test_error_messages_never_contain_the_input() -> None:
    raw = body(PA_MESSAGE)
    raw["title"] = {"text": CANARY}
    raw["occurred_at"] = CANARY
    raw["event_id"] = [CANARY]
    raw["data"]["id"] = {CANARY: CANARY}
    raw["data"]["status"] = [CANARY]
    raw["data"]["patient"] = CANARY
    raw["data"]["patient_consent_required"] = CANARY
    raw["data"]["diagnoses"] = CANARY
    raw["data"]["insurance"][0] = CANARY
    raw["data"]["prescription"]["quantity"] = CANARY
    raw["data"]["prescription"]["days_supply"] = CANARY
    raw["data"]["prescription"]["extra"] = CANARY
    raw["data"]["outcome"]["authorization_start_date"] = CANARY
    raw["data"]["activity_log"][0]["details"] = {"url": {CANARY: 1}}
    raw["data"]["activity_log"][1]["details"] = CANARY
    raw["data"]["message_thread"]["messages"][0]["timestamp"] = CANARY
    raw["data"]["message_thread"]["is_resolved"] = CANARY
    with pytest.raises(ValidationError) as info:
        load_envelope(raw)
    error = info.value
    assert len(error.messages) == 17
    assert CANARY not in repr(error.messages)
    assert CANARY not in str(error)
    assert CANARY not in repr(error.args)
    assert error.data is None
    assert error.valid_data is None
    # a fresh error: nothing chained that still holds the body
    assert error.__cause__ is None
    assert error.__context__ is None


@pytest.mark.parametrize(
    ("field_name", "value"),
    [("date_of_birth", CANARY), ("date_of_birth", "1980-99-99"), ("created_at", CANARY)],
)
def test_parse_errors_do_not_show_the_parser_message(field_name: str, value: str) -> None:
    """date/datetime.fromisoformat's ValueError repeats the input: it is not shown as the
    cause in a traceback."""
    bv = SCHEMAS_BY_OBJECT["benefit_verification"]
    pa = SCHEMAS_BY_OBJECT["prior_authorization"]
    field = (
        bv.fields["patient"].schema.fields["date_of_birth"]  # type: ignore[attr-defined]
        if field_name == "date_of_birth"
        else pa.fields["activity_log"].inner.schema.fields["created_at"]  # type: ignore[attr-defined]
    )
    with pytest.raises(ValidationError) as info:
        field.deserialize(value)
    assert value not in repr(info.value.messages)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# --- input is not mutated --------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_input_is_not_mutated(name: str) -> None:
    raw = body(name)
    raw["unknown_top"] = {"keep": [1, {"deep": True}]}
    before = copy.deepcopy(raw)
    loaded = load_envelope(raw)
    assert raw == before
    assert loaded is not raw
    assert loaded["data"] is not raw["data"]


def test_input_is_not_mutated_when_rejected() -> None:
    raw = body(PA_APPROVED)
    raw["data"]["prescription"]["prescription_date"] = "bad"
    raw["data"]["outcome"]["authorization_start_date"] = 3
    del raw["data"]["id"]
    before = copy.deepcopy(raw)
    errors_of(raw)
    assert raw == before


def test_loaded_strings_are_the_input_but_dates_are_new_objects() -> None:
    raw = body(PA_APPROVED)
    loaded = load_envelope(raw)["data"]
    assert raw["data"]["outcome"]["authorization_start_date"] == "2026-07-01"
    assert isinstance(loaded["outcome"]["authorization_start_date"], dt.date)


# --- unknown data.object ---------------------------------------------------------------------


def test_unknown_data_object_uses_the_generic_schema() -> None:
    raw = body(PA_APPROVED)
    raw["data"] = {
        "id": "cq_123",
        "object": "clinical_qualification",
        "status": "qualified",
        "drugs": [{"days_supply": "not checked here", "quantity": "x"}],
        "created_at": "2026-07-01T00:00:00",
    }
    before = copy.deepcopy(raw)
    data = load_envelope(raw)["data"]
    assert data == before["data"]  # kept as sent: only id, object and status are checked
    assert data["created_at"] == "2026-07-01T00:00:00"


def test_unknown_data_object_still_needs_id_and_string_status() -> None:
    raw = body(PA_APPROVED)
    raw["data"] = {"object": "clinical_qualification", "status": 3}
    assert errors_of(raw) == {
        "data.id": ["Missing data for required field."],
        "data.status": ["Not a valid string."],
    }


def test_generic_schema_is_not_one_of_the_known_ones() -> None:
    assert RESOURCE_SCHEMA not in SCHEMAS_BY_OBJECT.values()
    assert RESOURCE_SCHEMA.load({"id": "x", "object": "y", "z": [1]}) == {
        "id": "x",
        "object": "y",
        "z": [1],
    }


# --- flatten_errors --------------------------------------------------------------------------


def test_flatten_errors_joins_paths_with_dots() -> None:
    messages = {
        "data": {
            "drugs": {
                0: {"name": ["Not a valid string."]},
                2: {"_schema": ["Invalid input type."]},
            },
            "id": ["Missing data for required field."],
            "patient": {"_schema": ["Invalid input type."]},
        },
        "_schema": ["Invalid input type."],
        "title": "Single message.",
    }
    assert flatten_errors(messages) == {
        "data.drugs.0.name": ["Not a valid string."],
        "data.drugs.2": ["Invalid input type."],
        "data.id": ["Missing data for required field."],
        "data.patient": ["Invalid input type."],
        "_schema": ["Invalid input type."],
        "title": ["Single message."],
    }


def test_flatten_errors_prefix_and_lists() -> None:
    assert flatten_errors({"x": ["a", {"y": ["b"]}]}, prefix="data") == {
        "data.x": ["a"],
        "data.x.y": ["b"],
    }
    assert flatten_errors(["a", "b"]) == {"_schema": ["a", "b"]}
    assert flatten_errors("a", prefix="p") == {"p": ["a"]}
    assert flatten_errors({}) == {}


def test_flatten_errors_merges_messages_for_the_same_path() -> None:
    messages = {"data": {"_schema": ["one"], "x": ["two"]}, "data.x": ["three"]}
    assert flatten_errors(messages) == {"data": ["one"], "data.x": ["two", "three"]}


# --- the fast load path matches marshmallow's own pipeline -----------------------------------


def marshmallow_pipeline_load(payload: Any) -> Any:
    """``partial=False`` means the same as the default, but makes every schema run
    marshmallow's own ``Schema.load`` instead of the single-pass fast path."""
    return ENVELOPE_SCHEMA.load(payload, partial=False)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fast_path_and_marshmallow_pipeline_give_the_same_result(name: str) -> None:
    raw = body(name)
    raw["extra_top"] = 1
    raw["data"]["extra_in_data"] = {"a": 1}
    assert ENVELOPE_SCHEMA.load(raw) == marshmallow_pipeline_load(raw)


MUTATIONS: list[Callable[[dict[str, Any]], None]] = [
    lambda raw: raw.pop("data"),
    lambda raw: raw["data"].pop("id"),
    lambda raw: raw["data"].update(object=5),
    lambda raw: raw["data"].update(drugs={"a": 1}),
    lambda raw: raw["data"].update(drugs=["x", {"quantity": "1", "name": 2}]),
    lambda raw: raw["data"]["drug_history"].update(currently_taking_drugs=[{"name": []}]),
    lambda raw: raw["data"].update(patient="x", priority="high"),
    lambda raw: raw["data"]["patient"].update(address=[], date_of_birth="1980-1-1"),
    lambda raw: raw.update(occurred_at="x", title=1, data=[]),
]


@pytest.mark.parametrize("mutate", MUTATIONS)
def test_fast_path_and_marshmallow_pipeline_report_the_same_errors(
    mutate: Callable[[dict[str, Any]], None],
) -> None:
    raw = body(BV_FAILED)
    mutate(raw)
    with pytest.raises(ValidationError) as fast:
        ENVELOPE_SCHEMA.load(raw)
    with pytest.raises(ValidationError) as stock:
        marshmallow_pipeline_load(raw)
    assert flatten_errors(fast.value.messages) == flatten_errors(stock.value.messages)


# --- helpers ---------------------------------------------------------------------------------


def get_path(value: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


def set_path(value: Any, path: tuple[str | int, ...], new: Any) -> None:
    get_path(value, path[:-1])[path[-1]] = new


def test_every_schema_takes_the_fast_path() -> None:
    """A hook or data_key added later would silently send a schema down the slow pipeline."""
    schemas = [ENVELOPE_SCHEMA, RESOURCE_SCHEMA, *SCHEMAS_BY_OBJECT.values()]
    seen = 0
    while schemas:
        schema = schemas.pop()
        assert schema._plan() is not None, type(schema).__name__  # type: ignore[attr-defined]
        seen += 1
        for field in schema.load_fields.values():
            inner = getattr(field, "inner", field)
            if hasattr(inner, "schema"):
                schemas.append(inner.schema)
    assert seen > 20
