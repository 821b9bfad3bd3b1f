"""Reading EHR files into raw events: FHIR JSON (a resource, a Bundle, or NDJSON), claim
lines (JSON or NDJSON), and HL7 v2 files (.hl7: one or many messages, any segment end).

A Bundle is published as one raw event: ingestion splits it, so its entries share the
Bundle's provenance. Lines that are not JSON are still published: dead-lettering them with a
reason is ingestion's job, and a test feed needs malformed events too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from concord.hl7v2 import er7
from concord.ingestion.subjects import hl7_patient, patient_of
from concord.topics import RAW_CLAIMS, RAW_FHIR, RAW_HL7V2


@dataclass(frozen=True)
class RawMessage:
    value: bytes
    key: bytes | None
    topic: str = RAW_FHIR


HL7_SUFFIXES = (".hl7", ".er7")
NDJSON_SUFFIXES = (".ndjson", ".jsonl")


def read_file(path: Path, source: str) -> Iterator[RawMessage]:
    """Every event in the file, with its raw topic: HL7 v2 by suffix; JSON by content (a claim
    line has a claim_id and no resourceType; anything else goes to the FHIR topic)."""
    data = path.read_bytes()
    suffix = path.suffix.lower()
    if suffix in HL7_SUFFIXES:
        for text in er7.split_messages(data):
            yield RawMessage(text, hl7_key(source, _parsed(text)), RAW_HL7V2)
    elif suffix in NDJSON_SUFFIXES:
        for line in data.splitlines():
            if line.strip():
                yield _json_message(source, line)
    else:
        yield _json_message(source, data)


def _json_message(source: str, value: bytes) -> RawMessage:
    """Keyed by source and patient (else record), so one patient's records keep their order."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return RawMessage(value, None)
    if not isinstance(document, dict):
        return RawMessage(value, None)
    if document.get("resourceType"):
        # By patient, as ingestion keys what it emits: a Patient and the results about it stay
        # in one partition, in the order sent, so the Patient is read first.
        patient = patient_of(document)
        has_id = bool(document.get("id"))
        own = f"{document['resourceType']}/{document['id']}" if has_id else None
        key = f"{source}/{patient or own}" if patient or own else None
        return RawMessage(value, key.encode() if key else None)
    if "claim_id" in document:
        if document["claim_id"] and document.get("line_number"):
            key = f"{source}/ClaimLine/{document['claim_id']}/{document['line_number']}"
            return RawMessage(value, key.encode(), RAW_CLAIMS)
        return RawMessage(value, None, RAW_CLAIMS)
    return RawMessage(value, None)


def hl7_key(source: str, message: er7.Er7Message | None) -> bytes | None:
    """Source and the first patient identifier, so one patient's messages keep their order."""
    patient = hl7_patient(message)
    return f"{source}/{patient}".encode() if patient else None


def _parsed(text: bytes) -> er7.Er7Message | None:
    try:
        return er7.parse(text)
    except er7.Er7Error:
        return None
