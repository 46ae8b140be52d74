"""Marshmallow schemas for Develop Health webhook bodies.

A body is an envelope (``title``, ``description``, ``data`` and, in newer deliveries,
``event_type``, ``event_id``, ``occurred_at``) around one API resource. ``data.object`` names the
resource; :data:`SCHEMAS_BY_OBJECT` maps it to a schema and any other value falls back to
:data:`RESOURCE_SCHEMA` (``id``, ``object``, ``status``).

The vendor adds fields and enum values over time, so:

* unknown keys are kept at every level (``unknown = INCLUDE``);
* enum-like values (``status``, ``coverage``, ``gender``, activity ``type``, ...) are plain
  strings, never ``OneOf``;
* every field except ``data.id`` and ``data.object`` (non-blank strings) is optional and
  accepts ``null``.

Types are still checked: a string field given a number, a list given an object, an object given
a string... are errors. Dates load as :class:`datetime.date`; datetimes load as timezone-aware
:class:`datetime.datetime` (a naive value is taken as UTC). Error messages are marshmallow's
fixed sentences and never repeat an input value.

Speed: this runs on every webhook request, so the fields below override ``deserialize`` with a
type check and nothing else (they take no validators, ``pre_load`` or ``post_load``), and
:class:`FastSchema` loads with a single pass over the input keys instead of marshmallow's general
pipeline. Anything the fast path does not cover (hooks, ``data_key``/``attribute``, ``partial``,
an explicit ``unknown``) goes through marshmallow's own :meth:`Schema.load`, which gives the same
results for these schemas.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, missing

if TYPE_CHECKING:
    from collections.abc import Sequence

    from marshmallow import types as ma_types

__all__ = [
    "ENVELOPE_SCHEMA",
    "NO_EVENT_TYPE_MESSAGE",
    "RESOURCE_SCHEMA",
    "SCHEMAS_BY_OBJECT",
    "ActivityLogEntrySchema",
    "AddressSchema",
    "BenefitVerificationErrorSchema",
    "BenefitVerificationSchema",
    "CopayOptionSchema",
    "DeterminationDetailsSchema",
    "DiagnosisSchema",
    "DrugCoverageSchema",
    "DrugHistoryItemSchema",
    "DrugHistorySchema",
    "EnvelopeSchema",
    "FastSchema",
    "FaxDetailsSchema",
    "InsuranceContentSchema",
    "InsuranceSchema",
    "MessageAttachmentSchema",
    "MessageSchema",
    "MessageThreadSchema",
    "OutcomeSchema",
    "PatientSchema",
    "PrescriptionSchema",
    "PriorAuthorizationSchema",
    "ProviderOutreachSchema",
    "ProviderSchema",
    "ResourceSchema",
    "ScannedContentSchema",
    "VerificationMethodSchema",
    "flatten_errors",
    "load_envelope",
]

UTC = dt.timezone.utc

#: Key marshmallow uses for errors about an object as a whole (e.g. "Invalid input type.").
_SCHEMA_KEY = "_schema"

#: Added on ``event_type`` when neither ``event_type`` nor ``title`` is a string.
NO_EVENT_TYPE_MESSAGE = "Either event_type or title (older deliveries) must be a string."


# --------------------------------------------------------------------------------------------
# Fields: one type check each, nothing else.
# --------------------------------------------------------------------------------------------


def _absent(field: fields.Field[Any], value: Any) -> Any:
    """Handle a missing key or a JSON ``null`` exactly as ``Field.deserialize`` does."""
    if value is None:
        if field.allow_none:
            return None
        raise field.make_error("null")
    if field.required:
        raise field.make_error("required")
    default = field.load_default
    return default() if callable(default) else default


class _String(fields.String):
    """A ``str``; anything else (including bytes) is "Not a valid string."."""

    def deserialize(
        self,
        value: Any,
        attr: str | None = None,
        data: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if value.__class__ is str:
            return value
        if value is None or value is missing:
            return _absent(self, value)
        if isinstance(value, str):
            return str(value)
        raise self.make_error("invalid")


class _Key(_String):
    """A ``str`` with a non-blank character: ``data.id`` and ``data.object`` name the resource."""

    default_error_messages = {"empty": "Must not be empty or blank."}

    def deserialize(
        self,
        value: Any,
        attr: str | None = None,
        data: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if value.__class__ is str and value.strip():  # strip() returns the same str then
            return value
        if isinstance(value, str) and not value.strip():
            raise self.make_error("empty")
        return super().deserialize(value, attr, data, **kwargs)


class _Integer(fields.Integer):
    """An ``int`` (or an integral float such as ``28.0``, as JSON Schema allows); not a bool,
    not a numeric string."""

    def deserialize(
        self,
        value: Any,
        attr: str | None = None,
        data: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        cls = value.__class__
        if cls is int:
            return value
        if value is None or value is missing:
            return _absent(self, value)
        if cls is float and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise self.make_error("invalid")


class _Float(fields.Float):
    """A finite JSON number (int or float), loaded as ``float``; not a bool, not a string."""

    def deserialize(
        self,
        value: Any,
        attr: str | None = None,
        data: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        cls = value.__class__
        if cls is float:
            if math.isfinite(value):
                return value
            raise self.make_error("special")
        if value is None or value is missing:
            return _absent(self, value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                raise self.make_error("too_large") from None
            if math.isfinite(number):
                return number
            raise self.make_error("special")
        raise self.make_error("invalid")


class _Boolean(fields.Boolean):
    """``true`` or ``false`` only (marshmallow's also takes "yes", 1, "on", ...)."""

    def deserialize(
        self,
        value: Any,
        attr: str | None = None,
        data: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if value is True or value is False:
            return value
        if value is None or value is missing:
            return _absent(self, value)
        raise self.make_error("invalid")


class _Date(fields.Date):
    """An ISO 8601 date string, loaded as :class:`datetime.date`."""

    default_error_messages = {"invalid": "Not a valid date."}

    def deserialize(
        self,
        value: Any,
        attr: str | None = None,
        data: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if value.__class__ is str:
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                raise self.make_error("invalid") from None
        if value is None or value is missing:
            return _absent(self, value)
        raise self.make_error("invalid")


# Python 3.10's fromisoformat takes neither "Z" nor fractions other than 3 or 6 digits.
_ISO_DATETIME = re.compile(
    r"(?P<main>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2})?)"
    r"(?:[.,](?P<fraction>\d+))?"
    r"(?P<offset>[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)


def _parse_datetime(text: str) -> dt.datetime:
    """Parse an ISO 8601 datetime; raise ValueError (without the input) if it is not one."""
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        pass
    match = _ISO_DATETIME.fullmatch(text)
    if match is None:
        raise ValueError("not an ISO 8601 datetime")
    fraction, offset = match["fraction"], match["offset"]
    normal = match["main"]
    if fraction:
        normal += "." + (fraction + "000000")[:6]
    if offset in ("Z", "z"):
        normal += "+00:00"
    elif offset:
        normal += offset[:3] + ":" + (offset[-2:] if len(offset) > 3 else "00")
    try:
        return dt.datetime.fromisoformat(normal)
    except ValueError:
        raise ValueError("not an ISO 8601 datetime") from None


class _DateTime(fields.AwareDateTime):
    """An ISO 8601 datetime string, loaded as an aware :class:`datetime.datetime`; a value
    without an offset is taken as UTC."""

    default_error_messages = {
        "invalid": "Not a valid datetime.",
        "range": "Out of range once converted to UTC.",
    }

    def deserialize(
        self,
        value: Any,
        attr: str | None = None,
        data: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if value.__class__ is str:
            try:
                parsed = _parse_datetime(value)
            except ValueError:
                raise self.make_error("invalid") from None
            if parsed.tzinfo is None or parsed.utcoffset() is None:
                return parsed.replace(tzinfo=UTC)
            # 9999-12-31T23:59-01:00 is past datetime.max in UTC: a handler's astimezone()
            # would raise on every retry. Offsets are under a day, so only these years can.
            if parsed.year in (1, 9999):
                try:
                    parsed.astimezone(UTC)
                except OverflowError:
                    raise self.make_error("range") from None
            return parsed
        if value is None or value is missing:
            return _absent(self, value)
        raise self.make_error("invalid")


class _Dict(fields.Dict):
    """Any JSON object, kept as a (shallow-copied) ``dict``; its content is not checked."""

    def deserialize(
        self,
        value: Any,
        attr: str | None = None,
        data: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if value.__class__ is dict or isinstance(value, Mapping):
            return dict(value)
        if value is None or value is missing:
            return _absent(self, value)
        raise self.make_error("invalid")


# fields.List is generic in marshmallow 4 only; subscripting it would fail at runtime on 3.x.
class _List(fields.List):  # type: ignore[type-arg]
    """A JSON array whose items are loaded by ``inner``; errors are keyed by item index."""

    def deserialize(
        self,
        value: Any,
        attr: str | None = None,
        data: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if value.__class__ is not list:
            if value is None or value is missing:
                return _absent(self, value)
            if not isinstance(value, (list, tuple)):
                raise self.make_error("invalid")
        inner = self.inner
        result: list[Any] = []
        errors: dict[int, Any] | None = None
        for index, item in enumerate(value):
            try:
                result.append(inner.deserialize(item, **kwargs))
            except ValidationError as error:
                if errors is None:
                    errors = {}
                errors[index] = error.messages
                if error.valid_data is not None:
                    result.append(error.valid_data)
        if errors:
            raise ValidationError(errors, valid_data=result)
        return result


class _Nested(fields.Nested):
    """A nested object (or, for a ``many=True`` schema, a JSON array of objects)."""

    def deserialize(
        self,
        value: Any,
        attr: str | None = None,
        data: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if value is None or value is missing:
            return _absent(self, value)
        if kwargs:  # e.g. partial=..., from marshmallow's own Schema.load
            return super().deserialize(value, attr, data, **kwargs)
        schema = self.schema
        if schema.many and not isinstance(value, (list, tuple)):
            raise self.make_error("type")
        return schema.load(value)


# --------------------------------------------------------------------------------------------
# The fast schema base
# --------------------------------------------------------------------------------------------


class FastSchema(Schema):
    """Base of every schema here: keeps unknown keys, loads in one pass over the input.

    ``load(data)`` and ``load(data, many=...)`` take the fast path when the schema has no
    hooks (``pre_load``, ``validates``, ...) and no field uses ``data_key`` or ``attribute``.
    It checks each input key against ``load_fields`` (fields whose key is absent cost nothing
    unless they are required or have a ``load_default``), keeps unknown keys as they are and
    raises :class:`~marshmallow.ValidationError` with marshmallow's message layout. Any other
    call (``partial=...``, ``unknown=...``) runs marshmallow's :meth:`Schema.load`.
    """

    class Meta:
        unknown = INCLUDE

    # (load_fields it was built from, fields to run when their key is absent), or None.
    _fast_plan: tuple[dict[str, Any], tuple[tuple[str, fields.Field[Any]], ...]] | None = None

    def _plan(self) -> tuple[tuple[str, fields.Field[Any]], ...] | None:
        """Fields to run for absent keys, or None when this schema needs the full pipeline."""
        load_fields = self.load_fields
        plan = self._fast_plan
        if plan is not None and plan[0] is load_fields:
            return plan[1]
        hooks = getattr(self, "_hooks", None)  # marshmallow's registry of decorated methods
        if hooks is None or any(hooks.values()) or self.unknown != INCLUDE or self.partial:
            return None
        if any(f.data_key is not None or f.attribute is not None for f in load_fields.values()):
            return None
        absent = tuple(
            (name, field)
            for name, field in load_fields.items()
            if field.required or field.load_default is not missing
        )
        self._fast_plan = (load_fields, absent)
        return absent

    def load(
        self,
        data: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        many: bool | None = None,
        partial: bool | ma_types.StrSequenceOrSet | None = None,
        unknown: ma_types.UnknownOption | None = None,
    ) -> Any:
        absent = None if partial is not None or unknown is not None else self._plan()
        if absent is None:
            return super().load(data, many=many, partial=partial, unknown=unknown)
        if not (self.many if many is None else many):
            return self._load_object(data, absent)
        if not isinstance(data, (list, tuple)):
            raise ValidationError({_SCHEMA_KEY: [self.error_messages["type"]]})
        result: list[Any] = []
        errors: dict[int, Any] = {}
        for index, item in enumerate(data):
            try:
                result.append(self._load_object(item, absent))
            except ValidationError as error:
                errors[index] = error.messages
                result.append(error.valid_data)
        if errors:
            raise ValidationError(errors, valid_data=result)
        return result

    def _load_object(
        self, data: Any, absent: tuple[tuple[str, fields.Field[Any]], ...]
    ) -> dict[str, Any]:
        if data.__class__ is not dict and not isinstance(data, Mapping):
            raise ValidationError({_SCHEMA_KEY: [self.error_messages["type"]]})
        load_fields = self.load_fields
        result: dict[str, Any] = {}
        errors: dict[str, Any] | None = None
        for key, raw in data.items():
            field = load_fields.get(key)
            if field is None:
                result[key] = raw
                continue
            try:
                value = field.deserialize(raw, key, data)
            except ValidationError as error:
                if errors is None:
                    errors = {}
                errors[key] = error.messages
                if error.valid_data:
                    result[key] = error.valid_data
                continue
            if value is not missing:
                result[key] = value
        for name, field in absent:
            if name not in data:
                try:
                    value = field.deserialize(missing, name, data)
                except ValidationError as error:
                    if errors is None:
                        errors = {}
                    errors[name] = error.messages
                    continue
                if value is not missing:
                    result[name] = value
        if errors:
            raise ValidationError(errors, valid_data=result)
        return result


# Field factories: every field is optional and nullable unless said otherwise.
def _text() -> _String:
    return _String(allow_none=True)


def _integer() -> _Integer:
    return _Integer(allow_none=True)


def _number() -> _Float:
    return _Float(allow_none=True)


def _boolean() -> _Boolean:
    return _Boolean(allow_none=True)


def _date() -> _Date:
    return _Date(allow_none=True)


def _datetime() -> _DateTime:
    return _DateTime(allow_none=True)


def _object() -> _Dict:
    return _Dict(allow_none=True)


def _one(schema: Schema) -> _Nested:
    return _Nested(schema, allow_none=True)


def _many(schema: Schema) -> _List:
    return _List(_Nested(schema), allow_none=True)


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


class AddressSchema(FastSchema):
    street = _text()
    street_line_2 = _text()
    city = _text()
    state_province = _text()
    zip_postal_code = _text()
    country = _text()


class PatientSchema(FastSchema):
    internal_id = _text()
    first_name = _text()
    last_name = _text()
    gender = _text()
    date_of_birth = _date()
    address = _one(AddressSchema())
    phone = _text()
    email = _text()
    mrn = _text()


class ProviderSchema(FastSchema):
    first_name = _text()
    last_name = _text()
    address = _one(AddressSchema())
    npi = _text()
    phone = _text()
    fax = _text()
    in_network_payers = _List(_String(), allow_none=True)


class DiagnosisSchema(FastSchema):
    code = _text()


class InsuranceContentSchema(FastSchema):
    """Insurance card details (``insurance[].discrete_content``)."""

    client_name = _text()
    group_number = _text()
    member_name = _text()
    member_number = _text()
    payer_name = _text()
    plan_name = _text()
    rx_bin = _text()
    rx_group = _text()
    rx_pcn = _text()


class ScannedContentSchema(InsuranceContentSchema):
    """What was read from an insurance card image; ``error`` when it could not be read."""

    error = _text()


class InsuranceSchema(FastSchema):
    scanned_content = _one(ScannedContentSchema())
    discrete_content = _one(InsuranceContentSchema())
    url = _text()


class ResourceSchema(FastSchema):
    """Any ``data`` resource: what every ``data.object`` has. Used for unknown objects."""

    id = _Key(required=True)
    object = _Key(required=True)
    status = _text()


# --------------------------------------------------------------------------------------------
# data.object == "benefit_verification"
# --------------------------------------------------------------------------------------------


class CopayOptionSchema(FastSchema):
    amount_cents = _integer()
    supply_duration_days = _integer()


class DeterminationDetailsSchema(FastSchema):
    is_on_formulary = _boolean()
    is_explicit_plan_exclusion = _boolean()
    is_prior_auth_acting_as_exception_request = _boolean()


class DrugCoverageSchema(FastSchema):
    name = _text()
    dosage = _text()
    quantity = _number()
    ndc = _text()
    coverage = _text()
    coverage_detail_code = _text()
    prior_authorization_required = _text()
    copay = _text()
    copay_options = _many(CopayOptionSchema())
    determination_details = _one(DeterminationDetailsSchema())
    has_active_prior_auth = _boolean()


class DrugHistoryItemSchema(FastSchema):
    name = _text()


class DrugHistorySchema(FastSchema):
    currently_taking_drugs = _many(DrugHistoryItemSchema())
    previously_taken_drugs = _many(DrugHistoryItemSchema())


class VerificationMethodSchema(FastSchema):
    id = _text()
    type = _text()
    transcript = _text()
    recording_url = _text()


class BenefitVerificationErrorSchema(FastSchema):
    title = _text()
    code = _text()
    detail_code = _text()
    message = _text()
    detail_message = _text()


class BenefitVerificationSchema(ResourceSchema):
    status_description = _text()
    review_status = _text()
    drugs = _many(DrugCoverageSchema())
    drug_history = _one(DrugHistorySchema())
    diagnoses = _many(DiagnosisSchema())
    patient = _one(PatientSchema())
    provider = _one(ProviderSchema())
    insurance = _many(InsuranceSchema())
    pharmacy_benefit_manager_name = _text()
    patient_coverage_status = _text()
    verification_methods = _many(VerificationMethodSchema())
    patient_plan_fund_source = _text()
    patient_coverage_type = _text()
    priority = _integer()
    error = _one(BenefitVerificationErrorSchema())


# --------------------------------------------------------------------------------------------
# data.object == "prior_authorization"
# --------------------------------------------------------------------------------------------


class OutcomeSchema(FastSchema):
    result = _text()
    detail_code = _text()
    detail = _text()
    client_code = _text()
    authorization_start_date = _date()
    authorization_expiration = _date()


class PrescriptionSchema(FastSchema):
    days_supply = _integer()
    quantity = _integer()  # an integer in the API reference (a drug's BV quantity is a number)
    directions = _text()
    drug_name = _text()
    strength = _text()
    dose_form = _text()
    route_of_administration = _text()
    prescription_date = _datetime()
    extra = _object()


class FaxDetailsSchema(FastSchema):
    url = _text()


class _ActivityDetails(_Dict):
    """``activity_log[].details``: checked against the documented shape for the entry's
    ``type``; for types this package does not know yet, any object is accepted."""

    by_type: Mapping[str, Schema] = MappingProxyType(
        {"sent_fax": FaxDetailsSchema(), "received_fax": FaxDetailsSchema()}
    )

    def deserialize(
        self,
        value: Any,
        attr: str | None = None,
        data: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if value is None or value is missing:
            return _absent(self, value)
        entry_type = data.get("type") if data is not None else None
        schema = self.by_type.get(entry_type) if isinstance(entry_type, str) else None
        if schema is None:
            return super().deserialize(value, attr, data, **kwargs)
        if not isinstance(value, Mapping):
            raise self.make_error("invalid")
        return schema.load(value)


class ActivityLogEntrySchema(FastSchema):
    id = _text()
    type = _text()
    created_at = _datetime()
    details = _ActivityDetails(allow_none=True)


class MessageAttachmentSchema(FastSchema):
    id = _text()
    file_name = _text()
    url = _text()


class MessageSchema(FastSchema):
    id = _text()
    timestamp = _datetime()
    content = _text()
    sent_by_name = _text()
    direction = _text()
    is_resolution = _boolean()
    attachments = _many(MessageAttachmentSchema())


class MessageThreadSchema(FastSchema):
    is_resolved = _boolean()
    messages = _many(MessageSchema())


class PriorAuthorizationSchema(ResourceSchema):
    url = _text()
    outcome = _one(OutcomeSchema())
    diagnoses = _many(DiagnosisSchema())
    patient = _one(PatientSchema())
    insurance = _many(InsuranceSchema())
    prescription = _one(PrescriptionSchema())
    provider = _one(ProviderSchema())
    activity_log = _many(ActivityLogEntrySchema())
    is_appeal = _boolean()
    patient_consent_required = _boolean()
    message_thread = _one(MessageThreadSchema())


# --------------------------------------------------------------------------------------------
# data.object == "provider_outreach"
# --------------------------------------------------------------------------------------------


class ProviderOutreachSchema(ResourceSchema):
    outreach_sequence_id = _text()
    prior_authorization_id = _text()


# --------------------------------------------------------------------------------------------
# The envelope
# --------------------------------------------------------------------------------------------

#: Generic schema for a ``data.object`` not in :data:`SCHEMAS_BY_OBJECT`.
RESOURCE_SCHEMA: Schema = ResourceSchema()

#: ``data.object`` value -> schema instance that loads that resource.
SCHEMAS_BY_OBJECT: Mapping[str, Schema] = MappingProxyType(
    {
        "benefit_verification": BenefitVerificationSchema(),
        "prior_authorization": PriorAuthorizationSchema(),
        "provider_outreach": ProviderOutreachSchema(),
    }
)


class _ResourceField(_Dict):
    """The envelope's ``data``: an object loaded with the schema its ``object`` names."""

    def deserialize(
        self,
        value: Any,
        attr: str | None = None,
        data: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if value is None or value is missing:
            return _absent(self, value)
        if not isinstance(value, Mapping):
            raise self.make_error("invalid")
        name = value.get("object")
        schema = SCHEMAS_BY_OBJECT.get(name) if isinstance(name, str) else None
        if schema is None:
            schema = RESOURCE_SCHEMA
        if kwargs:
            return schema.load(value, partial=kwargs.get("partial"))
        return schema.load(value)


class EnvelopeSchema(FastSchema):
    """The whole body. :func:`load_envelope` adds the ``event_type``/``title`` check."""

    title = _String(load_default=None)
    description = _String(load_default=None)
    event_type = _String(load_default=None)
    event_id = _String(load_default=None)
    occurred_at = _DateTime(load_default=None)
    data = _ResourceField(required=True)


ENVELOPE_SCHEMA: Schema = EnvelopeSchema()


def flatten_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """Flatten marshmallow's nested error messages into ``{"dotted.path": [messages]}``.

    ``{"data": {"drugs": {0: {"name": ["Not a valid string."]}}}}`` becomes
    ``{"data.drugs.0.name": ["Not a valid string."]}``. Errors about an object as a whole
    (marshmallow's ``_schema`` key) are reported on the object's own path; at the top level,
    with no prefix, they stay under ``"_schema"``.
    """
    flat: dict[str, list[str]] = {}
    _flatten_into(flat, messages, prefix)
    return flat


def _flatten_into(flat: dict[str, list[str]], messages: Any, path: str) -> None:
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            # "_schema" holds errors about the object itself: report them on its own path.
            child = path if key == _SCHEMA_KEY else f"{path}.{key}" if path else str(key)
            _flatten_into(flat, value, child)
    elif isinstance(messages, (list, tuple)):
        for item in messages:
            _flatten_into(flat, item, path)
    else:
        flat.setdefault(path or _SCHEMA_KEY, []).append(str(messages))


def load_envelope(body: dict[str, Any]) -> dict[str, Any]:
    """Validate and load one webhook body (the parsed JSON object); ``body`` is not modified.

    Returns a dict with ``title``, ``description``, ``event_type``, ``event_id`` (``None``
    when absent), ``occurred_at`` (an aware datetime or ``None``), ``data`` (the resource,
    loaded with the schema that ``data.object`` selects; unknown objects use
    :data:`RESOURCE_SCHEMA`) and any unknown top-level keys, kept as sent.

    Raises :class:`marshmallow.ValidationError` whose ``messages`` is flat:
    ``{"data.drugs.0.name": ["Not a valid string."], "data.id": [...]}``.
    """
    errors: dict[str, list[str]] = {}
    result: dict[str, Any] = {}
    try:
        result = ENVELOPE_SCHEMA.load(body)
    except ValidationError as error:
        errors = flatten_errors(error.messages)
    if (
        isinstance(body, Mapping)
        and not isinstance(body.get("event_type"), str)
        and not isinstance(body.get("title"), str)
        and "event_type" not in errors
    ):
        errors["event_type"] = [NO_EVENT_TYPE_MESSAGE]
    if errors:
        raise ValidationError(errors)
    return result


def _prime(schema: Schema) -> None:
    """Build nested schemas and fast-path plans now, not during the first request."""
    if isinstance(schema, FastSchema):
        schema._plan()
    for field in schema.load_fields.values():
        inner = field.inner if isinstance(field, fields.List) else field
        if isinstance(inner, fields.Nested):
            _prime(inner.schema)
        elif isinstance(inner, _ActivityDetails):
            for nested in inner.by_type.values():
                _prime(nested)


for _schema in (ENVELOPE_SCHEMA, RESOURCE_SCHEMA, *SCHEMAS_BY_OBJECT.values()):
    _prime(_schema)
del _schema
