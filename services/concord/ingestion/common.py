"""What every raw format's ingestion shares: the sending system, size limits, ids, provenance."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from concord.deadletters import Rejection
from concord.events.models import (
    IngestedRecord,
    IngestionWarning,
    Provenance,
    RecordFormat,
    RecordOperation,
)
from concord.events.raw import RawEvent

SOURCE_HEADER = "source"
# On a concord.ingested record that carries warnings: how many, so that `concord warnings list`
# decodes only those records.
WARNINGS_HEADER = "concord-warnings"
MAX_SOURCE_LENGTH = 128


def check_envelope(raw: RawEvent, *, max_payload_bytes: int) -> str | Rejection:
    """The raw event's sending system, once the value is known to be non-empty and in bounds."""
    if not raw.value:
        return Rejection("EMPTY_PAYLOAD", "the record has no value")
    if len(raw.value) > max_payload_bytes:
        return Rejection(
            "PAYLOAD_TOO_LARGE", f"{len(raw.value)} bytes exceeds the limit of {max_payload_bytes}"
        )
    return source_of(raw)


def load_json(raw: RawEvent, *, max_payload_bytes: int) -> tuple[str, Any] | Rejection:
    """The sending system and the parsed JSON value of a raw event."""
    source = check_envelope(raw, max_payload_bytes=max_payload_bytes)
    if isinstance(source, Rejection):
        return source
    try:
        return source, orjson.loads(raw.value or b"")
    except orjson.JSONDecodeError:
        return Rejection("MALFORMED_JSON", "the value is not valid UTF-8 JSON")


def instant(value: object) -> datetime | None:
    """An ISO 8601 date-time with its zone, or None (absent, malformed, or without a zone)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def source_of(raw: RawEvent) -> str | Rejection:
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


def record_id(source: str, record_ref: str, version: str, operation: str = "UPSERT") -> str:
    """Deterministic: the same (source, record, version) always gets the same id, so a
    redelivered or re-sent version is recognised downstream and by de-duplication. A delete
    that names the version it deletes is a different record from that version."""
    identity = f"{source}\x1f{record_ref}\x1f{version}"
    if operation != "UPSERT":
        identity += f"\x1f{operation}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def ingested_record(
    raw: RawEvent,
    *,
    source: str,
    record_format: RecordFormat,
    resource_type: str,
    record_ref: str,
    version: str | None,
    payload: bytes,
    event_time: datetime,
    event_time_basis: str,
    operation: RecordOperation = "UPSERT",
    location: str | None = None,
    source_time_zone: str | None = None,
    patient_ref: str | None = None,
    warnings: Sequence[IngestionWarning] = (),
) -> IngestedRecord:
    """The record with its provenance. Without a source version, the content stands for it.
    `event_time_basis` names the element `event_time` was read from (record_time.py)."""
    identity = version or hashlib.sha256(payload).hexdigest()
    return IngestedRecord(
        record_id=record_id(source, record_ref, identity, operation),
        format=record_format,
        resource_type=resource_type,
        payload=payload,
        operation=operation,
        source_time_zone=source_time_zone,
        patient_ref=patient_ref,
        warnings=tuple(warnings),
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
            raw_location=location,
            event_time_basis=event_time_basis,
        ),
    )
