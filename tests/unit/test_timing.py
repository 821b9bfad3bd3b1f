"""Timing, pure: FHIR and HL7 times in UTC with their offset, partial dates by precision."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from concord.normalization.timing import (
    Moment,
    Precision,
    from_hl7,
    normalize_time,
    same_at_precision,
)

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
KOLKATA = ZoneInfo("Asia/Kolkata")


def _fhir(text: str, zone: ZoneInfo | None = None) -> Moment:
    moment = normalize_time(text, zone=zone)
    assert moment is not None, text
    return moment


def _hl7(text: str, zone: ZoneInfo | None = None) -> Moment:
    moment = from_hl7(text, zone=zone)
    assert moment is not None, text
    return moment


# --- FHIR ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "date_text", "precision"),
    [
        ("1980", "1980", "year"),
        ("1980-05", "1980-05", "month"),
        ("1980-05-12", "1980-05-12", "day"),
        ("2024-02-29", "2024-02-29", "day"),
    ],
)
def test_a_partial_date_keeps_its_precision_and_is_no_instant(
    text: str, date_text: str, precision: Precision
) -> None:
    assert _fhir(text) == Moment(utc=None, date_text=date_text, precision=precision)


def test_a_date_time_becomes_utc_with_its_offset_kept() -> None:
    moment = _fhir("2021-03-04T09:15:00-05:00")
    assert moment.utc == datetime(2021, 3, 4, 14, 15, tzinfo=UTC)
    assert moment.original_offset_minutes == -300
    assert (moment.precision, moment.date_text) == ("second", "2021-03-04")
    assert _fhir("2021-03-04T14:15:00Z").original_offset_minutes == 0
    assert _fhir("2021-03-04T19:45:00+05:30").utc == moment.utc
    assert _fhir("2021-03-04T19:45:00+05:30").original_offset_minutes == 330


@pytest.mark.parametrize(
    ("text", "precision", "microsecond"),
    [
        ("2021-03-04T09:15-05:00", "minute", 0),
        ("2021-03-04T09:15:07-05:00", "second", 0),
        ("2021-03-04T09:15:07.5-05:00", "millisecond", 500000),
        ("2021-03-04T09:15:07.123456789Z", "millisecond", 123456),  # an instant's nanoseconds
    ],
)
def test_date_time_precision(text: str, precision: str, microsecond: int) -> None:
    moment = _fhir(text)
    assert moment.precision == precision
    assert moment.utc is not None and moment.utc.microsecond == microsecond


def test_a_date_time_without_offset_takes_the_zone_or_is_none() -> None:
    assert normalize_time("2021-07-01T08:00:00") is None  # never guessed
    summer = _fhir("2021-07-01T08:00:00", zone=NEW_YORK)
    assert summer.utc == datetime(2021, 7, 1, 12, 0, tzinfo=UTC)
    assert summer.original_offset_minutes == -240
    winter = _fhir("2021-01-15T08:00:00", zone=NEW_YORK)
    assert winter.original_offset_minutes == -300
    # An offset in the text wins over the source's zone.
    assert _fhir("2021-07-01T08:00:00+02:00", zone=NEW_YORK).original_offset_minutes == 120


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "1980-13",
        "1980-02-30",
        "2023-02-29",
        "80-05-12",
        "1980-5-12",
        "1980-05-12T25:00:00Z",
        "1980-05-12T10:61:00Z",
        "1980-05-12T10:00:00+15:00",  # no zone is that far from UTC
        "1980-05-12T10:00:00+0500",  # HL7's offset form is not FHIR's
        "1980-05-12 10:00:00Z",
        "1980-05-12T10:00:00.Z",
        "0000",
        "1980-05-12T23:59:60Z",  # a leap second: datetime cannot hold it
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
    ],
)
def test_what_is_not_a_fhir_time_is_none(text: str) -> None:
    assert normalize_time(text, zone=NEW_YORK) is None


# --- HL7 v2 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "date_text", "precision"),
    [("1980", "1980", "year"), ("198005", "1980-05", "month"), ("19800512", "1980-05-12", "day")],
)
def test_an_hl7_date_is_a_date(text: str, date_text: str, precision: str) -> None:
    moment = _hl7(text)
    assert (moment.utc, moment.date_text, moment.precision) == (None, date_text, precision)


@pytest.mark.parametrize(
    ("text", "precision", "utc"),
    [
        ("2021030409-0500", "hour", datetime(2021, 3, 4, 14, 0, tzinfo=UTC)),
        ("202103040915-0500", "minute", datetime(2021, 3, 4, 14, 15, tzinfo=UTC)),
        ("20210304091507-0500", "second", datetime(2021, 3, 4, 14, 15, 7, tzinfo=UTC)),
        (
            "20210304091507.1234-0500",
            "millisecond",
            datetime(2021, 3, 4, 14, 15, 7, 123400, tzinfo=UTC),
        ),
        ("20210304091507+0000", "second", datetime(2021, 3, 4, 9, 15, 7, tzinfo=UTC)),
        ("20210304194507+0530", "second", datetime(2021, 3, 4, 14, 15, 7, tzinfo=UTC)),
    ],
)
def test_an_hl7_date_time_with_offset(text: str, precision: str, utc: datetime) -> None:
    moment = _hl7(text, zone=BERLIN)  # the offset in the text wins over the zone
    assert (moment.utc, moment.precision) == (utc, precision)
    assert moment.original_offset_minutes == int(text[-5] + "1") * (
        int(text[-4:-2]) * 60 + int(text[-2:])
    )


def test_an_hl7_date_time_without_offset_takes_the_sources_zone() -> None:
    assert from_hl7("20210304091507", zone=None) is None
    moment = _hl7("20210304091507", zone=NEW_YORK)
    assert moment.utc == datetime(2021, 3, 4, 14, 15, 7, tzinfo=UTC)
    assert moment.original_offset_minutes == -300
    assert _hl7("20210704091507", zone=NEW_YORK).original_offset_minutes == -240
    assert _hl7("20210304091507", zone=KOLKATA).original_offset_minutes == 330


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2021-03-04",
        "202",
        "2021030",
        "20211304",
        "20210230",
        "2021030425",
        "20210304096",
        "20210304091507-05",
        "20210304091507-0575",  # 75 minutes
        "20210304091507+1500",
        "20210304091507.",
    ],
)
def test_what_is_not_an_hl7_time_is_none(text: str) -> None:
    assert from_hl7(text, zone=NEW_YORK) is None


# --- daylight saving ----------------------------------------------------------------------------


def test_a_local_time_a_dst_change_skips_or_repeats_is_none() -> None:
    # New York, 14 March 2021: 02:00 → 03:00, so 02:30 never happened.
    assert from_hl7("202103140230", zone=NEW_YORK) is None
    assert normalize_time("2021-03-14T02:30:00", zone=NEW_YORK) is None
    # 7 November 2021: 02:00 → 01:00, so 01:30 happened twice (EDT, then EST).
    assert from_hl7("202111070130", zone=NEW_YORK) is None
    assert normalize_time("2021-11-07T01:30:00", zone=NEW_YORK) is None
    # With the offset written, either 01:30 is one instant.
    first = _hl7("202111070130-0400")
    second = _hl7("202111070130-0500")
    assert second.utc is not None and first.utc is not None
    assert second.utc - first.utc == timedelta(hours=1)


def test_the_minutes_around_a_dst_change_are_exact() -> None:
    before = _hl7("202103140159", zone=NEW_YORK)
    after = _hl7("202103140300", zone=NEW_YORK)
    assert before.utc is not None and after.utc is not None
    assert after.utc - before.utc == timedelta(minutes=1)
    assert (before.original_offset_minutes, after.original_offset_minutes) == (-300, -240)
    # Europe changes on another day: 28 March 2021, 02:00 → 03:00.
    assert from_hl7("202103280230", zone=BERLIN) is None
    assert _hl7("202103140230", zone=BERLIN).original_offset_minutes == 60


# --- comparing by precision ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("1980", "1980-05-12", True),
        ("1980", "1981", False),
        ("1980-05", "1980-05-31", True),
        ("1980-05", "1980-06-01", False),
        ("1980-05-12", "1980-05-12", True),
        ("1980-05-12", "1980-05-21", False),  # a swapped day/month is a difference
        ("1980-05-12", "1980-05-12T23:30:00-05:00", True),  # the local date the source wrote
        ("1980-05", "1980-05-31T23:30:00-05:00", True),
        ("1980-05-13", "1980-05-12T23:30:00-05:00", False),
        ("2021-03-04T09:15-05:00", "2021-03-04T09:15:42-05:00", True),
        ("2021-03-04T09:15-05:00", "2021-03-04T09:16:00-05:00", False),
        ("2021-03-04T09:15:00-05:00", "2021-03-04T14:15:00Z", True),  # one instant, two offsets
        ("2021-03-04T09:15:07.250Z", "2021-03-04T09:15:07Z", True),
        ("2021-03-04T09:15:07.250Z", "2021-03-04T09:15:07.251Z", False),
    ],
)
def test_two_times_compare_at_the_coarser_precision(a: str, b: str, same: bool) -> None:
    assert same_at_precision(_fhir(a), _fhir(b)) is same
    assert same_at_precision(_fhir(b), _fhir(a)) is same
    assert _fhir(a).same_at_precision(_fhir(b)) is same


def test_hl7_and_fhir_forms_of_one_time_agree() -> None:
    assert same_at_precision(_hl7("19800512"), _fhir("1980-05-12"))
    assert same_at_precision(_hl7("198005"), _fhir("1980-05-12"))
    assert same_at_precision(_hl7("2021030409", zone=NEW_YORK), _fhir("2021-03-04T09:59:59-05:00"))
    assert not same_at_precision(_hl7("2021030409-0500"), _fhir("2021-03-04T10:00:00-05:00"))
    hl7 = _hl7("202103040915", zone=NEW_YORK)
    assert same_at_precision(hl7, _fhir("2021-03-04T09:15:00-05:00"))


def test_nothing_to_compare_is_none() -> None:
    assert same_at_precision(None, _fhir("1980")) is None
    assert same_at_precision(_fhir("1980"), None) is None


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)))
def test_an_instant_reads_the_same_from_fhir_and_hl7(moment: datetime) -> None:
    moment = moment.replace(microsecond=0, tzinfo=timezone(timedelta(hours=-5)))
    fhir = _fhir(moment.isoformat())
    hl7 = _hl7(moment.strftime("%Y%m%d%H%M%S%z"))
    assert fhir == hl7
    assert fhir.utc == moment.astimezone(UTC)


@given(st.dates(min_value=date(1, 1, 1)), st.sampled_from([4, 7, 10]))
def test_a_date_compares_with_itself_at_every_precision(day: date, width: int) -> None:
    text = day.isoformat()
    moment = _fhir(text[:width])
    assert moment.same_at_precision(_fhir(text))
    assert moment.date_text == text[:width]


def test_an_hl7_date_keeps_an_offset_it_was_sent_with() -> None:
    moment = _hl7("19800512-0500")
    assert (moment.utc, moment.date_text, moment.original_offset_minutes) == (
        None,
        "1980-05-12",
        -300,
    )
