"""A lazy reader of HL7 v2 ER7 text: segments split once, fields and components on demand.

python-hl7 builds a container object for every field, repetition and component at parse
time: measured here at ~170 µs for a 240-byte message and ~12 ms for an 8.5 KB ADT, which is
far below what one ingestion worker must pass. Most of a message is never looked at (Concord
reads MSH, EVN, PID, AL1, DG1, OBR/OBX, RXE/RXA), so this reader splits segments with
str.split and each field only when asked; timestamps are read as python-hl7 reads them
(parse_timestamp). Escape sequences are decoded here too (see unescape for why). Custom
encoding characters are read from MSH-1/MSH-2 as the standard says. C0 control characters
(but tab, line feed and carriage return) are never read outside MSH: parse removes those sent
as they are, and unescape drops those a hex escape (`\\X00\\`) decodes to;
`Er7Message.stripped` and `escaped_controls` say where. MSH is read as sent: its fields are the
message's identity and its source, which are refused (not read differently) when they hold one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

from concord.text import CONTROL_CHARACTERS, has_control_character

_BOM = b"\xef\xbb\xbf"
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")
# The names _SEGMENT_NAME has accepted, each checked once: at most 33,696 (26 * 36 * 36).
_SEGMENT_NAMES: set[str] = set()
# HL7 v2 DTM (TS.1 where the version uses TS), in ASCII digits:
# YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]. The one statement of the grammar: every
# caller reads it through split_dtm (or parse_timestamp, which reads the same match).
_DTM = re.compile(
    r"(?a)(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,4}))?)?)?)?)?)?"
    r"([+-]\d{4})?"
)
# MSH-18 names the character set; these are the ones HL7 table 0211 defines that Python reads.
CHARSETS = {
    "": "utf-8",
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "8859/1": "iso-8859-1",
    "8859/2": "iso-8859-2",
    "8859/15": "iso-8859-15",
    "UNICODE UTF-16": "utf-16",
}


class Er7Error(ValueError):
    """The text is not readable as an HL7 v2 message; the message names the rule, never data."""

    def __init__(self, reason: str, location: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.location = location


@dataclass(frozen=True)
class Separators:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = "#"  # v2.7's fifth encoding character, named or not


# The separators nearly every sender uses, as separators_of reads them: made once.
_STANDARD = Separators()
_STANDARD_ENCODING = "^~\\&"


def separators_of(field_separator: str, encoding: str) -> Separators | None:
    """The separators MSH-1 and MSH-2 define, or None when they are not usable: four encoding
    characters (five from v2.7, the truncation character), all distinct, none a letter, a
    digit or white space."""
    chosen = field_separator + encoding
    if (
        len(field_separator) != 1
        or len(encoding) not in (4, 5)
        or len(set(chosen)) != len(chosen)
        or any(c.isalnum() or c.isspace() for c in chosen)
    ):
        return None
    return Separators(field_separator, *encoding)


class Segment:
    __slots__ = ("_fields", "index", "name", "separators")

    def __init__(self, text: str, separators: Separators, index: int) -> None:
        fields = text.split(separators.field)
        name = fields[0]
        if name == "MSH":
            # MSH-1 is the field separator itself, so MSH field n is at split position n - 1.
            fields.insert(1, separators.field)
        self._fields = fields
        self.name = name
        self.separators = separators
        self.index = index  # the segment's position among segments of its name, 1-based

    def location(self, field: int, component: int | None = None) -> str:
        where = f"{self.name}[{self.index}]-{field}" if self.index > 1 else f"{self.name}-{field}"
        return f"{where}.{component}" if component else where

    def raw(self, field: int) -> str:
        """The field as sent, escapes and all; empty when absent."""
        return self._fields[field] if 0 < field < len(self._fields) else ""

    def repetitions(self, field: int) -> list[str]:
        raw = self.raw(field)
        if not raw or (self.name == "MSH" and field <= 2):
            return [raw] if raw else []
        return raw.split(self.separators.repetition)

    def values(self, field: int, component: int = 1) -> list[str]:
        """One component of every repetition of a field, unescaped."""
        return [self._component(rep, component) for rep in self.repetitions(field)]

    def value(
        self, field: int, component: int = 1, repetition: int = 0, *, subcomponent: int = 1
    ) -> str:
        """One subcomponent (1-based; the first by default) of one component of one
        repetition, unescaped."""
        if repetition < 0 or component < 1 or subcomponent < 1:  # counted from the end
            reps = self.repetitions(field)
            if repetition >= len(reps):
                return ""
            return self._component(reps[repetition], component, subcomponent)
        # repetitions and _component, in one call: this is the reader's innermost loop.
        fields = self._fields
        raw = fields[field] if 0 < field < len(fields) else ""
        separators = self.separators
        component_separator = separators.component
        subcomponent_separator = separators.subcomponent
        if (
            component_separator not in raw
            and separators.repetition not in raw
            and subcomponent_separator not in raw
        ):
            # Most fields read (ids, timestamps, codes' systems) hold no separator: the value
            # is the field itself or nothing.
            if not raw or repetition or component != 1 or subcomponent != 1:
                return ""
            text = raw
        else:
            if self.name == "MSH" and field <= 2:
                reps = [raw]
            else:
                reps = raw.split(separators.repetition)
            if repetition >= len(reps):
                return ""
            parts = reps[repetition].split(component_separator)
            if component > len(parts):
                return ""
            subparts = parts[component - 1].split(subcomponent_separator)
            if subcomponent > len(subparts):
                return ""
            text = subparts[subcomponent - 1]
        return self.unescape(text) if separators.escape in text else text

    def _component(self, repetition: str, component: int, subcomponent: int = 1) -> str:
        parts = repetition.split(self.separators.component)
        if component > len(parts):
            return ""
        subparts = parts[component - 1].split(self.separators.subcomponent)
        return self.unescape(subparts[subcomponent - 1]) if subcomponent <= len(subparts) else ""

    def unescape(self, text: str) -> str:
        return unescape(text, self.separators, controls=self.name == "MSH")


@dataclass(frozen=True)
class Er7Message:
    segments: tuple[Segment, ...]
    separators: Separators
    text: str  # the message with segments joined by carriage returns, as normalized
    # Where parse removed control characters sent as they are (`PID-5.1`), in message order.
    stripped: tuple[str, ...] = ()

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def first(self, name: str) -> Segment | None:
        for segment in self.segments:
            if segment.name == name:
                return segment
        return None

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]


# Formatting escapes (2.7 §2.7.6): a line break stays a line break, the rest is layout.
_FORMATTING = {".br": "\n", "H": "", "N": "", ".fi": "", ".nf": "", ".in": "", ".ti": "", ".sk": ""}


def unescape(text: str, separators: Separators, *, controls: bool = False) -> str:
    """The text with HL7 escape sequences decoded. Never raises and never logs: python-hl7's
    own unescape logs the whole field on an unknown sequence (PHI in the logs) and raises on
    a malformed `\\.sp` count, so a sender's typo could stop the worker. A hex escape's
    control characters are dropped, unless `controls` keeps them (MSH's fields)."""
    escape = separators.escape
    if escape not in text:
        return text
    named = {
        "F": separators.field,
        "S": separators.component,
        "T": separators.subcomponent,
        "R": separators.repetition,
        "E": escape,
        "P": separators.truncation,
    }
    parts = text.split(escape)
    out = [parts[0]]
    # Odd positions are sequences; an unterminated last one is text.
    for position in range(1, len(parts)):
        part = parts[position]
        if position % 2 == 0:
            out.append(part)
        elif position == len(parts) - 1:
            out.append(escape + part)
        else:
            out.append(named.get(part) or _escape_sequence(part, controls))
    return "".join(out)


def _escape_sequence(sequence: str, controls: bool) -> str:
    if sequence.startswith("X") and len(sequence) % 2 == 1:
        try:
            decoded = bytes.fromhex(sequence[1:]).decode("latin-1")
        except ValueError:
            return ""
        return decoded if controls else CONTROL_CHARACTERS.sub("", decoded)
    if sequence.startswith(".sp"):
        count = sequence[3:].strip()
        return "\n" * (int(count) if count.isdigit() and len(count) < 3 else 1)
    # Character-set switches (C, M), locally defined (Z) and unknown sequences carry no text.
    return _FORMATTING.get(sequence[:3], "")


def decode(data: bytes) -> str:
    """The message's text in the character set MSH-18 names (UTF-8 when it names none)."""
    data = data.removeprefix(_BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # Not UTF-8: MSH is ASCII, so read MSH-18 from a Latin-1 view and decode accordingly.
    head = data.split(b"\r", 1)[0].split(b"\n", 1)[0].decode("iso-8859-1")
    fields = head.split(head[3]) if len(head) > 3 else []
    charset = fields[17].split("~")[0].strip().upper() if len(fields) > 17 else ""
    encoding = CHARSETS.get(charset)
    if encoding is None or encoding == "utf-8":
        raise Er7Error(
            "the message is not UTF-8 and MSH-18 names no character set read here", "MSH-18"
        )
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise Er7Error(
            "the message is not valid in the character set MSH-18 names", "MSH-18"
        ) from None


def parse(data: bytes | str) -> Er7Message:
    """Split a message into segments. Any segment terminator is accepted (CR, LF, CRLF)."""
    text = decode(data) if isinstance(data, bytes) else data.removeprefix("\ufeff")
    sent = [line for line in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if line]
    controls = has_control_character(text)
    if controls:  # the header (the first line) is kept as sent
        sent[1:] = [line for line in sent[1:] if CONTROL_CHARACTERS.sub("", line)]
    lines = (
        [sent[0], *(CONTROL_CHARACTERS.sub("", line) for line in sent[1:])] if controls else sent
    )
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 8:
        raise Er7Error("the message does not start with an MSH segment", "MSH")
    head = lines[0]
    field_separator = head[3]
    encoding = head[4:].split(field_separator, 1)[0]
    separators = (
        _STANDARD
        if field_separator == "|" and encoding == _STANDARD_ENCODING
        else separators_of(field_separator, encoding)
    )
    if separators is None:
        raise Er7Error("MSH-1 and MSH-2 do not define five distinct separators", "MSH-2")
    counts: dict[str, int] = {}
    segments: list[Segment] = []
    for line in lines:
        name = line[:3]
        if name not in _SEGMENT_NAMES and _SEGMENT_NAME.match(name):
            _SEGMENT_NAMES.add(name)
        if name not in _SEGMENT_NAMES or (len(line) > 3 and line[3] != field_separator):
            raise Er7Error(
                f"segment {len(segments) + 1} does not start with a segment name",
                f"segment {len(segments) + 1}",
            )
        counts[name] = counts.get(name, 0) + 1
        segments.append(Segment(line, separators, counts[name]))
    stripped: list[str] = []
    if controls:
        # Separators are never control characters, so the line as sent splits into the same
        # fields and components as the segment read from it.
        for segment, line in zip(segments[1:], sent[1:], strict=True):
            if CONTROL_CHARACTERS.search(line):
                as_sent = Segment(line, separators, segment.index)._fields
                stripped += _control_locations(segment, as_sent, _has_control)
    return Er7Message(tuple(segments), separators, "\r".join(lines), tuple(stripped))


def _has_control(text: str, _separators: Separators) -> bool:
    return CONTROL_CHARACTERS.search(text) is not None


def _escapes_control(text: str, separators: Separators) -> bool:
    """Whether unescape, reading this component, drops a control character a hex escape
    decodes to: the same reading of escape sequences, subcomponent by subcomponent."""
    escape = separators.escape
    for subcomponent in text.split(separators.subcomponent):
        parts = subcomponent.split(escape)
        for sequence in parts[1:-1:2]:  # odd positions, an unterminated last one excepted
            if not (sequence.startswith("X") and len(sequence) % 2 == 1):
                continue
            try:
                decoded = bytes.fromhex(sequence[1:]).decode("latin-1")
            except ValueError:
                continue
            if CONTROL_CHARACTERS.search(decoded):
                return True
    return False


def _control_locations(
    segment: Segment, fields: list[str], found: Callable[[str, Separators], bool]
) -> list[str]:
    """The components of a segment's fields (numbered as the segment numbers them) in which
    `found` finds a control character, as locations (`PID-5.1`); the segment's name when it
    is there."""
    separators = segment.separators
    where = f"{segment.name}[{segment.index}]" if segment.index > 1 else segment.name
    locations = [where] if found(fields[0], separators) else []
    for number, field in enumerate(fields[1:], start=1):
        if not found(field, separators):
            continue
        components = {
            position
            for repetition in field.split(separators.repetition)
            for position, component in enumerate(repetition.split(separators.component), 1)
            if found(component, separators)
        }
        locations += [segment.location(number, position) for position in sorted(components)]
    return locations


def escaped_controls(message: Er7Message) -> list[str]:
    """Where a hex escape decodes to a control character that unescape drops (`PID-5.1`), in
    message order; MSH is read as sent. Only a message whose text holds a hex escape at all is
    looked through."""
    marker = message.separators.escape + "X"
    if marker not in message.text:
        return []
    locations: list[str] = []
    for segment in message.segments[1:]:
        if any(marker in field for field in segment._fields[1:]):
            locations += _control_locations(segment, segment._fields, _escapes_control)
    return locations


_BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")
_LINE_END = re.compile(rb"\r\n|\r|\n")


def split_messages(data: bytes) -> list[bytes]:
    """The messages in an .hl7 file: each starts at an MSH, segments end with ``\\r``.

    Any of ``\\r``, ``\\n`` and ``\\r\\n`` ends a segment; a UTF-8 BOM, blank lines, stray MLLP
    framing bytes and batch envelope segments (FHS, BHS, BTS, FTS) are dropped. Anything else
    before the first MSH raises ``ValueError`` (with the line number, not the content).
    """
    messages: list[list[bytes]] = []
    for number, line in enumerate(_LINE_END.split(data.removeprefix(_BOM)), start=1):
        segment = line.strip(b"\x0b\x1c")
        if not segment.strip():
            continue
        name = segment[:3]
        if name == b"MSH":
            messages.append([segment])
        elif name in _BATCH_SEGMENTS:
            continue
        elif not messages:
            raise ValueError(f"line {number} comes before the first MSH segment")
        else:
            messages[-1].append(segment)
    return [b"".join(segment + b"\r" for segment in segments) for segments in messages]


class DtmParts(NamedTuple):
    """An HL7 DTM's parts as written (digits, leading zeros kept); None for each one left out.
    Nothing is checked beyond the grammar: month 13 or an offset of +0575 is still split."""

    year: str
    month: str | None
    day: str | None
    hour: str | None
    minute: str | None
    second: str | None
    fraction: str | None  # the 1-4 digits after the seconds' point
    offset: str | None  # +HHMM or -HHMM


def split_dtm(value: str, *, prefix: bool = False) -> DtmParts | None:
    """An HL7 DTM/TS split into its parts, white space around it ignored; None when it is not
    one. With prefix, the longest DTM the value starts with, whatever follows it (`1980051`
    splits as 1980, 05); None only when it does not start with four digits."""
    text = value.strip()
    found = _DTM.match(text) if prefix else _DTM.fullmatch(text)
    return DtmParts(*found.groups()) if found is not None else None


def _offset_zone(offset: str) -> timezone:
    """The zone of a DTM's offset (`-0500`); ValueError for an offset of a day or more
    (`-3000`), which no time zone can hold. Remembered: a feed sends a handful of offsets."""
    zone = _OFFSET_ZONES.get(offset)
    if zone is None:
        hours = int(offset[:3]) * 60
        minutes = int(offset[3:])
        # python-hl7's math.copysign(minutes, hours): the sign of the hours, `-00` being 0.
        zone = timezone(timedelta(minutes=hours + (minutes if hours >= 0 else -minutes)))
        _OFFSET_ZONES[offset] = zone
    return zone


# Offset as written -> its zone: at most the 20,000 offsets the DTM grammar can write.
_OFFSET_ZONES: dict[str, timezone] = {}


def parse_timestamp(value: str) -> datetime | None:
    """An HL7 DTM/TS (split_dtm); naive when it has no offset. None when it is not a
    timestamp at all (not a DTM, not a calendar date and time, or an offset of a day or more).

    Read from the DTM's parts as python-hl7's parse_datetime reads them, without parsing the
    text a second time: the seconds and their fraction as a float rounded to microseconds by
    timedelta, and the offset's minutes taking the sign of its hours (so `-0030`, hours
    `-00`, is 30 minutes east, as python-hl7 has it)."""
    found = _DTM.fullmatch(value.strip())
    if found is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = found.groups()
    try:
        if fraction is None:
            seconds, microseconds = int(second or 0), 0
        else:
            exact = timedelta(seconds=float(f"{second}.{fraction}"))
            seconds, microseconds = exact.seconds, exact.microseconds
        zone = None if offset is None else _offset_zone(offset)
        return datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            seconds,
            microseconds,
            tzinfo=zone,
        )
    except ValueError:  # not a calendar date and time (month 13, hour 24, year 0000)
        return None
