"""The ER7 reader's fast paths against plain references (issue 17): Segment.value against
splitting the field by hand, parse_timestamp against python-hl7's parse_datetime, which it
reads timestamps as."""

from __future__ import annotations

import datetime as dt

import hl7
from hypothesis import given, settings
from hypothesis import strategies as st

from concord.hl7v2 import er7

SEPARATORS = er7.Separators()
CUSTOM = er7.Separators("#", "$", "%", "\\", "@")


def _reference_value(
    segment: er7.Segment, field: int, component: int, repetition: int, subcomponent: int
) -> str:
    """Segment.value as the reader first wrote it: split by repetition, component and
    subcomponent (MSH-1 and MSH-2 are one repetition), then unescape."""
    separators = segment.separators
    raw = segment.raw(field)
    if not raw:
        reps = []
    elif segment.name == "MSH" and field <= 2:
        reps = [raw]
    else:
        reps = raw.split(separators.repetition)
    if repetition >= len(reps):
        return ""
    parts = reps[repetition].split(separators.component)
    if component > len(parts):
        return ""
    subparts = parts[component - 1].split(separators.subcomponent)
    if subcomponent > len(subparts):
        return ""
    return er7.unescape(subparts[subcomponent - 1], separators, controls=segment.name == "MSH")


def _field_text(separators: er7.Separators) -> st.SearchStrategy[str]:
    """A field's text: plain (most fields read) or with separators and escapes."""
    alphabet = (
        "ab X0 "
        + separators.component
        + separators.repetition
        + separators.subcomponent
        + separators.escape
    )
    return st.text(alphabet="ab X0", max_size=6) | st.text(alphabet=alphabet, max_size=14)


@settings(max_examples=1000)
@given(
    custom=st.booleans(),
    name=st.sampled_from(["MSH", "PID", "OBX"]),
    data=st.data(),
    field=st.sampled_from([1, 1, 2, 2, 3, 4, 5, 6, 0, -1]),
    # Mostly what callers pass, sometimes past the end or counted from it.
    component=st.sampled_from([1, 1, 1, 2, 2, 3, 4, 0, -1, -2]),
    repetition=st.sampled_from([0, 0, 0, 1, 1, 2, -1, -2]),
    subcomponent=st.sampled_from([1, 1, 1, 2, 2, 3, 0, -1, -2]),
)
def test_value_reads_a_field_as_splitting_it_by_hand_does(
    custom: bool,
    name: str,
    data: st.DataObject,
    field: int,
    component: int,
    repetition: int,
    subcomponent: int,
) -> None:
    separators = CUSTOM if custom else SEPARATORS
    fields = data.draw(st.lists(_field_text(separators), max_size=5))
    segment = er7.Segment(separators.field.join([name, *fields]), separators, 1)
    try:
        expected: str | type[Exception] = _reference_value(
            segment, field, component, repetition, subcomponent
        )
    except IndexError:  # counted from the end, past the start
        expected = IndexError
    try:
        found: str | type[Exception] = segment.value(
            field, component, repetition, subcomponent=subcomponent
        )
    except IndexError:
        found = IndexError
    assert found == expected


def _reference_timestamp(value: str) -> dt.datetime | None:
    """parse_timestamp as it was: the grammar (split_dtm), then python-hl7's parse_datetime,
    its offset in the standard timezone class."""
    value = value.strip()
    if er7.split_dtm(value) is None:
        return None
    try:
        parsed = hl7.parse_datetime(value)
        offset = parsed.utcoffset() if isinstance(parsed, dt.datetime) else None
    except (ValueError, TypeError):
        return None
    if not isinstance(parsed, dt.datetime):
        return None
    return parsed if offset is None else parsed.replace(tzinfo=dt.timezone(offset))


_DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=1)


@st.composite
def _dtm(draw: st.DrawFn) -> str:
    """A DTM (or near one): 4 to 14 digits, maybe a fraction and an offset, around realistic
    values or anywhere in the grammar."""
    digits = draw(st.sampled_from([4, 6, 8, 10, 12, 14, 13, 3]))
    if draw(st.booleans()):
        moment = draw(st.datetimes(min_value=dt.datetime(1, 1, 1)))
        text = moment.strftime("%Y%m%d%H%M%S").rjust(14, "0")[:digits]
    else:
        text = "".join(draw(st.lists(_DIGITS, min_size=digits, max_size=digits)))
    if digits == 14 and draw(st.booleans()):
        text += "." + "".join(draw(st.lists(_DIGITS, min_size=1, max_size=5)))
    if draw(st.booleans()):
        hours = draw(st.sampled_from(["00", "01", "05", "14", "23", "24", "30", "99"]))
        minutes = draw(st.sampled_from(["00", "30", "45", "59", "60", "75", "99"]))
        text += draw(st.sampled_from("+-")) + hours + minutes
    return draw(st.sampled_from(["", " ", "\n"])) + text


@settings(max_examples=600)
@given(_dtm())
def test_parse_timestamp_reads_a_dtm_as_python_hl7_does(value: str) -> None:
    expected = _reference_timestamp(value)
    found = er7.parse_timestamp(value)
    assert repr(found) == repr(expected)
    if found is not None and expected is not None:
        assert found.utcoffset() == expected.utcoffset()


def test_a_negative_zero_hour_offset_keeps_python_hl7s_reading() -> None:
    """python-hl7 gives the offset's minutes the sign of its hours, and -00 has none: -0030
    is read as 30 minutes east. Kept as it was, so that stored times do not move."""
    for value in ("20240301120000-0030", "20240301120000+0030", "20240301120000-0000"):
        assert er7.parse_timestamp(value) == _reference_timestamp(value)
    moment = er7.parse_timestamp("20240301120000-0030")
    assert moment is not None and moment.utcoffset() == dt.timedelta(minutes=30)
