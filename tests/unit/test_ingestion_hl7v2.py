"""HL7 v2 ingestion, pure: the ER7 reader and the rules, on messages written here."""

from __future__ import annotations

import collections
import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from concord.deadletters import REASON_CODES, Rejection
from concord.events.models import IngestedRecord
from concord.events.raw import RawEvent
from concord.hl7v2 import er7
from concord.ingestion.hl7v2 import ingest_hl7v2, zones_from

RECEIVED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir-converter-samples"
FAMILY = "Quorvatz"
MRN = "MRN-55012"
CHICAGO = zones_from({"lab": "America/Chicago"}, None)

ADT = (
    "MSH|^~\\&|EPIC|GH|CONCORD|GH|20240301083000-0500||ADT^A08^ADT_A01|CTRL-1|P|2.5.1\r"
    "EVN|A08|20240301082500-0500\r"
    f"PID|1||{MRN}^^^GH^MR~E-77^^^MPI^PI||{FAMILY}^Ann\\S\\Marie^Q||19700512|F\r"
    "AL1|1|DA|70618^Penicillin^RXNORM|SV|Hives\r"
    "DG1|1||C50.911^Malignant neoplasm of right breast^I10|||F\r"
    "ZPD|custom|kept\r"
)
ORU = (
    "MSH|^~\\&|LAB|GH|CONCORD|GH|20240301090000||ORU^R01^ORU_R01|CTRL-2|P|2.8\r"
    f"PID|1||{MRN}^^^GH^MR||{FAMILY}^Ann||19700512|F\r"
    "OBR|1||ACC-9|58410-2^CBC panel^LN|||20240301070000\r"
    "OBX|1|NM|2345-7^Glucose^LN||99|mg/dL^mg/dL^UCUM|70-99|N|||F|||20240301070000\r"
    "OBX|2|ST|8251-1^Comment^LN||fasting||||||F\r"
)


def _raw(message: str | bytes, source: bytes = b"lab") -> RawEvent:
    value = message.encode() if isinstance(message, str) else message
    return RawEvent(
        topic="ehr.raw.hl7v2",
        partition=1,
        offset=44,
        key=None,
        value=value,
        headers=(("source", source),),
        received_time=RECEIVED,
    )


def _ingest(message: str | bytes) -> list[IngestedRecord] | Rejection:
    return ingest_hl7v2(_raw(message), max_payload_bytes=1_000_000, zone_of=CHICAGO)


def _accepted(message: str | bytes) -> IngestedRecord:
    outcome = _ingest(message)
    assert isinstance(outcome, list), outcome
    [record] = outcome
    return record


def _rejected(message: str | bytes) -> Rejection:
    outcome = _ingest(message)
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason_code in REASON_CODES
    assert FAMILY not in outcome.reason and MRN not in outcome.reason
    return outcome


# --- the reader ----------------------------------------------------------------------------------


def test_fields_components_repetitions_and_escapes() -> None:
    message = er7.parse(ADT)
    pid = message.first("PID")
    assert pid is not None
    assert pid.value(3, 1, 0) == MRN and pid.value(3, 1, 1) == "E-77"
    assert pid.value(3, 5, 1) == "PI"
    assert pid.value(5, 2) == "Ann^Marie"  # \S\ is an escaped component separator
    assert message.msh.raw(9) == "ADT^A08^ADT_A01"
    assert message.msh.raw(1) == "|" and message.msh.raw(2) == "^~\\&"


def test_custom_encoding_characters() -> None:
    custom = ADT.replace("|", "#").replace("^", "$").replace("~", "%").replace("&", "@")
    message = er7.parse(custom)
    assert message.separators == er7.Separators("#", "$", "%", "\\", "@")
    pid = message.first("PID")
    assert pid is not None and pid.value(3, 1, 1) == "E-77" and pid.value(5, 2) == "Ann$Marie"


@pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"])
def test_any_segment_terminator(terminator: str) -> None:
    message = er7.parse(("\ufeff" + ADT).replace("\r", terminator).encode())
    assert [s.name for s in message.segments] == ["MSH", "EVN", "PID", "AL1", "DG1", "ZPD"]
    assert message.text == ADT.rstrip("\r")


def test_repeated_segments_are_located_by_their_position() -> None:
    second = er7.parse(ORU).all("OBX")[1]
    assert second.location(5) == "OBX[2]-5" and second.location(3, 1) == "OBX[2]-3.1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240301083000-0500", datetime(2024, 3, 1, 8, 30, tzinfo=timezone(timedelta(hours=-5)))),
        ("202403010830+0000", datetime(2024, 3, 1, 8, 30, tzinfo=UTC)),
        ("20240301", datetime(2024, 3, 1)),
    ],
)
def test_timestamps(value: str, expected: datetime) -> None:
    assert er7.parse_timestamp(value) == expected


@pytest.mark.parametrize("value", ["2024-03-01", "yesterday", "20241301", "2024030112ab"])
def test_not_timestamps(value: str) -> None:
    assert er7.parse_timestamp(value) is None


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("1980", ("1980", None, None, None, None, None, None, None)),
        (" 19800512-0500\n", ("1980", "05", "12", None, None, None, None, "-0500")),
        ("2024030109", ("2024", "03", "01", "09", None, None, None, None)),
        ("20240301093005.1234+0575", ("2024", "03", "01", "09", "30", "05", "1234", "+0575")),
        ("20241399", ("2024", "13", "99", None, None, None, None, None)),  # the grammar only
    ],
)
def test_a_dtm_splits_into_its_parts_as_written(value: str, parts: tuple[str | None, ...]) -> None:
    assert er7.split_dtm(value) == parts


@pytest.mark.parametrize(
    "value",
    [
        "",
        "198",
        "19800",
        "1980-05-12",
        "20240301093005.12345",  # at most four digits of a second
        "202403010930.5",  # a fraction of no seconds
        "20240301+05",
        "\uff12\uff10\uff12\uff140301",  # digits, but not ASCII ones (fullwidth)
    ],
)
def test_what_is_no_dtm_does_not_split(value: str) -> None:
    assert er7.split_dtm(value) is None
    assert er7.parse_timestamp(value) is None


def test_a_prefix_splits_the_longest_dtm_the_value_starts_with() -> None:
    assert er7.split_dtm("1980051", prefix=True) == ("1980", "05") + (None,) * 6
    assert er7.split_dtm("19800512120000.123456", prefix=True) == (
        ("1980", "05", "12", "12", "00", "00", "1234", None)
    )
    assert er7.split_dtm("1980-05-12", prefix=True) == ("1980",) + (None,) * 7
    assert er7.split_dtm("x1980", prefix=True) is None


# --- files of messages ---------------------------------------------------------------------------

TWO_MESSAGES = [
    b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5",
    b"PID|1||123",
    b"MSH|^~\\&|A|B|C|D|20240101||ADT^A08|2|P|2.5",
    b"PID|1||456",
    b"NTE|1||note",
]


@pytest.mark.parametrize("terminator", [b"\r", b"\n", b"\r\n"], ids=["CR", "LF", "CRLF"])
@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "BOM"])
def test_split_messages_any_terminator_and_bom(terminator: bytes, bom: bytes) -> None:
    data = bom + terminator.join(TWO_MESSAGES) + terminator + terminator
    assert er7.split_messages(data) == [
        b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1||123\r",
        b"MSH|^~\\&|A|B|C|D|20240101||ADT^A08|2|P|2.5\rPID|1||456\rNTE|1||note\r",
    ]


def test_split_messages_drops_batch_envelopes_and_refuses_text_before_msh() -> None:
    batch = b"FHS|^~\\&\nBHS|^~\\&\n" + b"\n".join(TWO_MESSAGES[:2]) + b"\nBTS|1\nFTS|1\n"
    assert er7.split_messages(batch) == [TWO_MESSAGES[0] + b"\r" + TWO_MESSAGES[1] + b"\r"]
    with pytest.raises(ValueError, match="line 1 "):
        er7.split_messages(b"PID|1||123\n" + TWO_MESSAGES[0])
    assert er7.split_messages(b"") == []


# --- accepted ------------------------------------------------------------------------------------


def test_an_adt_becomes_one_record_with_provenance() -> None:
    record = _accepted(ADT)
    assert record.format == "HL7V2" and record.resource_type == "ADT^A08"
    assert record.payload == ADT.rstrip("\r").encode()  # Z-segment included
    p = record.provenance
    assert p.source_system == "lab"
    assert p.source_record_id == "ADT^A08/CTRL-1"
    assert p.source_record_version == "20240301083000-0500"
    assert p.event_time == datetime(2024, 3, 1, 13, 25, tzinfo=UTC)  # EVN-2 with its offset
    assert p.event_time_basis == "EVN-2"
    assert (p.raw_topic, p.raw_partition, p.raw_offset) == ("ehr.raw.hl7v2", 1, 44)
    assert record.source_time_zone == "America/Chicago"


def test_a_timestamp_without_offset_is_in_the_sources_zone() -> None:
    record = _accepted(ORU)
    # MSH-7 09:00 in Chicago (CST, UTC-6, on 1 March) is 15:00 UTC.
    assert record.provenance.event_time == datetime(2024, 3, 1, 15, 0, tzinfo=UTC)
    assert record.provenance.event_time_basis == "MSH-7"  # an ORU carries no EVN


def test_the_event_occurred_time_comes_before_the_recorded_time() -> None:
    record = _accepted(
        ADT.replace(
            "EVN|A08|20240301082500-0500", "EVN|A08|20240301082500-0500||||20240301080000-0500"
        )
    )
    assert record.provenance.event_time == datetime(2024, 3, 1, 13, 0, tzinfo=UTC)
    assert record.provenance.event_time_basis == "EVN-6"


@pytest.mark.parametrize("value", ["2024-3000", "20240301090000+2400"])
def test_an_offset_of_a_day_or_more_is_no_timestamp(value: str) -> None:
    assert er7.parse_timestamp(value) is None
    outcome = _rejected(ORU.replace("20240301090000", value, 1))
    assert (outcome.reason_code, outcome.location) == ("HL7_INVALID", "MSH-7")


def test_a_source_without_a_zone_cannot_send_zone_less_times() -> None:
    outcome = ingest_hl7v2(_raw(ORU, source=b"elsewhere"), max_payload_bytes=10**6, zone_of=CHICAGO)
    assert isinstance(outcome, Rejection)
    assert outcome.reason_code == "HL7_TIME_ZONE_UNKNOWN"
    assert outcome.location == "MSH-7"


def test_dates_need_no_zone_but_times_do() -> None:
    with_offsets = ADT  # MSH-7 and EVN-2 carry offsets; PID-7 is a date
    outcome = ingest_hl7v2(_raw(with_offsets, source=b"elsewhere"), max_payload_bytes=10**6)
    assert isinstance(outcome, list)
    zone_less_time = ADT.replace("|F\r", "||||||||||||||||||||||202403010800|F\r", 1)
    outcome = ingest_hl7v2(_raw(zone_less_time, source=b"elsewhere"), max_payload_bytes=10**6)
    assert isinstance(outcome, Rejection) and outcome.location == "PID-29"


def test_the_default_zone_applies_to_unlisted_sources() -> None:
    zone_of = zones_from({}, "Europe/Berlin")
    outcome = ingest_hl7v2(_raw(ORU, source=b"x"), max_payload_bytes=10**6, zone_of=zone_of)
    assert isinstance(outcome, list)
    assert outcome[0].provenance.event_time == datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def test_latin1_named_in_msh18_is_decoded_and_stored_as_utf8() -> None:
    message = ORU.replace("|2.8\r", "|2.8||||||8859/1\r").replace("Ann", "Ann\u00e9")
    record = _accepted(message.encode("iso-8859-1"))
    assert "Ann\u00e9".encode() in record.payload


@pytest.mark.parametrize("version", ["2.3", "2.4", "2.5", "2.6", "2.7", "2.7.1", "2.8"])
def test_versions_2_3_to_2_8(version: str) -> None:
    assert _accepted(ADT.replace("|2.5.1\r", f"|{version}\r"))


def test_a_merge_carries_mrg() -> None:
    merge = ADT.replace("ADT^A08^ADT_A01", "ADT^A40^ADT_A39") + "MRG|OLD-1^^^GH^MR\r"
    assert _accepted(merge).resource_type == "ADT^A40"
    assert _rejected(merge.replace("MRG|OLD-1^^^GH^MR\r", "")).location == "MRG"


def test_pharmacy_messages() -> None:
    rde = (
        "MSH|^~\\&|RX|GH|CONCORD|GH|20240301090000-0500||RDE^O11^RDE_O11|C3|P|2.5\r"
        f"PID|1||{MRN}^^^GH^MR\r"
        "ORC|NW|ORD-1\r"
        "RXE|^^^20240301|6809^Metformin^RXNORM|500||mg\r"
    )
    assert _accepted(rde).resource_type == "RDE^O11"
    ras = rde.replace("RDE^O11^RDE_O11", "RAS^O17^RAS_O17").replace(
        "RXE|^^^20240301|6809^Metformin^RXNORM|500||mg\r",
        "RXA|0|1|20240301090000-0500|20240301090000-0500|6809^Metformin^RXNORM|500|mg\r",
    )
    assert _accepted(ras).resource_type == "RAS^O17"


# --- rejected ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "code", "location"),
    [
        ("hello", "HL7_MALFORMED", "MSH"),
        ("PID|1||x\rMSH|^~\\&|A", "HL7_MALFORMED", "MSH"),
        ("MSH|^^^^|A|B", "HL7_MALFORMED", "MSH-2"),
        (ADT + "pid|lower\r", "HL7_MALFORMED", "segment 7"),
        (ADT.replace("|2.5.1\r", "|2.2\r"), "HL7_UNSUPPORTED_VERSION", "MSH-12"),
        (ADT.replace("ADT^A08^ADT_A01", "SIU^S12"), "HL7_UNSUPPORTED_MESSAGE_TYPE", "MSH-9"),
        (ORU.replace("ORU^R01", "ORU^R30"), "HL7_UNSUPPORTED_MESSAGE_TYPE", "MSH-9"),
        (ADT.replace("ADT^A08^ADT_A01", "ADT"), "HL7_INVALID", "MSH-9"),
        (ADT.replace("|CTRL-1|", "||"), "HL7_INVALID", "MSH-10"),
        (ADT.replace("20240301083000-0500||", "||"), "HL7_INVALID", "MSH-7"),
        (ADT.replace("ADT^A08^ADT_A01", "ADT^A40^ADT_A39"), "HL7_INVALID", "MRG"),
        (ADT.replace(f"{MRN}^^^GH^MR~E-77^^^MPI^PI", ""), "HL7_INVALID", "PID-3"),
    ],
)
def test_rejections_name_the_rule_and_the_location(message: str, code: str, location: str) -> None:
    outcome = _rejected(message)
    assert (outcome.reason_code, outcome.location) == (code, location)


@pytest.mark.parametrize(
    ("message", "code", "location"),
    [
        (ADT.replace("EVN|A08|20240301082500-0500\r", ""), "HL7_INVALID", "EVN"),
        (ADT.replace("19700512", "1970-05-12"), "HL7_INVALID", "PID-7"),
        (ADT.replace("^RXNORM|", "^|"), "CODE_WITHOUT_SYSTEM", "AL1-3.3"),
        (ADT.replace("C50.911", "50.911"), "INVALID_CODE", "DG1-3.1"),
        (ORU.replace("||99|", "||ninety|"), "HL7_INVALID", "OBX-5"),
        (ORU.replace("2345-7^", "2345-8^"), "INVALID_CODE", "OBX-3.1"),
        (ORU.replace("ST|8251-1^Comment^LN", "ST|^Comment^LN"), "HL7_INVALID", "OBX[2]-3.1"),
        (ORU.replace("|fasting||||||F\r", "|fasting||||||\r"), "HL7_INVALID", "OBX[2]-11"),
        (ORU.replace("OBX|2|ST|", "OBX|2||"), "HL7_INVALID", "OBX[2]-2"),
    ],
)
def test_a_field_at_fault_is_a_warning_that_names_the_rule_and_the_location(
    message: str, code: str, location: str
) -> None:
    """The message is ingested (issue 13): the field at fault is named as a rejection would
    have named it, and the message's other content still flows."""
    record = _accepted(message)
    assert [(w.reason_code, w.location) for w in record.warnings] == [(code, location)]
    assert FAMILY not in record.warnings[0].message and MRN not in record.warnings[0].message
    assert record.payload == message.rstrip("\r").encode()


def test_not_utf8_and_no_charset_named() -> None:
    assert _rejected(ADT.replace("Ann", "Ann\u00e9").encode("iso-8859-1")).reason_code == (
        "HL7_MALFORMED"
    )


@pytest.mark.parametrize("value", [b"", None])
def test_empty(value: bytes | None) -> None:
    raw = RawEvent("ehr.raw.hl7v2", 0, 0, None, value, (("source", b"lab"),), RECEIVED)
    outcome = ingest_hl7v2(raw, max_payload_bytes=100, zone_of=CHICAGO)
    assert isinstance(outcome, Rejection) and outcome.reason_code == "EMPTY_PAYLOAD"


# --- never raises --------------------------------------------------------------------------------


def _never_raises(message: bytes) -> None:
    outcome = _ingest(message)
    assert isinstance(outcome, Rejection) or len(outcome) == 1


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _never_raises(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from([ADT, ORU]),
    at=st.integers(min_value=0, max_value=400),
    cut=st.integers(min_value=0, max_value=30),
    insert=st.text(alphabet="|^~\\&\r\nMSHPIDOBXspFX0123456789-+.", max_size=12),
)
def test_mutated_messages_never_raise(base: str, at: int, cut: int, insert: str) -> None:
    position = at % (len(base) + 1)
    _never_raises((base[:position] + insert + base[position + cut :]).encode())


# --- the public samples --------------------------------------------------------------------------


@pytest.mark.shared_data
def test_every_public_hl7v2_message_is_ingested_or_dead_lettered_with_a_reason() -> None:
    files = sorted((SAMPLES / "hl7v2").glob("*.hl7"))
    if not files:
        pytest.skip(f"NOT RUN: the public HL7 v2 samples are absent ({SAMPLES} not found)")
    zone_of = zones_from({}, "America/New_York")
    outcomes: collections.Counter[str] = collections.Counter()
    for path in files:
        outcome = ingest_hl7v2(_raw(path.read_bytes()), max_payload_bytes=10**7, zone_of=zone_of)
        if isinstance(outcome, Rejection):
            assert outcome.reason_code in REASON_CODES and outcome.location, path.name
            outcomes[outcome.reason_code] += 1
        else:
            outcomes["INGESTED"] += 1
    print(f"\n{len(files)} HL7 v2 messages: {dict(outcomes)}")
    assert sum(outcomes.values()) == len(files)
    # Every ADT sample but the few that break a rule is ingested; other types are named.
    assert outcomes["INGESTED"] >= 55


# --- escapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", "a|b^c&d~e\\f"),
        ("a\\P\\b", "a#b"),
        ("\\X414243\\", "ABC"),
        ("Quor\\X00\\vatz\\X0741\\", "QuorvatzA"),  # control characters are not read
        ("a\\X09\\b\\X0D0A\\c", "a\tb\r\nc"),  # but tab and line breaks are
        ("one\\.br\\two", "one\ntwo"),
        ("one\\.sp2\\two", "one\n\ntwo"),
        ("x\\.spZ\\y", "x\ny"),  # a malformed count: python-hl7 raised here
        ("\\H\\bold\\N\\", "bold"),
        ("x\\Zcustom\\y", "xy"),
        ("x\\Xzz\\y", "xy"),
        ("trailing\\F", "trailing\\F"),
    ],
)
def test_escape_sequences(field: str, expected: str) -> None:
    assert er7.unescape(field, er7.Separators()) == expected


def test_a_bad_escape_is_neither_logged_nor_fatal(caplog: pytest.LogCaptureFixture) -> None:
    message = ORU.replace("||99|", f"||{FAMILY}\\Q\\\\.spZ\\|").replace("|NM|", "|ST|", 1)
    with caplog.at_level(logging.DEBUG):
        outcome = _ingest(message)
        obx = er7.parse(message).all("OBX")[0]
        assert obx.value(5) == FAMILY + "\n"
    assert isinstance(outcome, list)
    assert FAMILY not in caplog.text


def test_the_record_names_its_patient_by_pid_3() -> None:
    assert _accepted(ADT).patient_ref == f"PID/{MRN}"


def test_a_timestamp_past_year_9999_in_utc_is_not_a_timestamp() -> None:
    """Found by the fault suite: the conversion to UTC overflowed, and the message was
    dead-lettered as INGESTION_FAILED, the code of a Concord bug."""
    message = ADT.replace("20240301083000-0500", "99991231235959-1400").replace(
        "EVN|A08|20240301082500-0500", "EVN|A08|99991231235959-1400"
    )
    outcome = _ingest(message)
    assert isinstance(outcome, Rejection)
    assert (outcome.reason_code, outcome.location) == ("HL7_INVALID", "MSH-7")


@pytest.mark.shared_data
def test_the_public_mdm_documents_with_content_are_ingested_and_notifications_named() -> None:
    """Issue 18: MDM^T02 and the other triggers that carry the document are ingested (their
    text goes on to the narrative worker); a notification without content is refused by
    name, as any type Concord does not read."""
    files = sorted((SAMPLES / "hl7v2").glob("MDM-T*.hl7"))
    if not files:
        pytest.skip(f"NOT RUN: the public HL7 v2 samples are absent ({SAMPLES} not found)")
    zone_of = zones_from({}, "America/New_York")
    for path in files:
        outcome = ingest_hl7v2(_raw(path.read_bytes()), max_payload_bytes=10**7, zone_of=zone_of)
        trigger = path.name.split("-")[1]
        if trigger in {"T02", "T04", "T06", "T08", "T10"}:
            assert isinstance(outcome, list), (path.name, outcome)
            assert outcome[0].resource_type == f"MDM^{trigger}"
        else:
            assert isinstance(outcome, Rejection), path.name
            assert outcome.reason_code == "HL7_UNSUPPORTED_MESSAGE_TYPE", path.name
