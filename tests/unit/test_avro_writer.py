"""The compiled Avro writer (events/avro_writer.py) writes exactly what fastavro writes, for
every event type: records fastavro generates from each schema, and any text, number, time
and list hypothesis finds."""

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
from concord.events.avro_writer import SchemaNotCompiled, compile_writer, long_bytes
from concord.events.codec import EventCodec

CODECS = {c.name: c for c in codec.ALL_CODECS}


def _as_read(c: EventCodec[Any], record: dict[str, Any]) -> dict[str, Any]:
    """A record as a reader of the schema gives it (aware datetimes, tuples of records)."""
    buf = io.BytesIO()
    schemaless_writer(buf, c.schema, record)
    buf.seek(0)
    read: dict[str, Any] = schemaless_reader(buf, c.schema, None)
    return read


@pytest.mark.parametrize("name", sorted(CODECS))
def test_generated_records_are_written_as_fastavro_writes_them(name: str) -> None:
    c = CODECS[name]
    checked = 0
    for record in generate_many(c.schema, 200):
        try:
            event = c.model.model_validate(_as_read(c, record))
        except ValidationError:
            continue  # a value the twin refuses (a pattern, a range) is never encoded
        assert c.encode(event) == c.encode_with_fastavro(event)
        checked += 1
    assert checked >= 100, f"only {checked} of 200 generated {name} records were valid"


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
        assert c.encode(event) == c.encode_with_fastavro(event)

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
    ],
)  # fmt: skip
def test_a_schema_it_cannot_write_exactly_is_refused_when_compiled(schema: dict[str, Any]) -> None:
    with pytest.raises(SchemaNotCompiled):
        compile_writer(schema)
