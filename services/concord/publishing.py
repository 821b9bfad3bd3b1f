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
from concord.ingestion.mllp import split_messages
from concord.topics import RAW_CLAIMS, RAW_FHIR, RAW_HL7V2


@dataclass(frozen=True)
class RawMessage:
    value: bytes
    key: bytes | None


def _key(source: str, value: bytes) -> bytes | None:
    """Source and resource reference, so one record's versions keep their order."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    if document.get("resourceType") and document.get("id"):
        return f"{source}/{document['resourceType']}/{document['id']}".encode()
    if document.get("claim_id") and document.get("line_number"):
        return f"{source}/ClaimLine/{document['claim_id']}/{document['line_number']}".encode()
    return None


HL7_SUFFIXES = (".hl7", ".er7")


def read_file(path: Path, source: str) -> Iterator[tuple[str, RawMessage]]:
    """(raw topic, message) for every event in the file: HL7 v2 by suffix; JSON by content
    (a claim line has a claim_id and no resourceType; anything else goes to the FHIR topic)."""
    if path.suffix.lower() in HL7_SUFFIXES:
        for er7_text in split_messages(path.read_bytes()):
            yield RAW_HL7V2, RawMessage(er7_text, _hl7_key(source, er7_text))
        return
    for message in read_fhir_file(path, source):
        yield _json_topic(message.value), message


def _json_topic(value: bytes) -> str:
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return RAW_FHIR
    is_claim = isinstance(document, dict) and "claim_id" in document
    return RAW_CLAIMS if is_claim and "resourceType" not in document else RAW_FHIR


def _hl7_key(source: str, message: bytes) -> bytes | None:
    """Source and the first patient identifier, so one patient's messages keep their order."""
    try:
        pid = er7.parse(message).first("PID")
    except er7.Er7Error:
        return None
    patient = pid.value(3, 1) if pid is not None else ""
    return f"{source}/PID/{patient}".encode() if patient else None


def read_fhir_file(path: Path, source: str) -> Iterator[RawMessage]:
    data = path.read_bytes()
    if path.suffix.lower() in (".ndjson", ".jsonl"):
        for line in data.splitlines():
            if line.strip():
                yield RawMessage(line, _key(source, line))
    else:
        yield RawMessage(data, _key(source, data))
