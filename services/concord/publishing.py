"""Reading EHR files into raw events: one FHIR resource, a Bundle, or NDJSON (one per line).

A Bundle is published as one raw event: ingestion splits it, so its entries share the
Bundle's provenance. Lines that are not JSON are still published: dead-lettering them with a
reason is ingestion's job, and a test feed needs malformed events too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson


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
    if isinstance(document, dict) and document.get("resourceType") and document.get("id"):
        return f"{source}/{document['resourceType']}/{document['id']}".encode()
    return None


def read_fhir_file(path: Path, source: str) -> Iterator[RawMessage]:
    data = path.read_bytes()
    if path.suffix.lower() in (".ndjson", ".jsonl"):
        for line in data.splitlines():
            if line.strip():
                yield RawMessage(line, _key(source, line))
    else:
        yield RawMessage(data, _key(source, data))
