"""`concord deadletter`: selection, formatting and replay headers, without a broker."""

from __future__ import annotations

import base64
import subprocess
import sys
from datetime import UTC, datetime

import orjson
import pytest
from click.testing import CliRunner

from concord.cli import main
from concord.cli.deadletters import (
    REPLAY_HEADER,
    Selection,
    StoredLetter,
    check_reason_codes,
    decode_letters,
    letter_json,
    letter_line,
    missing_positions,
    parse_position,
    reason_summary,
    replay_headers,
    select,
    source_of,
)
from concord.events import codec
from concord.events.models import DeadLetter, Header

# Stand-ins for what must never be printed unasked: a patient's record and identifier.
PAYLOAD = b"MSH|^~\\&|LAB|GH|||20240301090000||ADT^A04|C-1|P|2.5\rPID|1||MRN-4471||Zyxwvut^Ana\r"
KEY = b"lab/PID/MRN-4471"
AT = datetime(2026, 3, 1, 10, 0, 5, tzinfo=UTC)


def _stored(
    partition: int = 0,
    offset: int = 0,
    *,
    reason: str = "HL7_TIME_ZONE_UNKNOWN",
    stage: str = "ingestion",
    topic: str = "ehr.raw.hl7v2",
    headers: tuple[tuple[str, bytes | None], ...] = (("source", b"lab"),),
    value: bytes | None = PAYLOAD,
) -> StoredLetter:
    return StoredLetter(
        partition,
        offset,
        DeadLetter(
            stage=stage,
            reason_code=reason,
            reason="a timestamp has no offset and no time zone is configured for the source",
            location="EVN-2",
            original_topic=topic,
            original_partition=3,
            original_offset=41,
            original_key=KEY,
            original_value=value,
            original_headers=tuple(Header(key=k, value=v) for k, v in headers),
            failed_at=AT,
        ),
    )


# --- selection --------------------------------------------------------------------------------


def test_reason_codes_are_checked_against_the_catalogue() -> None:
    assert check_reason_codes(["hl7_malformed", "CLAIM_INVALID"]) == (
        "HL7_MALFORMED",
        "CLAIM_INVALID",
    )
    with pytest.raises(ValueError, match=r"unknown reason code NO_SUCH_CODE;.*HL7_MALFORMED"):
        check_reason_codes(["HL7_MALFORMED", "NO_SUCH_CODE"])


@pytest.mark.parametrize("text", ["", "3", "3:", ":4", "a:1", "1:-2", "1:2:3"])
def test_a_position_is_partition_colon_offset(text: str) -> None:
    assert parse_position(" 2:17 ") == (2, 17)
    with pytest.raises(ValueError, match="PARTITION:OFFSET"):
        parse_position(text)


def test_filters_of_one_kind_are_alternatives_and_kinds_combine() -> None:
    letters = [
        _stored(1, 5, reason="HL7_MALFORMED"),
        _stored(0, 9),
        _stored(0, 2, reason="MALFORMED_JSON", topic="ehr.raw.fhir"),
        _stored(2, 0, stage="normalization", reason="UNDECODABLE_EVENT", topic="concord.ingested"),
        _stored(3, 1, headers=(("source", b"clinic"),)),
    ]

    def positions(chosen: list[StoredLetter]) -> list[str]:
        return [s.position for s in chosen]

    assert positions(select(letters, Selection())) == ["0:2", "0:9", "1:5", "2:0", "3:1"]
    either = Selection(reasons=frozenset({"HL7_MALFORMED", "HL7_TIME_ZONE_UNKNOWN"}))
    assert positions(select(letters, either)) == ["0:9", "1:5", "3:1"]
    both = Selection(reasons=frozenset({"HL7_TIME_ZONE_UNKNOWN"}), sources=frozenset({"lab"}))
    assert positions(select(letters, both)) == ["0:9"]
    assert positions(select(letters, Selection(stages=frozenset({"normalization"})))) == ["2:0"]
    assert positions(select(letters, Selection(topics=frozenset({"ehr.raw.fhir"})))) == ["0:2"]
    named = Selection(positions=frozenset({(3, 1), (1, 5), (7, 7)}))
    assert positions(select(letters, named)) == ["1:5", "3:1"]
    assert missing_positions(letters, named) == ["7:7"]
    assert Selection().is_empty and not named.is_empty


def test_the_summary_counts_each_reason_most_frequent_first() -> None:
    letters = [_stored(reason="HL7_MALFORMED"), _stored(), _stored(), _stored(reason="NOT_FHIR")]
    assert reason_summary(letters) == [
        ("HL7_TIME_ZONE_UNKNOWN", 2),
        ("HL7_MALFORMED", 1),
        ("NOT_FHIR", 1),
    ]


def test_a_record_that_is_no_dead_letter_skips_only_itself() -> None:
    good = codec.DEAD_LETTER.encode(_stored().letter)
    topic = decode_letters([(0, 0, good), (0, 1, b"garbage"), (1, 0, None), (1, 1, good)])
    assert [s.position for s in topic.letters] == ["0:0", "1:1"]
    assert topic.undecodable == [(0, 1), (1, 0)]


# --- formatting -------------------------------------------------------------------------------


def test_a_line_says_where_and_why_but_never_the_payload_or_key() -> None:
    line = letter_line(_stored(2, 17))
    assert line == (
        "2:17  2026-03-01T10:00:05+00:00  ingestion  HL7_TIME_ZONE_UNKNOWN  at=EVN-2  "
        f"from=ehr.raw.hl7v2[3]@41  source=lab  bytes={len(PAYLOAD)}"
    )
    for secret in (b"MRN-4471", b"Zyxwvut"):
        assert secret.decode() not in line


def test_json_hides_key_value_and_headers_unless_the_payload_is_asked_for() -> None:
    stored = _stored(1, 4, headers=(("source", b"lab"), ("trace", b"t-1")))
    plain = letter_json(stored)
    assert plain["dead_letter"] == "1:4" and plain["reason_code"] == "HL7_TIME_ZONE_UNKNOWN"
    assert plain["source"] == "lab" and plain["payload_bytes"] == len(PAYLOAD)
    assert plain["replay_of"] is None
    text = orjson.dumps(plain).decode()
    assert not {"original_key", "original_value", "original_headers"} & set(plain)
    for secret in (b"MRN-4471", b"Zyxwvut", base64.b64encode(PAYLOAD), b"t-1"):
        assert secret.decode() not in text

    full = letter_json(stored, with_payload=True)
    assert base64.b64decode(full["original_value"]) == PAYLOAD
    assert base64.b64decode(full["original_key"]) == KEY
    assert full["original_headers"][1] == {
        "key": "trace",
        "value": base64.b64encode(b"t-1").decode(),
    }


def test_a_tombstone_and_a_missing_source_are_shown_as_such() -> None:
    stored = _stored(headers=(), value=None, reason="EMPTY_PAYLOAD")
    assert letter_line(stored).endswith("source=-  bytes=-")
    assert letter_json(stored)["payload_bytes"] is None and letter_json(stored)["source"] is None


def test_a_letter_from_the_mllp_gateway_has_no_original_position() -> None:
    # The gateway rejects before writing to Kafka; a replay writes it to the raw topic.
    letter = _stored().letter.model_copy(
        update={"stage": "mllp", "original_partition": -1, "original_offset": -1}
    )
    stored = StoredLetter(0, 3, letter)
    assert "  mllp  " in letter_line(stored) and "from=ehr.raw.hl7v2[-]@-" in letter_line(stored)
    document = letter_json(stored)
    assert document["original_partition"] is None and document["original_offset"] is None
    assert select([stored], Selection(stages=frozenset({"mllp"}))) == [stored]


def test_a_hostile_source_header_cannot_drive_the_terminal() -> None:
    stored = _stored(headers=(("source", b"lab\x1b[2J\n\xff"),))
    assert source_of(stored.letter) == "lab\\x1b[2J\\n\\xff"
    assert "\x1b" not in letter_line(stored) and "\n" not in letter_line(stored)


# --- replay headers ---------------------------------------------------------------------------


def test_replay_keeps_the_original_headers_and_names_the_letter() -> None:
    headers = (("source", b"lab"), ("trace", None), ("trace", b"2"))
    assert replay_headers(_stored(3, 8, headers=headers)) == [
        ("source", b"lab"),
        ("trace", None),
        ("trace", b"2"),
        (REPLAY_HEADER, b"3:8"),
    ]


def test_replaying_a_replay_replaces_its_header_rather_than_stacking() -> None:
    headers = (("source", b"lab"), (REPLAY_HEADER, b"0:1"), ("x", b"y"), (REPLAY_HEADER, b"0:5"))
    stored = _stored(1, 9, headers=headers)
    assert replay_headers(stored) == [("source", b"lab"), ("x", b"y"), (REPLAY_HEADER, b"1:9")]
    assert letter_json(stored)["replay_of"] == "0:1"
    assert letter_line(stored).endswith("replay-of=0:1")


# --- the commands' guards (no broker is reached before them) ----------------------------------


def test_list_rejects_an_unknown_reason_code_clearly() -> None:
    result = CliRunner().invoke(main, ["deadletter", "list", "--reason", "NO_SUCH_CODE"])
    assert result.exit_code == 2
    assert "Invalid value for '--reason': unknown reason code NO_SUCH_CODE" in result.output
    assert "HL7_TIME_ZONE_UNKNOWN" in result.output  # the known codes are listed


def test_list_prints_payloads_only_as_json() -> None:
    result = CliRunner().invoke(main, ["deadletter", "list", "--with-payload"])
    assert result.exit_code == 2 and "--with-payload needs --json" in result.output


def test_replay_refuses_without_a_selector() -> None:
    result = CliRunner().invoke(main, ["deadletter", "replay"])
    assert result.exit_code == 2 and "--all for every dead letter" in result.output
    result = CliRunner().invoke(main, ["deadletter", "replay", "--all", "--stage", "ingestion"])
    assert result.exit_code == 2 and "leave out the filters" in result.output
    result = CliRunner().invoke(main, ["deadletter", "replay", "--offset", "x"])
    assert result.exit_code == 2 and "PARTITION:OFFSET" in result.output


def test_the_command_module_can_be_imported_before_the_cli() -> None:
    # The package registers this module's group, and this module imports the package's own
    # modules: importing the module first must not see a half-built package.
    code = (
        "import concord.cli.deadletters\n"
        "from concord.cli import main\n"
        "assert {'list', 'replay'} <= set(main.commands['deadletter'].commands)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
