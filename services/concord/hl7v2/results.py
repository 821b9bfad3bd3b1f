"""HL7 v2 results read as text: a narrative (a pathology report, a comment) comes one line
per OBX, all under one observation identifier (OBX-3) and sub-id (OBX-4), so its lines are
one result. Normalization reads such a result as one fact, the narrative worker as one text;
both gather and join the lines here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from concord.hl7v2.er7 import Er7Message, Segment

# OBX-2 value types whose OBX-5 is a line of text.
TEXT_TYPES = frozenset({"TX", "FT", "ST"})


@dataclass(frozen=True)
class TextResult:
    """One text result: its OBR (None before any), and its OBX lines as sent."""

    obr: Segment | None
    lines: tuple[Segment, ...]

    @property
    def sub_id(self) -> str:
        return self.lines[0].value(4)

    @property
    def text(self) -> str:
        return joined(self.lines)


def is_text(obx: Segment) -> bool:
    return obx.value(2).upper() in TEXT_TYPES


def results(message: Er7Message) -> tuple[list[tuple[Segment, Segment | None]], list[TextResult]]:
    """The message's other OBX, each with its OBR, in order; and its text results, in the
    order their first line comes."""
    others: list[tuple[Segment, Segment | None]] = []
    texts: dict[tuple[int, str, str], tuple[Segment | None, list[Segment]]] = {}
    obr: Segment | None = None
    for segment in message.segments:
        if segment.name == "OBR":
            obr = segment
        elif segment.name == "OBX" and is_text(segment):
            key = (obr.index if obr else 0, segment.raw(3), segment.value(4))
            texts.setdefault(key, (obr, []))[1].append(segment)
        elif segment.name == "OBX":
            others.append((segment, obr))
    return others, [TextResult(parent, tuple(lines)) for parent, lines in texts.values()]


def joined(lines: Sequence[Segment]) -> str:
    """Lines in OBX-1 set-id order (as sent where a set id is no number), each repetition of
    OBX-5 a line. The whole repetition is read, not its first component: a narrative's stray,
    unescaped "^" is text, not a component separator."""
    ordered = sorted(enumerate(lines), key=lambda pair: (_set_id(pair[1]), pair[0]))
    return "\n".join(
        segment.unescape(repetition)
        for _, segment in ordered
        for repetition in (segment.repetitions(5) or [""])
    )


def _set_id(segment: Segment) -> int:
    text = segment.value(1)
    return int(text) if text.isdigit() else 0
