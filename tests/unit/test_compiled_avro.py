"""The compiled Avro writer and reader (events/compiled_avro.py) against fastavro, for every
event type: the same bytes written and the same record read, for records fastavro generates
from each schema and any text, number, time and list hypothesis finds; and no corrupt body
fastavro refuses is accepted."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastavro import schemaless_reader, schemaless_writer
from fastavro.utils import generate_many
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from concord.events import codec
from concord.events.codec import EventCodec
from concord.events.compiled_avro import (
    BodyInvalid,
    SchemaNotCompiled,
    compile_reader,
    compile_writer,
    long_bytes,
    read_long,
)

CODECS = {c.name: c for c in codec.ALL_CODECS}


def _as_read(c: EventCodec[Any], record: dict[str, Any]) -> dict[str, Any]:
    """A record as a reader of the schema gives it (aware datetimes, tuples of records)."""
    buf = io.BytesIO()
    schemaless_writer(buf, c.schema, record)
    buf.seek(0)
    read: dict[str, Any] = schemaless_reader(buf, c.schema, None)
    return read


def _same_as_fastavro(c: EventCodec[Any], event: Any) -> bytes:
    """Encode both ways and read back both ways; the single-object bytes."""
    data = c.encode(event)
    assert data == c.encode_with_fastavro(event)
    body = data[10:]
    assert compile_reader(c.schema)(body) == (c.decode_with_fastavro(data), len(body))
    return data


def _events(c: EventCodec[Any], n: int) -> list[Any]:
    events = []
    for record in generate_many(c.schema, n):
        try:
            events.append(c.model.model_validate(_as_read(c, record)))
        except ValidationError:
            continue  # a value the twin refuses (a pattern, a range) is never encoded
    return events


@pytest.mark.parametrize("name", sorted(CODECS))
def test_generated_records_are_written_and_read_as_fastavro_does(name: str) -> None:
    c = CODECS[name]
    events = _events(c, 200)
    assert len(events) >= 100, f"only {len(events)} of 200 generated {name} records were valid"
    for event in events:
        assert c.decode(_same_as_fastavro(c, event)) == event


def _outcome(read: Any, body: bytes) -> tuple[str, Any]:
    try:
        return "read", read(body)
    except Exception:
        return "refused", None


def _fastavro_read(c: EventCodec[Any], body: bytes) -> tuple[dict[str, Any], int]:
    buf = io.BytesIO(body)
    record = schemaless_reader(buf, c.schema, None)
    return record, buf.tell()


@pytest.mark.parametrize("name", sorted(CODECS))
def test_a_corrupt_body_fastavro_refuses_is_refused(name: str) -> None:
    """Every truncation and single-byte change of encoded events: what the compiled reader
    reads, fastavro reads the same; what fastavro refuses, it refuses (it may refuse more: an
    enum position or union branch out of range, which fastavro may map to a wrong value)."""
    c = CODECS[name]
    read = compile_reader(c.schema)
    checked = 0
    for event in _events(c, 30)[:10]:
        body = c.encode(event)[10:]
        corrupt = [body[:cut] for cut in range(len(body))]
        corrupt += [
            body[:i] + bytes([value]) + body[i + 1 :]
            for i in range(0, len(body), max(1, len(body) // 40))
            for value in (0x00, 0x01, 0x7F, 0x80, 0xFF)
        ]
        for data in corrupt:
            ours = _outcome(read, data)
            theirs = _outcome(lambda b: _fastavro_read(c, b), data)
            if ours[0] == "read":
                assert ours == theirs
            if theirs[0] == "refused":
                assert ours[0] == "refused"
            checked += 1
    assert checked > 100


def test_what_the_reader_refuses_names_no_value() -> None:
    read = compile_reader(
        {"type": "record", "name": "R", "fields": [{"name": "s", "type": "string"}]}
    )
    with pytest.raises(BodyInvalid) as refused:
        read(long_bytes(40) + b"secret")
    assert "secret" not in str(refused.value)
    with pytest.raises(BodyInvalid):
        read(long_bytes(-3) + b"abc")
    with pytest.raises(BodyInvalid):
        read_long(b"\xff" * 11, 0)
    with pytest.raises(BodyInvalid):
        read_long(b"\xff" * 9 + b"\x7f", 0)  # 70 bits
    assert read_long(long_bytes(-(2**63)), 0) == (-(2**63), 10)


def test_blocks_with_a_byte_size_read_as_fastavro_reads_them() -> None:
    """A writer may give a block's item count negated, followed by its size in bytes."""
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "a", "type": {"type": "array", "items": "long"}},
        {"name": "m", "type": {"type": "map", "values": "string"}},
    ]}  # fmt: skip
    body = (
        long_bytes(-2) + long_bytes(2) + long_bytes(5) + long_bytes(-6)
        + long_bytes(1) + long_bytes(1) + long_bytes(0)
        + long_bytes(-1) + long_bytes(4) + long_bytes(1) + b"k" + long_bytes(1) + b"v"
        + long_bytes(0)
    )  # fmt: skip
    expected = schemaless_reader(io.BytesIO(body), schema, None)
    assert compile_reader(schema)(body) == (expected, len(body))
    assert expected == {"a": [5, -6, 1], "m": {"k": "v"}}


# Hypothesis strategies from an Avro schema: the values that stress a writer.
_ZONES = st.sampled_from(
    [
        UTC,
        timezone(timedelta(hours=14)),
        timezone(-timedelta(hours=12)),
        timezone(timedelta(minutes=-30)),
    ]
)
_TIMES = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_ZONES
)
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


def _values(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    if isinstance(schema, list):
        return st.one_of(*(_values(branch, named) for branch in schema))
    if isinstance(schema, str):
        primitive = {
            "null": st.none(),
            "string": _TEXT,
            "bytes": st.binary(max_size=40),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "double": st.floats(allow_nan=False),
            "boolean": st.booleans(),
        }.get(schema)
        if primitive is not None:
            return primitive
        return _values(named[schema.rsplit(".", 1)[-1]], named)
    if schema.get("logicalType") == "timestamp-micros":
        return _TIMES
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        return st.fixed_dictionaries(
            {f["name"]: _values(f["type"], named) for f in schema["fields"]}
        )
    if kind == "enum":
        named[schema["name"]] = schema
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(_values(schema["items"], named), max_size=3)
    if kind == "map":
        return st.dictionaries(_TEXT, _values(schema["values"], named), max_size=3)
    return _values(kind, named)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_any_values_are_written_as_fastavro_writes_them(name: str) -> None:
    c = CODECS[name]

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(record=_values(c.schema, {}))
    def check(record: dict[str, Any]) -> None:
        try:
            event = c.model.model_validate(record)
        except ValidationError:
            assume(False)
            return
        _same_as_fastavro(c, event)

    check()


def test_a_model_without_a_field_the_schema_defaults_is_written_with_the_default() -> None:
    """An older twin's event written with a newer schema (a field added, with a default): the
    default is written, as fastavro writes a dump without the key."""
    schema = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "a", "type": "string"},
            {"name": "b", "type": ["null", "string"], "default": None},
            {"name": "c", "type": "boolean", "default": False},
            {"name": "d", "type": {"type": "array", "items": "long"}, "default": []},
        ],
    }

    class Older(BaseModel):
        a: str

    parts: list[bytes] = []
    compile_writer(schema)(Older(a="x"), parts)
    buf = io.BytesIO()
    schemaless_writer(buf, schema, {"a": "x"})
    assert b"".join(parts) == buf.getvalue()


@pytest.mark.parametrize(
    "n", [0, 1, -1, 63, -64, 64, -65, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)]
)
def test_longs_are_zigzag_varints(n: int) -> None:
    buf = io.BytesIO()
    schemaless_writer(buf, "long", n)
    assert long_bytes(n) == buf.getvalue()


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "record", "name": "R", "fields": [{"name": "a", "type": "float"}]},
        {"type": "record", "name": "R", "fields": [{"name": "a", "type": ["string", "long"]}]},
        {"type": "record", "name": "R", "fields": [
            {"name": "a", "type": {"type": "int", "logicalType": "date"}}]},
        {"type": "record", "name": "R", "fields": [
            {"name": "a", "type": ["null", {"type": "array", "items": "R"}]}]},
        {"type": "record", "name": "R", "fields": [
            {"name": "a", "type": {"type": "array", "items": "long"}, "default": [1]}]},
        {"type": "record", "name": "R", "fields": [{"name": "a or 1", "type": "long"}]},
    ],
)  # fmt: skip
def test_a_schema_it_cannot_handle_exactly_is_refused_when_compiled(
    schema: dict[str, Any],
) -> None:
    with pytest.raises(SchemaNotCompiled):
        compile_writer(schema)
    with pytest.raises(SchemaNotCompiled):
        compile_reader(schema)
