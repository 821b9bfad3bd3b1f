"""Times as Concord compares them: instants in UTC with the offset they were given in, dates
as the calendar values they are, each with the precision it was sent with.

A birth date of `1980` and one of `1980-05-12` do not disagree: the first says less. So a
Moment keeps its precision, and two Moments compare at the coarser of the two
(`same_at_precision`): `1980` and `1980-05-12` are compatible, `1980-05` and `1980-06-01`
are not.

Dates (FHIR `date`, HL7 DTM of up to 8 digits) are not instants: they have no UTC value,
only their calendar text. Date-times are instants: converted to UTC, with the offset they
were written in kept, so a reviewer sees the local time the source meant. A date-time
without an offset takes the `zone` the caller gives (the source's configured zone); without
one it is None, never a guess. A local time that a daylight-saving change skips or repeats
is None too: which of the two instants was meant is exactly what we cannot know. A leap
second (`:60`) is None as well: Python's datetime cannot hold it.

Precision: year, month, day (dates); hour (HL7 only: FHIR needs minutes), minute, second,
millisecond (any fraction of a second) for date-times.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

from concord.hl7v2 import er7

Precision = Literal["year", "month", "day", "hour", "minute", "second", "millisecond"]
PRECISIONS: tuple[Precision, ...] = (
    "year",
    "month",
    "day",
    "hour",
    "minute",
    "second",
    "millisecond",
)
_RANK = {precision: rank for rank, precision in enumerate(PRECISIONS)}
_LENGTH = {
    "hour": timedelta(hours=1),
    "minute": timedelta(minutes=1),
    "second": timedelta(seconds=1),
    "millisecond": timedelta(milliseconds=1),
}
# Characters of "YYYY-MM-DD" that each date precision covers.
_DATE_CHARS = {"year": 4, "month": 7, "day": 10}
_MAX_OFFSET_MINUTES = 14 * 60

# FHIR R4 date / dateTime / instant, the time part optional and its seconds too (some feeds
# send hh:mm; the meaning is clear and the precision says minute).
_FHIR = re.compile(
    r"(?a)^(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


class Moment(BaseModel):
    """A time as given. `utc` is the instant (None for a date, which is not one);
    `date_text` the calendar date as written (`1980`, `1980-05`, `1980-05-12`: for a
    date-time, its local date); `original_offset_minutes` the offset it was written in, or
    that the source's zone gave it."""

    model_config = ConfigDict(frozen=True)

    utc: datetime | None
    date_text: str
    precision: Precision
    original_offset_minutes: int | None = None

    def same_at_precision(self, other: Moment) -> bool:
        """Could both describe the same time, read at the coarser of their precisions?"""
        if self.utc is not None and other.utc is not None:
            # Both are intervals of absolute time, [start, start + precision): they agree
            # when they overlap (13:30 and 13:30:15 do, 13:30 and 13:31:15 do not).
            end_self = self.utc + _LENGTH[self.precision]
            end_other = other.utc + _LENGTH[other.precision]
            return self.utc < end_other and other.utc < end_self
        # A date against a date or a date-time: calendar values, compared at the coarser
        # precision on the date the source wrote (a birth date is a local date).
        coarser = min(self.precision, other.precision, key=_RANK.__getitem__)
        width = _DATE_CHARS.get(coarser, 10)
        return self.date_text[:width] == other.date_text[:width]


def same_at_precision(a: Moment | None, b: Moment | None) -> bool | None:
    """True when `a` and `b` agree at the coarser of their precisions, False when they do
    not, None when either is missing (nothing to compare)."""
    if a is None or b is None:
        return None
    return a.same_at_precision(b)


def normalize_time(text: str, *, zone: ZoneInfo | None = None) -> Moment | None:
    """A FHIR date, dateTime or instant → Moment; None when `text` is not one, or is a
    date-time without offset and no `zone` was given."""
    match = _FHIR.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if hour is None:
        return _date(year, month, day)
    offset_minutes: int | None = None
    if offset is not None:
        sign = -1 if offset.startswith("-") else 1
        offset_minutes = 0 if offset == "Z" else sign * (int(offset[1:3]) * 60 + int(offset[4:6]))
    precision: Precision = "minute" if second is None else "millisecond" if fraction else "second"
    return _instant(
        (int(year), int(month), int(day), int(hour), int(minute), int(second or 0)),
        fraction,
        precision,
        offset_minutes,
        zone,
    )


def from_hl7(text: str, *, zone: ZoneInfo | None) -> Moment | None:
    """An HL7 v2 DTM (or TS.1) → Moment; None when `text` is not one, or is a date-time
    without offset and no `zone` was given."""
    parts = er7.split_dtm(text)
    if parts is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = parts
    offset_minutes: int | None = None
    if offset is not None:
        sign = -1 if offset.startswith("-") else 1
        offset_minutes = sign * (int(offset[1:3]) * 60 + int(offset[3:5]))
        if int(offset[3:5]) >= 60:
            return None
    if hour is None or month is None or day is None:  # a date (the grammar: an hour has a day)
        moment = _date(year, month, day)
        if moment is None or offset_minutes is None:
            return moment
        return moment.model_copy(update={"original_offset_minutes": offset_minutes})
    precision: Precision = (
        "hour"
        if minute is None
        else "minute"
        if second is None
        else "millisecond"
        if fraction
        else "second"
    )
    fields = (int(year), int(month), int(day), int(hour), int(minute or 0), int(second or 0))
    return _instant(fields, fraction, precision, offset_minutes, zone)


def _date(year: str, month: str | None, day: str | None) -> Moment | None:
    try:
        date(int(year), int(month or 1), int(day or 1))  # a real calendar day, or None
    except ValueError:
        return None
    parts = [year, *(part for part in (month, day) if part is not None)]
    precision: Precision = "year" if month is None else "month" if day is None else "day"
    return Moment(utc=None, date_text="-".join(parts), precision=precision)


def _instant(
    fields: tuple[int, int, int, int, int, int],
    fraction: str | None,
    precision: Precision,
    offset_minutes: int | None,
    zone: ZoneInfo | None,
) -> Moment | None:
    microseconds = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        local = datetime(*fields, microsecond=microseconds)
    except ValueError:
        return None  # not a calendar time (month 13, 25:00, a leap second)
    aware: datetime | None
    if offset_minutes is not None:
        if abs(offset_minutes) > _MAX_OFFSET_MINUTES:
            return None
        aware = local.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    elif zone is not None:
        aware = _in_zone(local, zone)
        if aware is None:
            return None
        offset = aware.utcoffset()
        offset_minutes = int(offset.total_seconds() // 60) if offset is not None else None
    else:
        return None  # a local time in an unknown zone: the caller decides, we do not guess
    try:
        utc = aware.astimezone(UTC)
    except OverflowError:
        return None  # year 1 or 9999 pushed past the calendar by its offset
    return Moment(
        utc=utc,
        date_text=local.date().isoformat(),
        precision=precision,
        original_offset_minutes=offset_minutes,
    )


def _in_zone(local: datetime, zone: ZoneInfo) -> datetime | None:
    """`local` in `zone`, or None when a DST change makes it ambiguous or skips it."""
    first, second = local.replace(tzinfo=zone, fold=0), local.replace(tzinfo=zone, fold=1)
    if first.utcoffset() != second.utcoffset():
        return None  # repeated (autumn) or skipped (spring): two readings, no way to choose
    return first
