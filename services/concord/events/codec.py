"""The only place bytes become events and events become bytes.

Bodies are written and read by code compiled for each schema (compiled_avro.py), held to what
fastavro writes and reads; fastavro reads data of older writer schemas.

Wire format: Avro single-object encoding (the Avro spec's own): the marker C3 01, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema's parsing canonical form, then the
Avro binary body. Each schema under schemas/ is parsed once, at import. A reader resolves data
written with any schema version kept under schemas/history/ to the current schema, so a
producer may run an older version during a rolling deploy.

A consumer outside Concord loads one file per topic, schemas/topics/<topic>.avsc: the
current schema with every named type written out (`self_contained`), whose parsing canonical
form is what the header's fingerprint is taken of (docs/consumers.md).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form
from pydantic import ValidationError

from concord.events.compiled_avro import compile_reader, compile_writer
from concord.events.models import (
    Alert,
    ClinicalDocument,
    ClinicalFact,
    ConflictEvent,
    ConflictResolution,
    DeadLetter,
    Event,
    IngestedRecord,
)
from concord.topics import (
    ALERTS,
    CONFLICTS,
    DEADLETTER,
    DOCUMENTS,
    FACTS,
    INGESTED,
    RESOLUTIONS,
)

SINGLE_OBJECT_MARKER = b"\xc3\x01"
_HEADER_LEN = 10

# Named types a schema may use, in the order they are defined.
_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "ingested_record": ("provenance",),
    "clinical_fact": ("provenance",),
    "conflict_event": ("provenance", "clinical_fact", "assertion"),
    "alert": ("provenance", "clinical_fact", "assertion", "conflict_event"),
    "dead_letter": (),
    "conflict_resolution": (),
    "clinical_document": ("provenance",),
}


class CodecError(ValueError):
    """Bytes that are not a valid event of the expected type. The message names no PHI."""

    def __init__(self, reason_code: str, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code


def schema_dir() -> Path:
    """schemas/ at the repository root (or CONCORD_SCHEMA_DIR, for installed images)."""
    configured = os.environ.get("CONCORD_SCHEMA_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[3] / "schemas"


def load_schema_file(name: str, path: Path | None = None, directory: Path | None = None) -> Any:
    """Parse one event schema: the current one, or the file at `path` (a snapshot from
    schemas/history/), with the named types it borrows written out (see self_contained).

    The result is self-contained, so its parsing canonical form (and so its fingerprint) covers
    every type the body uses.
    """
    return parse_schema(self_contained(name, directory, path=path), _write_hint=False)


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _collect_named(schema: Any, namespace: str | None, into: dict[str, Any]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _collect_named(branch, namespace, into)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            namespace = schema.get("namespace", namespace)
            into[_full_name(schema["name"], namespace)] = {**schema, "namespace": namespace}
        for field in schema.get("fields", ()):
            _collect_named(field["type"], namespace, into)
        for key in ("items", "values"):
            if key in schema:
                _collect_named(schema[key], namespace, into)


def _inline(schema: Any, namespace: str | None, borrowed: dict[str, Any], seen: set[str]) -> Any:
    if isinstance(schema, str):
        full = _full_name(schema, namespace)
        if full in borrowed and full not in seen:
            return _inline(borrowed[full], namespace, borrowed, seen)
        return schema
    if isinstance(schema, list):
        return [_inline(branch, namespace, borrowed, seen) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if schema.get("type") in ("record", "enum", "fixed"):
        namespace = schema.get("namespace", namespace)
        seen.add(_full_name(schema["name"], namespace))
    if "fields" in schema:
        out["fields"] = [
            {**field, "type": _inline(field["type"], namespace, borrowed, seen)}
            for field in schema["fields"]
        ]
    for key in ("items", "values"):
        if key in schema:
            out[key] = _inline(schema[key], namespace, borrowed, seen)
    if isinstance(schema.get("type"), (dict, list)):
        out["type"] = _inline(schema["type"], namespace, borrowed, seen)
    return out


def schema_fingerprint(parsed: Any) -> bytes:
    """The 8 bytes the single-object header carries: CRC-64-AVRO, little-endian (fastavro's
    hex string is already in that byte order)."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def self_contained(
    name: str, directory: Path | None = None, *, path: Path | None = None
) -> dict[str, Any]:
    """An event's schema (the current file, or the one at `path`) with every type it borrows
    from the files it depends on written out where first used. A snapshot under
    schemas/history/<event>/ is kept this way, so old data stays readable whichever file
    evolves; a type a file already defines is never replaced."""
    directory = directory or schema_dir()
    definitions: dict[str, Any] = {}
    for dep in _DEPENDENCIES[name]:
        _collect_named(json.loads((directory / f"{dep}.avsc").read_text()), None, definitions)
    main = json.loads((path or directory / f"{name}.avsc").read_text())
    inlined: dict[str, Any] = _inline(main, None, definitions, set())
    return inlined


E = TypeVar("E", bound=Event)


class EventCodec(Generic[E]):
    """Encodes and decodes one event type; knows every historic writer schema of it."""

    def __init__(self, name: str, model: type[E]) -> None:
        self.name = name
        self.model = model
        self.schema = load_schema_file(name)
        self.fingerprint = schema_fingerprint(self.schema)
        self._header = SINGLE_OBJECT_MARKER + self.fingerprint
        # fastavro re-parses, on every call, a schema parsed without its hint; the hinted
        # parse (which carries fastavro's own bookkeeping keys, so is kept apart from
        # self.schema, the one that is fingerprinted and published) is what reads and writes.
        self._wire = _hinted(self.schema)
        self._write = compile_writer(self.schema)
        self._read = compile_reader(self.schema)
        self._writers: dict[bytes, Any] = {self.fingerprint: self._wire}
        history = schema_dir() / "history" / name
        if history.is_dir():
            for old in sorted(history.glob("*.avsc")):
                parsed = load_schema_file(name, path=old)
                self._writers.setdefault(schema_fingerprint(parsed), _hinted(parsed))

    def encode(self, event: E) -> bytes:
        parts = [self._header]
        self._write(event, parts)
        return b"".join(parts)

    def decode_with_fastavro(self, data: bytes) -> dict[str, Any]:
        """The body of `data` (current writer schema) as fastavro reads it: the reference
        the compiled reader is held to."""
        body = io.BytesIO(data[_HEADER_LEN:])
        record: dict[str, Any] = schemaless_reader(body, self._wire, None)  # type: ignore[assignment]
        return record

    def encode_with_fastavro(self, event: E) -> bytes:
        """What encode gives, written by fastavro from the model's dump: the reference the
        compiled writer is held to (tests/unit/test_compiled_avro.py, the codec benchmark)."""
        buf = io.BytesIO()
        buf.write(self._header)
        schemaless_writer(buf, self._wire, event.model_dump())
        return buf.getvalue()

    def encode_many(self, events: Iterable[E]) -> list[bytes]:
        return [self.encode(event) for event in events]

    def decode(self, data: bytes | None) -> E:
        if data is None:
            raise CodecError("EMPTY_PAYLOAD", f"{self.name}: the record has no value")
        if len(data) < _HEADER_LEN or data[:2] != SINGLE_OBJECT_MARKER:
            raise CodecError("NOT_AVRO_SINGLE_OBJECT", f"{self.name}: missing single-object marker")
        writer = self._writers.get(data[2:_HEADER_LEN])
        if writer is None:
            raise CodecError(
                "UNKNOWN_SCHEMA",
                f"{self.name}: unknown writer schema fingerprint {data[2:_HEADER_LEN].hex()}",
            )
        body = data[_HEADER_LEN:]
        record: Any
        try:
            if writer is self._wire:
                record, end = self._read(body)
            else:  # an older writer: fastavro resolves its data to the current schema
                buf = io.BytesIO(body)
                record = schemaless_reader(buf, writer, self._wire)
                end = buf.tell()
        except Exception as exc:  # truncated or corrupt bodies raise many types
            raise CodecError(
                "AVRO_DECODE_FAILED",
                f"{self.name}: body does not match its schema ({type(exc).__name__})",
            ) from None
        if end != len(body):
            raise CodecError("TRAILING_BYTES", f"{self.name}: bytes left after the record")
        try:
            return self.model.model_validate(record)
        except ValidationError as exc:
            raise CodecError("EVENT_INVALID", f"{self.name}: {_fields_of(exc)}") from None

    def decode_many(self, payloads: Sequence[bytes | None]) -> list[E]:
        return [self.decode(data) for data in payloads]


def _hinted(parsed: Any) -> Any:
    return parse_schema(parsed, _force=True)


def _fields_of(exc: ValidationError) -> str:
    """Name the failing fields and why, never the values (they may be PHI)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['type']}" for err in exc.errors()
    )


INGESTED_RECORD = EventCodec("ingested_record", IngestedRecord)
CLINICAL_FACT = EventCodec("clinical_fact", ClinicalFact)
CONFLICT_EVENT = EventCodec("conflict_event", ConflictEvent)
ALERT = EventCodec("alert", Alert)
DEAD_LETTER = EventCodec("dead_letter", DeadLetter)
CONFLICT_RESOLUTION = EventCodec("conflict_resolution", ConflictResolution)
CLINICAL_DOCUMENT = EventCodec("clinical_document", ClinicalDocument)

ALL_CODECS: tuple[EventCodec[Any], ...] = (
    INGESTED_RECORD,
    CLINICAL_FACT,
    CONFLICT_EVENT,
    ALERT,
    DEAD_LETTER,
    CONFLICT_RESOLUTION,
    CLINICAL_DOCUMENT,
)

# The event each Avro topic carries (the raw topics carry what the sources send; the control
# topic is Faust's).
TOPIC_CODECS: dict[str, EventCodec[Any]] = {
    INGESTED: INGESTED_RECORD,
    FACTS: CLINICAL_FACT,
    CONFLICTS: CONFLICT_EVENT,
    RESOLUTIONS: CONFLICT_RESOLUTION,
    ALERTS: ALERT,
    DEADLETTER: DEAD_LETTER,
    DOCUMENTS: CLINICAL_DOCUMENT,
}


def schema_text(schema: Any) -> str:
    """How a self-contained schema is written to a file (history snapshots, topic schemas)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def topic_schema_path(topic: str, directory: Path | None = None) -> Path:
    """schemas/topics/<topic>.avsc: the one file a consumer of `topic` loads."""
    return (directory or schema_dir()) / "topics" / f"{topic}.avsc"


def write_topic_schemas(directory: Path | None = None) -> list[Path]:
    """Write each Avro topic's current schema, self-contained, to schemas/topics/<topic>.avsc
    unless the file already says exactly that; tests/unit/test_topic_schemas.py fails until the
    files agree with schemas/."""
    directory = directory or schema_dir()
    written = []
    for topic, topic_codec in TOPIC_CODECS.items():
        path = topic_schema_path(topic, directory)
        text = schema_text(self_contained(topic_codec.name, directory))
        if path.is_file() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def snapshot(directory: Path | None = None) -> list[Path]:
    """Keep each event's current schema under schemas/history/<event>/vN.avsc unless an
    identical one is kept already. Run after changing a schema: `python -m
    concord.events.codec` (which also rewrites schemas/topics/);
    tests/unit/test_contracts.py fails until the change is kept."""
    directory = directory or schema_dir()
    written = []
    for codec in ALL_CODECS:
        history = directory / "history" / codec.name
        history.mkdir(parents=True, exist_ok=True)
        kept = {
            schema_fingerprint(load_schema_file(codec.name, path=old))
            for old in history.glob("v*.avsc")
        }
        current = self_contained(codec.name, directory)
        if schema_fingerprint(parse_schema(current, _write_hint=False)) in kept:
            continue
        path = history / f"v{len(list(history.glob('v*.avsc'))) + 1}.avsc"
        path.write_text(schema_text(current))
        written.append(path)
    return written


if __name__ == "__main__":
    for kept_path in snapshot():
        print(f"kept {kept_path}")
    for topic_path in write_topic_schemas():
        print(f"wrote {topic_path}")
