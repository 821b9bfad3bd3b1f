"""Avro binary bodies written straight from the pydantic twins, by code made for each schema.

fastavro's writer walks the schema for every record it writes: each union searches its
branches by validating the value against them, and each timestamp goes through a datetime
conversion function. For Concord's events that is about half the alerting stage's CPU and a
fifth of normalization's. `compile_writer` turns a schema into a Python function, once, at
import: the same walk done ahead of time, reading the model's attributes (no model_dump),
a null union's branch chosen by `is None`, an enum symbol's bytes looked up in a table. The
output is byte for byte fastavro's (tests/unit/test_avro_writer.py holds it to that on
every event type); fastavro stays the reader, and parses and fingerprints the schemas.

Supported is what schemas/ uses: records, enums, arrays, maps, two-branch unions with null,
string, bytes, int, long, double, boolean and long timestamp-micros, and scalar or empty-list
field defaults (what a model without the field writes). Anything else raises
SchemaNotCompiled when the codec is built, so a schema change cannot silently write
something else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
# Lengths, enum positions and union indexes are mostly small: their bytes are looked up.
_SMALL = {n: bytes([(n << 1) ^ (n >> 63)]) for n in range(-64, 64)}
_pack_double = struct.Struct("<d").pack
_PRIMITIVES = ("string", "bytes", "int", "long", "double", "boolean", "null")


class SchemaNotCompiled(ValueError):
    """The schema uses an Avro construct this writer does not generate code for."""


def long_bytes(n: int) -> bytes:
    """Avro's int and long: zig-zag, then a base-128 varint, low group first."""
    small = _SMALL.get(n)
    if small is not None:
        return small
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


class _Generator:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0
        self.named: dict[str, tuple[dict[str, Any], str | None]] = {}
        self.tables: dict[str, dict[str, bytes]] = {}
        self.defaults: dict[str, object] = {}
        self.expanding: list[str] = []

    def name(self) -> str:
        self.count += 1
        return f"v{self.count}"

    def emit(self, line: str, depth: int) -> None:
        self.lines.append("    " * depth + line)

    def value(self, schema: Any, expr: str, depth: int, namespace: str | None) -> None:
        if isinstance(schema, str):
            self._named_or_primitive(schema, expr, depth, namespace)
        elif isinstance(schema, list):
            self._union(schema, expr, depth, namespace)
        elif isinstance(schema, dict):
            self._complex(schema, expr, depth, namespace)
        else:
            raise SchemaNotCompiled(f"not a schema: {schema!r}")

    def _named_or_primitive(
        self, schema: str, expr: str, depth: int, namespace: str | None
    ) -> None:
        if schema in _PRIMITIVES:
            self._primitive(schema, expr, depth)
            return
        full = _full_name(schema, namespace)
        if full not in self.named:
            raise SchemaNotCompiled(f"unknown named type {full}")
        if full in self.expanding:
            raise SchemaNotCompiled(f"recursive type {full}")
        definition, its_namespace = self.named[full]
        self.expanding.append(full)
        self._complex(definition, expr, depth, its_namespace, define=False)
        self.expanding.pop()

    def _primitive(self, schema: str, expr: str, depth: int) -> None:
        if schema in ("string", "bytes"):
            data = self.name()
            encoded = f"{expr}.encode()" if schema == "string" else expr
            self.emit(f"{data} = {encoded}", depth)
            self.emit(f"w(L(len({data})))", depth)
            self.emit(f"w({data})", depth)
        elif schema in ("int", "long"):
            self.emit(f"w(L({expr}))", depth)
        elif schema == "double":
            self.emit(f"w(D({expr}))", depth)
        elif schema == "boolean":
            self.emit(f"w(TRUE if {expr} else FALSE)", depth)
        # null: nothing is written

    def _union(self, schema: list[Any], expr: str, depth: int, namespace: str | None) -> None:
        if len(schema) != 2 or schema[0] != "null" or schema[1] == "null":
            raise SchemaNotCompiled(f"only [null, T] unions are compiled, not {schema!r}")
        value = self.name()
        self.emit(f"{value} = {expr}", depth)
        self.emit(f"if {value} is None:", depth)
        self.emit("w(NULL_BRANCH)", depth + 1)
        self.emit("else:", depth)
        self.emit("w(VALUE_BRANCH)", depth + 1)
        self.value(schema[1], value, depth + 1, namespace)

    def _complex(
        self,
        schema: dict[str, Any],
        expr: str,
        depth: int,
        namespace: str | None,
        *,
        define: bool = True,
    ) -> None:
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical is not None:
            if (kind, logical) != ("long", "timestamp-micros"):
                raise SchemaNotCompiled(f"logical type {kind}/{logical} is not compiled")
            # Exact: a timedelta is a whole number of microseconds, as fastavro's sum is.
            self.emit(f"w(L(({expr} - EPOCH) // MICROSECOND))", depth)
            return
        if kind in ("record", "enum", "fixed"):
            namespace = schema.get("namespace", namespace)
            if define:
                self.named[_full_name(schema["name"], namespace)] = (schema, namespace)
        if kind == "record":
            record = self.name()
            self.emit(f"{record} = {expr}", depth)
            for field in schema["fields"]:
                self.value(field["type"], self._field(record, field), depth, namespace)
        elif kind == "enum":
            table = f"SYMBOLS{len(self.tables)}"
            self.tables[table] = {s: long_bytes(i) for i, s in enumerate(schema["symbols"])}
            self.emit(f"w({table}[{expr}])", depth)
        elif kind in ("array", "map"):
            items = schema["items"] if kind == "array" else schema["values"]
            self._blocks(items, expr, depth, namespace, keyed=kind == "map")
        elif kind in _PRIMITIVES:
            self._primitive(kind, expr, depth)
        else:
            raise SchemaNotCompiled(f"type {kind} is not compiled")

    def _field(self, record: str, field: dict[str, Any]) -> str:
        """The field's value; a model without the field (one of an older twin) gives the
        schema's default, as fastavro writes a dict without the key."""
        if "default" not in field:
            return f"{record}.{field['name']}"
        default = field["default"]
        if isinstance(default, dict) or (isinstance(default, list) and default):
            raise SchemaNotCompiled(f"field {field['name']}: only scalar and [] defaults")
        constant = f"DEFAULT{len(self.defaults)}"
        self.defaults[constant] = default
        return f"getattr({record}, {field['name']!r}, {constant})"

    def _blocks(
        self, items: Any, expr: str, depth: int, namespace: str | None, *, keyed: bool
    ) -> None:
        """An array or a map: one block of all its items, then the empty block that ends it."""
        collection, key, item = self.name(), self.name(), self.name()
        self.emit(f"{collection} = {expr}", depth)
        self.emit(f"if {collection}:", depth)
        self.emit(f"w(L(len({collection})))", depth + 1)
        if keyed:
            self.emit(f"for {key}, {item} in {collection}.items():", depth + 1)
            self._primitive("string", key, depth + 2)
        else:
            self.emit(f"for {item} in {collection}:", depth + 1)
        self.value(items, item, depth + 2, namespace)
        self.emit("w(END_OF_BLOCKS)", depth)


def compile_writer(schema: dict[str, Any]) -> Callable[[BaseModel, list[bytes]], None]:
    """A function that appends the Avro binary body of a model of `schema` (a parsed,
    self-contained record schema) to a list of byte strings, whose join is the body."""
    generator = _Generator()
    generator.emit("def write(event, parts):", 0)
    generator.emit("w = parts.append", 1)
    generator.value(schema, "event", 1, None)
    source = "\n".join(generator.lines)
    namespace: dict[str, Any] = {
        "L": long_bytes,
        "D": _pack_double,
        "EPOCH": EPOCH,
        "MICROSECOND": MICROSECOND,
        "TRUE": b"\x01",
        "FALSE": b"\x00",
        "NULL_BRANCH": long_bytes(0),
        "VALUE_BRANCH": long_bytes(1),
        "END_OF_BLOCKS": long_bytes(0),
        **generator.tables,
        **generator.defaults,
    }
    exec(compile(source, f"<avro writer for {schema.get('name')}>", "exec"), namespace)  # noqa: S102
    write: Callable[[BaseModel, list[bytes]], None] = namespace["write"]
    return write
