"""Reading EHR files into raw events: FHIR JSON (a resource, a Bundle, or NDJSON), claim
lines (JSON or NDJSON), and HL7 v2 files (.hl7: one or many messages, any segment end).

A Bundle is published as one raw event: ingestion splits it, so its entries share the
Bundle's provenance. Lines that are not JSON are still published: dead-lettering them with a
reason is ingestion's job, and a test feed needs malformed events too.

NDJSON is read line by line, so a file of any size needs the memory of one line; a `.gz`
file (`Observation.000.ndjson.gz`) is read through gzip, its inner suffix deciding the
format. A single JSON document and an HL7 v2 file are read whole.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson

from concord.hl7v2 import er7
from concord.ingestion.subjects import hl7_patient, patient_of
from concord.topics import RAW_CLAIMS, RAW_FHIR, RAW_HL7V2


@dataclass(frozen=True)
class RawMessage:
    value: bytes
    key: bytes | None
    topic: str = RAW_FHIR
    # What it is, for counting: a FHIR resourceType, CLAIM_LINE or HL7_MESSAGE; None when
    # it is none of these (not JSON, say), which ingestion dead-letters.
    kind: str | None = field(default=None, compare=False)


HL7_SUFFIXES = (".hl7", ".er7")
NDJSON_SUFFIXES = (".ndjson", ".jsonl")
CLAIM_LINE = "claim line"
HL7_MESSAGE = "HL7 v2 message"


def read_file(path: Path, source: str) -> Iterator[RawMessage]:
    """Every event in the file, with its raw topic: HL7 v2 by suffix; JSON by content (a claim
    line has a claim_id and no resourceType; anything else goes to the FHIR topic)."""
    yield from FileReader(path, source)


class FileReader:
    """The events of one file, read as they are iterated, with what a progress display and a
    summary need: the bytes read so far and the blank lines skipped."""

    def __init__(self, path: Path, source: str) -> None:
        self.path = path
        self.source = source
        self.size = path.stat().st_size
        self.blank_lines = 0
        self._raw: BinaryIO | None = None
        self._done = False

    def position(self) -> int:
        """Bytes of the file read so far (of the compressed bytes, for a .gz file)."""
        if self._done:
            return self.size
        raw = self._raw
        return raw.tell() if raw is not None and not raw.closed else 0

    def __iter__(self) -> Iterator[RawMessage]:
        name = self.path.name.lower()
        compressed = name.endswith(".gz")
        suffix = Path(name.removesuffix(".gz")).suffix
        with self.path.open("rb") as raw:
            self._raw = raw
            stream: BinaryIO | gzip.GzipFile = gzip.GzipFile(fileobj=raw) if compressed else raw
            with stream:
                if suffix in NDJSON_SUFFIXES:
                    yield from self._lines(stream)
                else:
                    yield from _whole(stream.read(), suffix, self.source)
        self._done = True

    def _lines(self, stream: Iterable[bytes]) -> Iterator[RawMessage]:
        for chunk in stream:  # up to each b"\n"; splitlines: a \r alone ends a line too
            for line in chunk.splitlines():
                if line.strip():
                    yield _json_message(self.source, line)
                else:
                    self.blank_lines += 1


def _whole(data: bytes, suffix: str, source: str) -> Iterator[RawMessage]:
    if suffix in HL7_SUFFIXES:
        for text in er7.split_messages(data):
            yield RawMessage(text, hl7_key(source, _parsed(text)), RAW_HL7V2, HL7_MESSAGE)
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
    if resource_type := document.get("resourceType"):
        kind = resource_type if isinstance(resource_type, str) else None
        # By patient, as ingestion keys what it emits: a Patient and the results about it stay
        # in one partition, in the order sent, so the Patient is read first.
        patient = patient_of(document)
        has_id = bool(document.get("id"))
        own = f"{resource_type}/{document['id']}" if has_id else None
        key = f"{source}/{patient or own}" if patient or own else None
        return RawMessage(value, key.encode() if key else None, RAW_FHIR, kind)
    if "claim_id" in document:
        if document["claim_id"] and document.get("line_number"):
            key = f"{source}/ClaimLine/{document['claim_id']}/{document['line_number']}"
            return RawMessage(value, key.encode(), RAW_CLAIMS, CLAIM_LINE)
        return RawMessage(value, None, RAW_CLAIMS, CLAIM_LINE)
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
