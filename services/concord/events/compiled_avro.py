"""Avro binary bodies written from the pydantic twins and read back, by code made for each
schema.

fastavro walks the schema for every record: each union searches its branches by validating
the value against them, each timestamp goes through a conversion function. For Concord's
events that was about half the alerting stage's CPU and a fifth of normalization's.
`compile_writer` and `compile_reader` turn a schema into a Python function, once, at import:
the same walk done ahead of time. The writer reads the model's attributes (no model_dump),
picks a null union's branch by `is None` and looks enum symbols up in a table; the reader
decodes from the bytes in place. Both are held to fastavro (tests/unit/test_compiled_avro.py):
the same bytes written, the same record read, and no body fastavro refuses is accepted.
fastavro still parses and fingerprints the schemas and reads data of older writer schemas,
which needs resolution.

Supported is what schemas/ uses: records, enums, arrays, maps, two-branch unions with null,
string, bytes, int, long, double, boolean and long timestamp-micros, and scalar or empty-list
field defaults (what the writer writes for a model without the field). Anything else raises
SchemaNotCompiled when the codec is built, so a schema change cannot silently go wrong.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
# Lengths, enum positions and union indexes are mostly small: their bytes are looked up.
_SMALL = {n: bytes([(n << 1) ^ (n >> 63)]) for n in range(-64, 64)}
_DOUBLE = struct.Struct("<d")
_PRIMITIVES = ("string", "bytes", "int", "long", "double", "boolean", "null")
_LONGEST_VARINT = 10  # bytes of a 64-bit zig-zag varint
_AVRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Writer = Callable[[BaseModel, list[bytes]], None]
Reader = Callable[[bytes], tuple[dict[str, Any], int]]


class SchemaNotCompiled(ValueError):
    """The schema uses an Avro construct this module does not generate code for."""


class BodyInvalid(ValueError):
    """The bytes are not a body of the schema (the message names no value)."""


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


def read_long(data: bytes, position: int) -> tuple[int, int]:
    """An int or long at `position`, and the position after it."""
    byte = data[position]
    n = byte & 0x7F
    shift = 7
    end = position + _LONGEST_VARINT
    position += 1
    while byte & 0x80:
        if position >= end:
            raise BodyInvalid("a varint longer than 10 bytes")
        byte = data[position]
        position += 1
        n |= (byte & 0x7F) << shift
        shift += 7
    if n >> 64:
        raise BodyInvalid("a varint beyond 64 bits")
    return (n >> 1) ^ -(n & 1), position


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


class _Generator:
    """Walks a schema and emits the lines of one function; a subclass says what each kind of
    value becomes (`slot`: the value written, or the variable a read value goes to)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0
        self.named: dict[str, tuple[dict[str, Any], str | None]] = {}
        self.constants: dict[str, object] = {}
        self.expanding: list[str] = []

    def name(self) -> str:
        self.count += 1
        return f"v{self.count}"

    def constant(self, prefix: str, value: object) -> str:
        name = f"{prefix}{len(self.constants)}"
        self.constants[name] = value
        return name

    def emit(self, line: str, depth: int) -> None:
        self.lines.append("    " * depth + line)

    def function(
        self, name: str, parameters: str, body: Callable[[], None], namespace: dict[str, Any]
    ) -> Any:
        self.emit(f"def {name}({parameters}):", 0)
        body()
        source = "\n".join(self.lines)
        scope = {**namespace, **self.constants}
        # The source is made from schemas/ alone: field names are checked to be Avro names,
        # and every value a schema gives (symbols, defaults) is a constant, never source text.
        exec(compile(source, "<compiled avro>", "exec"), scope)  # noqa: S102
        return scope[name]

    def value(self, schema: Any, slot: str, depth: int, namespace: str | None) -> None:
        if isinstance(schema, str) and schema in _PRIMITIVES:
            self.primitive(schema, slot, depth)
        elif isinstance(schema, str):
            full = _full_name(schema, namespace)
            if full not in self.named:
                raise SchemaNotCompiled(f"unknown named type {full}")
            if full in self.expanding:
                raise SchemaNotCompiled(f"recursive type {full}")
            definition, its_namespace = self.named[full]
            self.expanding.append(full)
            self._complex(definition, slot, depth, its_namespace)
            self.expanding.pop()
        elif isinstance(schema, list):
            if len(schema) != 2 or schema[0] != "null" or schema[1] == "null":
                raise SchemaNotCompiled(f"only [null, T] unions are compiled, not {schema!r}")
            self.optional(schema[1], slot, depth, namespace)
        elif isinstance(schema, dict):
            if schema.get("type") in ("record", "enum", "fixed"):
                its_namespace = schema.get("namespace", namespace)
                self.named[_full_name(schema["name"], its_namespace)] = (schema, its_namespace)
            self._complex(schema, slot, depth, namespace)
        else:
            raise SchemaNotCompiled(f"not a schema: {schema!r}")

    def _complex(self, schema: dict[str, Any], slot: str, depth: int, ns: str | None) -> None:
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical is not None:
            if (kind, logical) != ("long", "timestamp-micros"):
                raise SchemaNotCompiled(f"logical type {kind}/{logical} is not compiled")
            self.timestamp(slot, depth)
        elif kind == "record":
            ns = schema.get("namespace", ns)
            fields = schema["fields"]
            for field in fields:
                if not _AVRO_NAME.fullmatch(field["name"]):
                    raise SchemaNotCompiled(f"field name {field['name']!r} is not an Avro name")
                default = field.get("default")
                if isinstance(default, dict) or (isinstance(default, list) and default):
                    raise SchemaNotCompiled(f"field {field['name']}: only scalar and [] defaults")
            self.record(fields, slot, depth, ns)
        elif kind == "enum":
            self.enum(schema["symbols"], slot, depth)
        elif kind == "array":
            self.blocks(schema["items"], slot, depth, ns, keyed=False)
        elif kind == "map":
            self.blocks(schema["values"], slot, depth, ns, keyed=True)
        elif kind in _PRIMITIVES:
            self.primitive(kind, slot, depth)
        else:
            raise SchemaNotCompiled(f"type {kind} is not compiled")

    def primitive(self, kind: str, slot: str, depth: int) -> None:
        raise NotImplementedError

    def optional(self, schema: Any, slot: str, depth: int, namespace: str | None) -> None:
        raise NotImplementedError

    def timestamp(self, slot: str, depth: int) -> None:
        raise NotImplementedError

    def record(self, fields: list[dict[str, Any]], slot: str, depth: int, ns: str | None) -> None:
        raise NotImplementedError

    def enum(self, symbols: list[str], slot: str, depth: int) -> None:
        raise NotImplementedError

    def blocks(self, items: Any, slot: str, depth: int, ns: str | None, *, keyed: bool) -> None:
        raise NotImplementedError


class _WriterGenerator(_Generator):
    def primitive(self, kind: str, slot: str, depth: int) -> None:
        if kind in ("string", "bytes"):
            data = self.name()
            self.emit(
                f"{data} = {slot}.encode()" if kind == "string" else f"{data} = {slot}", depth
            )
            self.emit(f"w(L(len({data})))", depth)
            self.emit(f"w({data})", depth)
        elif kind in ("int", "long"):
            self.emit(f"w(L({slot}))", depth)
        elif kind == "double":
            self.emit(f"w(PACK_DOUBLE({slot}))", depth)
        elif kind == "boolean":
            self.emit(f"w(ONE if {slot} else ZERO)", depth)
        # null: nothing is written

    def optional(self, schema: Any, slot: str, depth: int, namespace: str | None) -> None:
        value = self.name()
        self.emit(f"{value} = {slot}", depth)
        self.emit(f"if {value} is None:", depth)
        self.emit("w(ZERO)", depth + 1)
        self.emit("else:", depth)
        self.emit("w(TWO)", depth + 1)  # branch 1, zig-zag
        self.value(schema, value, depth + 1, namespace)

    def timestamp(self, slot: str, depth: int) -> None:
        # Exact: a timedelta is a whole number of microseconds, as fastavro's sum is.
        self.emit(f"w(L(({slot} - EPOCH) // MICROSECOND))", depth)

    def record(self, fields: list[dict[str, Any]], slot: str, depth: int, ns: str | None) -> None:
        record = self.name()
        self.emit(f"{record} = {slot}", depth)
        for field in fields:
            if "default" in field:
                # A model without the field (an older twin's) writes the schema's default, as
                # fastavro writes a dict without the key.
                default = self.constant("DEFAULT", field["default"])
                value = f"getattr({record}, {field['name']!r}, {default})"
            else:
                value = f"{record}.{field['name']}"
            self.value(field["type"], value, depth, ns)

    def enum(self, symbols: list[str], slot: str, depth: int) -> None:
        table = self.constant("POSITIONS", {s: long_bytes(i) for i, s in enumerate(symbols)})
        self.emit(f"w({table}[{slot}])", depth)

    def blocks(self, items: Any, slot: str, depth: int, ns: str | None, *, keyed: bool) -> None:
        """An array or a map: one block of all its items, then the empty block that ends it."""
        collection, key, item = self.name(), self.name(), self.name()
        self.emit(f"{collection} = {slot}", depth)
        self.emit(f"if {collection}:", depth)
        self.emit(f"w(L(len({collection})))", depth + 1)
        if keyed:
            self.emit(f"for {key}, {item} in {collection}.items():", depth + 1)
            self.primitive("string", key, depth + 2)
        else:
            self.emit(f"for {item} in {collection}:", depth + 1)
        self.value(items, item, depth + 2, ns)
        self.emit("w(ZERO)", depth)


class _ReaderGenerator(_Generator):
    """Reads into local variables; `p` is the position in `data`, `n` its length."""

    def long(self, target: str, depth: int) -> None:
        # Most varints are one byte: read inline, the rest by read_long.
        byte = self.name()
        self.emit(f"{byte} = data[p]", depth)
        self.emit(f"if {byte} < 128:", depth)
        self.emit(f"{target} = ({byte} >> 1) ^ -({byte} & 1)", depth + 1)
        self.emit("p += 1", depth + 1)
        self.emit("else:", depth)
        self.emit(f"{target}, p = read_long(data, p)", depth + 1)

    def primitive(self, kind: str, slot: str, depth: int) -> None:
        if kind in ("string", "bytes"):
            size, end = self.name(), self.name()
            self.long(size, depth)
            self.emit(f"{end} = p + {size}", depth)
            self.emit(f"if {size} < 0 or {end} > n:", depth)
            self.emit("raise BodyInvalid('a length past the end of the body')", depth + 1)
            chunk = f"data[p:{end}]"
            self.emit(
                f"{slot} = {chunk}.decode()" if kind == "string" else f"{slot} = {chunk}", depth
            )
            self.emit(f"p = {end}", depth)
        elif kind in ("int", "long"):
            self.long(slot, depth)
        elif kind == "double":
            self.emit(f"{slot} = UNPACK_DOUBLE(data, p)[0]", depth)
            self.emit("p += 8", depth)
        elif kind == "boolean":
            self.emit(f"{slot} = data[p] != 0", depth)  # as fastavro: any byte but 0 is true
            self.emit("p += 1", depth)
        else:
            self.emit(f"{slot} = None", depth)

    def optional(self, schema: Any, slot: str, depth: int, namespace: str | None) -> None:
        branch = self.name()
        self.long(branch, depth)
        self.emit(f"if {branch} == 0:", depth)
        self.emit(f"{slot} = None", depth + 1)
        self.emit(f"elif {branch} == 1:", depth)
        self.value(schema, slot, depth + 1, namespace)
        self.emit("else:", depth)
        self.emit("raise BodyInvalid('a union branch the schema does not have')", depth + 1)

    def timestamp(self, slot: str, depth: int) -> None:
        micros = self.name()
        self.long(micros, depth)
        self.emit(f"{slot} = EPOCH + timedelta(microseconds={micros})", depth)

    def record(self, fields: list[dict[str, Any]], slot: str, depth: int, ns: str | None) -> None:
        values = []
        for field in fields:
            value = self.name()
            self.value(field["type"], value, depth, ns)
            values.append(f"{field['name']!r}: {value}")
        self.emit(f"{slot} = {{{', '.join(values)}}}", depth)

    def enum(self, symbols: list[str], slot: str, depth: int) -> None:
        table = self.constant("SYMBOLS", tuple(symbols))
        position = self.name()
        self.long(position, depth)
        self.emit(f"if not 0 <= {position} < {len(symbols)}:", depth)
        self.emit("raise BodyInvalid('an enum position the schema does not have')", depth + 1)
        self.emit(f"{slot} = {table}[{position}]", depth)

    def blocks(self, items: Any, slot: str, depth: int, ns: str | None, *, keyed: bool) -> None:
        """Blocks of items until the empty one; a negative count is followed by the block's
        size in bytes (the spec's form for skipping), which is read and ignored."""
        count, key, item, ignored = self.name(), self.name(), self.name(), self.name()
        self.emit(f"{slot} = {{}}" if keyed else f"{slot} = []", depth)
        self.emit("while True:", depth)
        self.long(count, depth + 1)
        self.emit(f"if {count} == 0:", depth + 1)
        self.emit("break", depth + 2)
        self.emit(f"if {count} < 0:", depth + 1)
        self.emit(f"{count} = -{count}", depth + 2)
        self.emit(f"{ignored}, p = read_long(data, p)", depth + 2)
        self.emit(f"for _ in range({count}):", depth + 1)
        if keyed:
            self.primitive("string", key, depth + 2)
        self.value(items, item, depth + 2, ns)
        self.emit(f"{slot}[{key}] = {item}" if keyed else f"{slot}.append({item})", depth + 2)


def compile_writer(schema: dict[str, Any]) -> Writer:
    """A function that appends the Avro binary body of a model of `schema` (a parsed,
    self-contained record schema) to a list of byte strings, whose join is the body."""
    generator = _WriterGenerator()

    def body() -> None:
        generator.emit("w = parts.append", 1)
        generator.value(schema, "event", 1, None)

    write: Writer = generator.function(
        "write",
        "event, parts",
        body,
        {
            "L": long_bytes,
            "PACK_DOUBLE": _DOUBLE.pack,
            "EPOCH": EPOCH,
            "MICROSECOND": MICROSECOND,
            "ZERO": long_bytes(0),
            "ONE": b"\x01",
            "TWO": long_bytes(1),
        },
    )
    return write


def compile_reader(schema: dict[str, Any]) -> Reader:
    """A function that reads the Avro binary body of `schema` at the start of `data`: the
    record as fastavro reads it, and the position after it. Raises BodyInvalid, IndexError,
    struct.error or UnicodeDecodeError on bytes that are not such a body."""
    generator = _ReaderGenerator()

    def body() -> None:
        generator.emit("p = 0", 1)
        generator.emit("n = len(data)", 1)
        generator.value(schema, "record", 1, None)
        generator.emit("return record, p", 1)

    read: Reader = generator.function(
        "read",
        "data",
        body,
        {
            "read_long": read_long,
            "UNPACK_DOUBLE": _DOUBLE.unpack_from,
            "EPOCH": EPOCH,
            "timedelta": timedelta,
            "BodyInvalid": BodyInvalid,
        },
    )
    return read
