"""The event contracts: every Avro schema and its pydantic twin agree, the wire format is the
Avro single-object encoding, old writer schemas stay readable, and bad bytes fail cleanly.

fastavro's generator produces timestamp-micros fields as plain ints (microseconds since the
epoch), not datetimes, so generated records are first written and read back with fastavro:
that gives the form a reader hands to the twin (aware UTC datetimes), which is what is compared.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import to_parsing_canonical_form
from fastavro.utils import generate_many
from fastavro.validation import validate
from pydantic import AwareDatetime, BaseModel

from builders import listify
from concord.events import codec, models
from concord.events.codec import ALL_CODECS, CodecError, EventCodec, load_schema_file

CODECS = {c.name: c for c in ALL_CODECS}
SHARED_TYPES = {"provenance", "assertion"}
SCHEMA_DIR = codec.schema_dir()
HISTORY = sorted(
    (path.parent.name, path)
    for path in (SCHEMA_DIR / "history").glob("*/*.avsc")
    if path.parent.name in CODECS
)
RECORD_MODELS: dict[str, type[BaseModel]] = {
    "Provenance": models.Provenance,
    "IngestedRecord": models.IngestedRecord,
    "IngestionWarning": models.IngestionWarning,
    "ClinicalFact": models.ClinicalFact,
    "Assertion": models.Assertion,
    "ConflictEvent": models.ConflictEvent,
    "Alert": models.Alert,
    "Header": models.Header,
    "DeadLetter": models.DeadLetter,
    "ConflictResolution": models.ConflictResolution,
    "TextEvidence": models.TextEvidence,
    "ClinicalDocument": models.ClinicalDocument,
}
SECRET = "SECRET-PHI-123"


# --- helpers -----------------------------------------------------------------------------------


def _crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO (the Rabin fingerprint of the Avro spec), written out from the spec."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def _spec_fingerprint(parsed: Any) -> bytes:
    canonical = to_parsing_canonical_form(parsed).encode()
    return struct.pack("<Q", _crc64_avro(canonical))


def _write(schema: Any, record: Any) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, schema, record)
    return buf.getvalue()


def _as_read(schema: Any, record: Any) -> Any:
    """The record as a fastavro reader returns it (logical types converted)."""
    return schemaless_reader(io.BytesIO(_write(schema, record)), schema, schema)


def _single_object(schema: Any, record: Any) -> bytes:
    """Single-object encoding done by hand: marker, writer fingerprint, Avro body."""
    return b"\xc3\x01" + codec.schema_fingerprint(schema) + _write(schema, record)


def _datetimes(value: Any) -> list[datetime]:
    if isinstance(value, datetime):
        return [value]
    if isinstance(value, dict):
        return [d for v in value.values() for d in _datetimes(v)]
    if isinstance(value, (list, tuple)):
        return [d for v in value for d in _datetimes(v)]
    return []


def _generated(c: EventCodec[Any], n: int = 50) -> list[dict[str, Any]]:
    return [_as_read(c.schema, record) for record in generate_many(c.schema, n)]


def _provenance(**overrides: Any) -> models.Provenance:
    fields: dict[str, Any] = {
        "source_system": "ehr-a",
        "source_record_id": "Patient/p1",
        "source_record_version": "2",
        "event_time": datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "received_time": datetime(2024, 1, 2, 3, 4, 6, tzinfo=UTC),
        "raw_topic": "ehr.raw.fhir",
        "raw_partition": 1,
        "raw_offset": 42,
        "payload_sha256": "ab" * 32,
    }
    return models.Provenance(**{**fields, **overrides})


def _fact(patient_id: str = "E-1") -> models.ClinicalFact:
    return models.ClinicalFact(
        fact_id="f" * 32,
        patient_id=patient_id,
        attribute="Patient.birthDate",
        attribute_class="DEMOGRAPHICS",
        value="1980-01-01",
        display="1980-01-01",
        status="ASSERTED",
        provenance=_provenance(),
    )


# --- (a) generated records: schema -> twin -> schema --------------------------------------------


@pytest.mark.parametrize("name", sorted(CODECS))
def test_records_generated_from_the_schema_validate_into_the_twin_and_dump_back(
    name: str,
) -> None:
    c = CODECS[name]
    for record in _generated(c):
        model = c.model.model_validate(record)
        dumped = model.model_dump()
        assert listify(dumped) == record
        assert all(d.tzinfo is not None for d in _datetimes(dumped))
        # and the twin's output is valid data of the schema, so the agreement is both ways
        assert validate(dumped, c.schema, raise_errors=True)


# --- (b) encode / decode ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CODECS))
def test_encode_then_decode_gives_the_model_back(name: str) -> None:
    c = CODECS[name]
    for record in _generated(c, 20):
        model = c.model.model_validate(record)
        data = c.encode(model)
        assert c.decode(data) == model
        assert c.decode_many([data]) == [model]


@pytest.mark.parametrize("name", sorted(CODECS))
def test_encoding_is_avro_single_object_with_the_crc64_fingerprint(name: str) -> None:
    c = CODECS[name]
    model = c.model.model_validate(_generated(c, 1)[0])
    data = c.encode(model)
    assert data[:10] == b"\xc3\x01" + c.fingerprint
    assert c.fingerprint == codec.schema_fingerprint(c.schema)
    # the body is the plain Avro binary of the record
    body = schemaless_reader(io.BytesIO(data[10:]), c.schema, c.schema)
    assert c.model.model_validate(body) == model


def test_the_fingerprint_helper_matches_the_avro_spec_test_vectors() -> None:
    # apache/avro share/test/data/schema-tests.txt, as signed 64-bit integers
    assert struct.pack("<Q", _crc64_avro(b'"null"')) == struct.pack("<q", 7195948357588979594)
    assert struct.pack("<Q", _crc64_avro(b'"int"')) == struct.pack("<q", 8247732601305521295)
    assert struct.pack("<Q", _crc64_avro(b'"long"')) == struct.pack("<q", -3434872931120570953)


def test_schema_fingerprint_is_little_endian_crc64_avro() -> None:
    """Single-object encoding carries the fingerprint little-endian: for "null"
    (7195948357588979594 = 0x63dd24e7cc258f8a) that is 8a 8f 25 cc e7 24 dd 63."""
    assert codec.schema_fingerprint("null") == bytes.fromhex("8a8f25cce724dd63")


def test_codec_fingerprints_are_the_spec_fingerprints_of_their_schemas() -> None:
    """Another Avro implementation must find the writer schema from the header."""
    wrong = {c.name for c in ALL_CODECS if c.fingerprint != _spec_fingerprint(c.schema)}
    assert not wrong


def test_every_codec_has_its_own_fingerprint() -> None:
    assert len({c.fingerprint for c in ALL_CODECS}) == len(ALL_CODECS)


def test_event_times_in_other_zones_keep_their_instant() -> None:
    from datetime import timedelta, timezone

    zoned = datetime(2024, 1, 2, 5, 4, 5, 1, tzinfo=timezone(timedelta(hours=2)))
    fact = _fact().model_copy(update={"provenance": _provenance(event_time=zoned)})
    decoded = codec.CLINICAL_FACT.decode(codec.CLINICAL_FACT.encode(fact))
    assert decoded.provenance.event_time == datetime(2024, 1, 2, 3, 4, 5, 1, tzinfo=UTC)
    assert decoded.provenance.event_time.utcoffset() == timedelta(0)


# --- (c) backward compatibility -----------------------------------------------------------------


def test_every_codec_keeps_a_history() -> None:
    assert {name for name, _ in HISTORY} == set(CODECS)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_the_current_schema_is_kept_in_the_history(name: str) -> None:
    """A changed schema must be kept (`python -m concord.events.codec`) before it ships, or
    data written with it becomes unreadable once the schema moves on again."""
    kept = {
        codec.schema_fingerprint(load_schema_file(name, path=path))
        for path in (SCHEMA_DIR / "history" / name).glob("*.avsc")
    }
    assert CODECS[name].fingerprint in kept, f"run `python -m concord.events.codec` for {name}"


def test_snapshot_keeps_a_changed_schema_once(tmp_path: Path) -> None:
    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas")
    directory = tmp_path / "schemas"
    assert codec.snapshot(directory) == []
    kept = len(list((directory / "history" / "clinical_fact").glob("v*.avsc")))
    fact = json.loads((directory / "clinical_fact.avsc").read_text())
    fact["fields"].append({"name": "added", "type": ["null", "string"], "default": None})
    (directory / "clinical_fact.avsc").write_text(json.dumps(fact))
    expected = directory / "history" / "clinical_fact" / f"v{kept + 1}.avsc"
    assert codec.snapshot(directory) == [expected]
    assert codec.snapshot(directory) == []


def _only_written(decoded: Any, written: Any) -> Any:
    """The decoded value without the fields added since the data was written (at any depth)."""
    if isinstance(decoded, dict) and isinstance(written, dict):
        return {k: _only_written(v, written[k]) for k, v in decoded.items() if k in written}
    if isinstance(decoded, list) and isinstance(written, list) and len(decoded) == len(written):
        return [_only_written(d, w) for d, w in zip(decoded, written, strict=True)]
    return decoded


@pytest.mark.parametrize(("name", "old_file"), HISTORY, ids=[f"{n}/{p.name}" for n, p in HISTORY])
def test_data_written_with_a_historic_schema_decodes_with_the_current_codec(
    name: str, old_file: Path
) -> None:
    c = CODECS[name]
    old = load_schema_file(name, path=old_file)
    for record in generate_many(old, 20):
        as_written = _as_read(old, record)
        decoded = c.decode(_single_object(old, record))
        assert isinstance(decoded, c.model)
        dumped = listify(decoded.model_dump())
        for field in old["fields"]:
            if field["name"] in dumped:
                written = as_written[field["name"]]
                assert _only_written(dumped[field["name"]], written) == written


@pytest.mark.parametrize("name", sorted(CODECS))
def test_the_compatibility_check_has_teeth(name: str, tmp_path: Path) -> None:
    """A new required field without a default cannot be resolved from old data; with a
    default it can. So the history test above would catch an incompatible change."""
    current = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
    old = load_schema_file(name)
    body = _write(old, next(generate_many(old, 1)))

    breaking = {**current, "fields": [*current["fields"], {"name": "added", "type": "string"}]}
    (tmp_path / "breaking.avsc").write_text(json.dumps(breaking))
    reader = load_schema_file(name, path=tmp_path / "breaking.avsc")
    with pytest.raises(SchemaResolutionError):
        schemaless_reader(io.BytesIO(body), old, reader)

    compatible = {
        **current,
        "fields": [*current["fields"], {"name": "added", "type": "string", "default": "x"}],
    }
    (tmp_path / "compatible.avsc").write_text(json.dumps(compatible))
    reader = load_schema_file(name, path=tmp_path / "compatible.avsc")
    assert schemaless_reader(io.BytesIO(body), old, reader)["added"] == "x"


def test_old_data_stays_readable_after_a_shared_type_evolves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each event's history keeps a self-contained snapshot, so data whose Provenance is v1
    stays readable after provenance.avsc changes compatibly (here: raw_partition int -> long).

    A producer still on the old schemas writes IngestedRecords whose fingerprint covers the
    old Provenance; the reader must know that writer schema."""
    old_writer = load_schema_file("ingested_record")  # today's schemas = the old producer's
    record = models.IngestedRecord(
        record_id="r1",
        format="FHIR_R4",
        resource_type="Patient",
        payload=b"{}",
        provenance=_provenance(),
    )
    old_bytes = _single_object(old_writer, record.model_dump())

    evolved = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, evolved)
    provenance = json.loads((evolved / "provenance.avsc").read_text())
    for field in provenance["fields"]:
        if field["name"] == "raw_partition":
            field["type"] = "long"
    (evolved / "provenance.avsc").write_text(json.dumps(provenance))
    monkeypatch.setenv("CONCORD_SCHEMA_DIR", str(evolved))

    new_codec = EventCodec("ingested_record", models.IngestedRecord)
    assert new_codec.fingerprint != codec.schema_fingerprint(old_writer)  # the schema changed
    assert new_codec.decode(old_bytes) == record


# --- (d) rejects bad bytes, and names no values -------------------------------------------------


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize(
    ("data", "reason_code"),
    [
        (None, "EMPTY_PAYLOAD"),
        (b"", "NOT_AVRO_SINGLE_OBJECT"),
        (b"garbage bytes that are not avro", "NOT_AVRO_SINGLE_OBJECT"),
        (b"\xc3\x01\x00", "NOT_AVRO_SINGLE_OBJECT"),
        (b'{"patient_id": "x"}', "NOT_AVRO_SINGLE_OBJECT"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02ab", "UNKNOWN_SCHEMA"),
    ],
)
def test_codec_rejects_bad_bytes_with_a_reason_code(
    name: str, data: bytes | None, reason_code: str
) -> None:
    with pytest.raises(CodecError) as caught:
        CODECS[name].decode(data)
    assert caught.value.reason_code == reason_code


@pytest.mark.parametrize("name", sorted(CODECS))
def test_codec_rejects_a_truncated_body(name: str) -> None:
    c = CODECS[name]
    data = c.encode(c.model.model_validate(_generated(c, 1)[0]))
    for cut in (10, 11, len(data) // 2, len(data) - 1):
        with pytest.raises(CodecError) as caught:
            c.decode(data[:cut])
        assert caught.value.reason_code == "AVRO_DECODE_FAILED"


def test_another_event_type_is_an_unknown_schema() -> None:
    data = codec.CLINICAL_FACT.encode(_fact())
    with pytest.raises(CodecError) as caught:
        codec.INGESTED_RECORD.decode(data)
    assert caught.value.reason_code == "UNKNOWN_SCHEMA"


def test_corrupt_bodies_never_leak_field_values() -> None:
    """Every truncation and many single-byte corruptions of an event carrying a distinctive
    value either decode or fail with a CodecError that does not quote the value."""
    data = codec.CLINICAL_FACT.encode(_fact(patient_id=SECRET))
    assert SECRET.encode() in data
    variants = [data[:cut] for cut in range(len(data))]
    for pos in range(10, len(data)):
        for byte in (0x00, 0x7F, 0x80, 0xFF, 0x3F):
            variants.append(data[:pos] + bytes([byte]) + data[pos + 1 :])
    failures = 0
    for variant in variants:
        try:
            codec.CLINICAL_FACT.decode(variant)
        except CodecError as error:
            failures += 1
            assert error.reason_code
            assert SECRET not in str(error)
            assert SECRET not in repr(error)
            # the underlying fastavro/pydantic error (which may quote values) is not chained
            assert error.__cause__ is None
            assert error.__context__ is None or error.__suppress_context__
    assert failures > len(data)


def test_an_event_invalid_for_the_twin_names_fields_not_values() -> None:
    mismatched = EventCodec("clinical_fact", models.IngestedRecord)
    with pytest.raises(CodecError) as caught:
        mismatched.decode(codec.CLINICAL_FACT.encode(_fact(patient_id=SECRET)))
    assert caught.value.reason_code == "EVENT_INVALID"
    assert "patient_id" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None


# --- (e) one codec per schema, field for field --------------------------------------------------


def test_every_schema_file_has_a_codec_or_is_a_shared_type() -> None:
    stems = {path.stem for path in SCHEMA_DIR.glob("*.avsc")}
    assert stems == set(CODECS) | SHARED_TYPES
    assert not set(CODECS) & SHARED_TYPES
    history = {path.name for path in (SCHEMA_DIR / "history").iterdir() if path.is_dir()}
    assert history <= stems


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _avro_shape(schema: Any, named: dict[str, Any]) -> Any:
    if isinstance(schema, str):
        if schema in ("string", "int", "long", "bytes", "boolean", "double"):
            return {"string": "str", "int": "int", "long": "int", "bytes": "bytes",
                    "boolean": "bool", "double": "float"}[schema]  # fmt: skip
        return _avro_shape(named[schema], named)
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        assert len(branches) == 1 and "null" in schema, schema
        return ("optional", _avro_shape(branches[0], named))
    kind = schema["type"]
    if kind == "long" and schema.get("logicalType") == "timestamp-micros":
        return "datetime"
    if kind == "enum":
        named[schema["name"]] = schema
        return ("enum", tuple(schema["symbols"]))
    if kind == "record":
        named[schema["name"]] = schema
        return ("record", _short(schema["name"]))
    if kind == "array":
        return ("array", _avro_shape(schema["items"], named))
    return _avro_shape(kind, named)


def _python_shape(annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        branches = [a for a in get_args(annotation) if a is not type(None)]
        assert len(branches) == 1, annotation
        return ("optional", _python_shape(branches[0]))
    if origin is Literal:
        return ("enum", get_args(annotation))
    if origin is tuple:
        item, ellipsis = get_args(annotation)
        assert ellipsis is Ellipsis
        return ("array", _python_shape(item))
    if annotation is AwareDatetime:
        return "datetime"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ("record", annotation.__name__)
    return {str: "str", int: "int", bytes: "bytes", bool: "bool", float: "float"}[annotation]


def _records(schema: Any, into: dict[str, Any]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _records(branch, into)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            into.setdefault(_short(schema["name"]), schema)
            for field in schema["fields"]:
                _records(field["type"], into)
        elif schema.get("type") == "array":
            _records(schema["items"], into)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_twin_fields_equal_the_schema_fields_in_order_with_the_same_types(name: str) -> None:
    records: dict[str, Any] = {}
    _records(CODECS[name].schema, records)
    assert _short(CODECS[name].schema["name"]) == CODECS[name].model.__name__
    named: dict[str, Any] = {}
    for record_name, record in records.items():
        model = RECORD_MODELS[record_name]
        avro_fields = record["fields"]
        assert list(model.model_fields) == [f["name"] for f in avro_fields], record_name
        for field in avro_fields:
            info = model.model_fields[field["name"]]
            where = f"{record_name}.{field['name']}"
            assert _python_shape(info.annotation) == _avro_shape(field["type"], named), where
            assert info.is_required() == ("default" not in field), where
            if "default" in field:
                assert listify(info.default) == field["default"], where


@pytest.mark.parametrize("name", sorted(CODECS))
def test_twin_refuses_unknown_fields_and_naive_times(name: str) -> None:
    c = CODECS[name]
    record = _generated(c, 1)[0]
    with pytest.raises(ValueError, match="extra"):
        c.model.model_validate({**record, "unexpected": "x"})
    naive = datetime(2024, 1, 1)
    if "provenance" in record:
        record = {**record, "provenance": {**record["provenance"], "event_time": naive}}
    else:
        stamp = next(k for k, v in record.items() if isinstance(v, datetime))
        record = {**record, stamp: naive}
    with pytest.raises(ValueError, match="timezone"):
        c.model.model_validate(record)
