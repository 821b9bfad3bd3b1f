"""FHIR R4 ingestion, pure: raw bytes in, IngestedRecords or a Rejection out.

R4 input is validated with fhir.resources' R4B models: R4B changed no element of the
resources ingested here (Patient), so an R4 Patient is a valid R4B Patient and vice versa.
On top of the structural check, rules that matter clinically: a resource id, an
administrative gender from its value set, and meta.lastUpdated with a zone when present.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from concord.deadletters import Rejection
from concord.events.models import IngestedRecord, Provenance
from concord.events.raw import RawEvent

SOURCE_HEADER = "source"
MAX_SOURCE_LENGTH = 128
ADMINISTRATIVE_GENDER = frozenset({"male", "female", "other", "unknown"})

Validator = Callable[[Mapping[str, Any]], Rejection | None]


def _validate_patient(resource: Mapping[str, Any]) -> Rejection | None:
    try:
        Patient.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(part) for part in ("Patient", *first["loc"]))
        fields = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
        return Rejection(
            "FHIR_INVALID",
            f"Patient fails FHIR R4 validation at {', '.join(fields)} ({first['type']})",
            location=path,
        )
    gender = resource.get("gender")
    if gender is not None and gender not in ADMINISTRATIVE_GENDER:
        return Rejection(
            "FHIR_INVALID",
            "Patient.gender is not a code of administrative-gender "
            f"({', '.join(sorted(ADMINISTRATIVE_GENDER))})",
            location="Patient.gender",
        )
    return None


SUPPORTED: dict[str, Validator] = {"Patient": _validate_patient}


def ingest_fhir(raw: RawEvent, *, max_payload_bytes: int) -> list[IngestedRecord] | Rejection:
    """Validate one raw FHIR event: a resource, or a Bundle of them (all or nothing)."""
    if not raw.value:
        return Rejection("EMPTY_PAYLOAD", "the record has no value")
    if len(raw.value) > max_payload_bytes:
        return Rejection(
            "PAYLOAD_TOO_LARGE", f"{len(raw.value)} bytes exceeds the limit of {max_payload_bytes}"
        )
    source_or_rejection = _source(raw)
    if isinstance(source_or_rejection, Rejection):
        return source_or_rejection
    source = source_or_rejection
    try:
        document = orjson.loads(raw.value)
    except orjson.JSONDecodeError:
        return Rejection("MALFORMED_JSON", "the value is not valid UTF-8 JSON")
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        return Rejection("NOT_FHIR", "the JSON is not an object with a resourceType")
    if document["resourceType"] == "Bundle":
        return _ingest_bundle(raw, source, document)
    outcome = _ingest_resource(raw, source, document, "")
    return [outcome] if isinstance(outcome, IngestedRecord) else outcome


def _ingest_bundle(
    raw: RawEvent, source: str, bundle: Mapping[str, Any]
) -> list[IngestedRecord] | Rejection:
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        return Rejection("FHIR_INVALID", "Bundle.entry is not an array", location="Bundle.entry")
    if not entries:
        return Rejection("EMPTY_BUNDLE", "the Bundle has no entries", location="Bundle.entry")
    records: list[IngestedRecord] = []
    for index, entry in enumerate(entries):
        where = f"Bundle.entry[{index}].resource"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            return Rejection("NOT_FHIR", "a Bundle entry holds no FHIR resource", location=where)
        outcome = _ingest_resource(raw, source, resource, where)
        if isinstance(outcome, Rejection):
            return outcome
        records.append(outcome)
    return records


def _ingest_resource(
    raw: RawEvent, source: str, resource: Mapping[str, Any], where: str
) -> IngestedRecord | Rejection:
    resource_type = resource["resourceType"]
    validator = SUPPORTED.get(resource_type)
    if validator is None:
        # Name the type only when it is one FHIR defines: anything else is arbitrary input.
        named = resource_type if _is_fhir_type(resource_type) else "an unknown resource type"
        return Rejection(
            "UNSUPPORTED_RESOURCE_TYPE",
            f"{named} is not ingested yet",
            location=where or None,
        )
    rejection = validator(resource)
    if rejection is not None:
        if where and rejection.location:
            location = where + rejection.location.removeprefix(resource_type)
            return Rejection(rejection.reason_code, rejection.reason, location)
        return rejection
    resource_id = resource.get("id")
    if not isinstance(resource_id, str) or not resource_id:
        return Rejection(
            "MISSING_RESOURCE_ID",
            f"the {resource_type} has no id",
            location=f"{where or resource_type}.id",
        )
    meta = resource.get("meta") or {}
    version = meta.get("versionId")
    last_updated = meta.get("lastUpdated")
    event_time = _event_time(last_updated, raw.received_time)
    if event_time is None:
        return Rejection(
            "FHIR_INVALID",
            "meta.lastUpdated must be an instant with a time zone",
            location=f"{where or resource_type}.meta.lastUpdated",
        )
    payload = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
    record_ref = f"{resource_type}/{resource_id}"
    identity = f"{source}\x1f{record_ref}\x1f{version or hashlib.sha256(payload).hexdigest()}"
    return IngestedRecord(
        record_id=hashlib.sha256(identity.encode()).hexdigest()[:32],
        format="FHIR_R4",
        resource_type=resource_type,
        payload=payload,
        provenance=Provenance(
            source_system=source,
            source_record_id=record_ref,
            source_record_version=version,
            event_time=event_time,
            received_time=raw.received_time,
            raw_topic=raw.topic,
            raw_partition=raw.partition,
            raw_offset=raw.offset,
            payload_sha256=hashlib.sha256(raw.value or b"").hexdigest(),
        ),
    )


def _event_time(last_updated: object, received_time: datetime) -> datetime | None:
    """meta.lastUpdated; a resource without one became true when we heard of it."""
    if last_updated is None:
        return received_time
    try:
        parsed = datetime.fromisoformat(str(last_updated))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _source(raw: RawEvent) -> str | Rejection:
    value = raw.header(SOURCE_HEADER)
    if value is None or not value.strip():
        return Rejection("MISSING_SOURCE_HEADER", "the Kafka header 'source' is missing or empty")
    try:
        source = value.decode("utf-8").strip()
    except UnicodeDecodeError:
        source = ""
    if not source or len(source) > MAX_SOURCE_LENGTH or not source.isprintable():
        return Rejection(
            "INVALID_SOURCE_HEADER",
            f"the 'source' header must be printable UTF-8 of 1-{MAX_SOURCE_LENGTH} characters",
        )
    return source


def _is_fhir_type(name: str) -> bool:
    try:
        get_fhir_model_class(name)
    except (KeyError, ValueError, AttributeError, ImportError):
        return False
    return True
