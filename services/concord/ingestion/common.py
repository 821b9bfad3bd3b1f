"""What every raw format's ingestion shares: the sending system, size limits, ids, provenance,
and the control characters no value is read with."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from concord.deadletters import Rejection, warning
from concord.events.models import (
    IngestedRecord,
    IngestionWarning,
    Provenance,
    RecordFormat,
    RecordOperation,
)
from concord.events.raw import RawEvent
from concord.text import CONTROL_CHARACTERS

SOURCE_HEADER = "source"
# On a concord.ingested record that carries warnings: how many, so that `concord warnings list`
# decodes only those records.
WARNINGS_HEADER = "concord-warnings"
MAX_SOURCE_LENGTH = 128
# JSON cannot carry a control character as it is (orjson refuses the document), only escaped:
# \u0000-\u001f or \b, \f. An escaped backslash before "u0000" matches too, which costs a
# walk that finds nothing; a lookbehind to rule it out makes the search ~40 times slower.
_ESCAPED_CONTROL = re.compile(rb"\\(?:u00[01]|[bf])")
CONTROL_CHARACTER_WARNING = (
    "NUL or another C0 control character (not tab, line feed or carriage return) in the "
    "string: removed from what is read"
)


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
    """An ISO 8601 date-time with its zone, or None (absent, malformed, without a zone, or
    outside the years 1-9999 once in UTC, which no datetime nor Avro timestamp can hold)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            return None
        parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return parsed


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


def version_key(source: str, record_ref: str, version: str, operation: str = "UPSERT") -> str:
    """What the sender names as one version of one record: (source, record, version), and a
    delete that names the version it deletes apart from that version. De-duplication looks
    versions up by it (a key Concord's record ids were before content was part of them)."""
    identity = f"{source}\x1f{record_ref}\x1f{version}"
    if operation != "UPSERT":
        identity += f"\x1f{operation}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def record_id(key: str, content: bytes) -> str:
    """The version key and the content, hashed: a version re-sent with the same content gets
    the same id, so redelivery is recognised downstream and by de-duplication; a version key
    re-used for other content (a sender's HL7 v2 control id counter reset) gets another, so
    the facts read from it are not taken for the first one's. Computed from the record alone,
    never from what was seen before: two workers given the two contents at once agree."""
    digest = hashlib.sha256(content).hexdigest()
    return hashlib.sha256(f"{key}\x1f{digest}".encode()).hexdigest()[:32]


def version_key_of(record: IngestedRecord) -> str:
    """The version key of an ingested record, as ingested_record made its id from it."""
    provenance = record.provenance
    version = provenance.source_record_version or hashlib.sha256(record.payload).hexdigest()
    return version_key(
        provenance.source_system, provenance.source_record_id, version, record.operation
    )


def without_controls(document: Any) -> tuple[Any, list[str]]:
    """A parsed JSON document with the control characters removed from its string values, and
    the paths (`.name[0].family`, from the document's root) of the strings that held any.
    Object keys are kept: they name elements, which validation checks by name."""
    paths: list[str] = []

    def clean(node: Any, path: str) -> Any:
        if isinstance(node, str):
            if CONTROL_CHARACTERS.search(node) is None:
                return node
            paths.append(path)
            return CONTROL_CHARACTERS.sub("", node)
        if isinstance(node, dict):
            return {key: clean(value, f"{path}.{key}") for key, value in node.items()}
        if isinstance(node, list):
            return [clean(item, f"{path}[{position}]") for position, item in enumerate(node)]
        return node

    return clean(document, ""), paths


def json_without_controls(value: bytes, document: Any) -> tuple[Any, list[str]]:
    """without_controls, only for a document whose bytes escape a control character: most do
    not, and a look at the bytes is cheaper than a walk through the document."""
    if b"\\" not in value or _ESCAPED_CONTROL.search(value) is None:
        return document, []
    return without_controls(document)


def control_warning(location: str) -> IngestionWarning:
    return warning("CONTROL_CHARACTER", CONTROL_CHARACTER_WARNING, location)


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
    content: bytes | None = None,
) -> IngestedRecord:
    """The record with its provenance. Without a source version, the content stands for it.
    `event_time_basis` names the element `event_time` was read from (record_time.py).
    `content` is what tells two records of one version apart, when the payload holds more
    than that (FHIR: meta and narrative, which may change on the way); else the payload."""
    identity = version or hashlib.sha256(payload).hexdigest()
    key = version_key(source, record_ref, identity, operation)
    return IngestedRecord(
        record_id=record_id(key, payload if content is None else content),
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
