"""`concord warnings list`: what the ingestion stage publishes, read back, selected and
printed, without a broker."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from click.testing import CliRunner

from builders import FakeSeenVersions, raw
from concord.cli import main
from concord.cli import warnings as warning_commands
from concord.cli.warnings import (
    WarningSelection,
    decode_warnings,
    has_warnings,
    reason_summary,
    select_warnings,
    warning_json,
    warning_line,
)
from concord.config import IngestionSettings
from concord.ingestion.app import IngestionStage
from concord.runtime.batch import run_batch
from concord.topics import INGESTED, RAW_FHIR, RAW_HL7V2

MRN = "MRN-4471"
FAMILY = "Zyxwvut"
# An ADT whose allergen has no coding system and whose birth date is no HL7 date: accepted,
# with two warnings.
ADT = (
    "MSH|^~\\&|EPIC|GH|CONCORD|GH|20240301083000-0500||ADT^A08^ADT_A01|CTRL-1|P|2.5.1\r"
    "EVN|A08|20240301082500-0500\r"
    f"PID|1||{MRN}^^^GH^MR||{FAMILY}^Ann||1970-05-12|F\r"
    "AL1|1|DA|XYZallergen|SV|Hives\r"
).encode()
CLEAN = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"lastUpdated": "2024-03-01T08:00:00-05:00"},
    "name": [{"family": FAMILY}],
}


async def _published() -> list[ConsumerRecord[Any, Any]]:
    """What the ingestion stage puts on concord.ingested for the ADT and a clean Patient, as a
    consumer of the topic reads it back (positions 3:10 and 3:11)."""
    settings = IngestionSettings(
        max_payload_bytes=65536, database_url="postgresql://u@127.0.0.1:1/x"
    )
    stage = IngestionStage(settings, FakeSeenVersions())
    batch = [
        raw(ADT, topic=RAW_HL7V2, offset=5, headers=[("source", b"lab")]),
        raw(orjson.dumps(CLEAN), topic=RAW_FHIR, offset=6, headers=[("source", b"lab")]),
    ]
    out = await run_batch(stage, batch)
    return [
        ConsumerRecord(
            topic=INGESTED, partition=3, offset=10 + n, timestamp=0, timestamp_type=0,
            key=r.key, value=r.value, checksum=None, serialized_key_size=-1,
            serialized_value_size=len(r.value), headers=list(r.headers),
        )
        for n, r in enumerate(out.pending)
    ]  # fmt: skip


@pytest.mark.asyncio
async def test_only_records_marked_with_warnings_are_decoded_and_each_warning_is_listed() -> None:
    records = await _published()
    assert [has_warnings(r) for r in records] == [True, False]
    read = decode_warnings((r.partition, r.offset, r.value) for r in records if has_warnings(r))
    assert read.undecodable == []
    assert [(s.position, s.warning.reason_code, s.warning.location) for s in read.found] == [
        ("3:10", "HL7_INVALID", "PID-7"),
        ("3:10", "CODE_WITHOUT_SYSTEM", "AL1-3.3"),
    ]


@pytest.mark.asyncio
async def test_a_line_says_which_rule_where_and_from_where_but_never_the_record() -> None:
    [first, _] = decode_warnings((r.partition, r.offset, r.value) for r in await _published()).found
    line = warning_line(first)
    assert line.split("  ")[0] == "3:10"
    for part in ("HL7_INVALID", "at=PID-7", "from=ehr.raw.hl7v2[0]@5", "source=lab"):
        assert part in line
    assert "type=ADT^A08" in line
    document = warning_json(first)
    assert document["message"] == "the field is not an HL7 timestamp: it is not read"
    for text in (line, orjson.dumps(document).decode()):
        assert MRN not in text and FAMILY not in text and "CTRL-1" not in text


@pytest.mark.asyncio
async def test_filters_select_by_reason_source_and_raw_topic() -> None:
    found = decode_warnings((r.partition, r.offset, r.value) for r in await _published()).found
    by_reason = select_warnings(found, WarningSelection(reasons=frozenset({"HL7_INVALID"})))
    assert [s.warning.location for s in by_reason] == ["PID-7"]
    assert select_warnings(found, WarningSelection(sources=frozenset({"other"}))) == []
    assert len(select_warnings(found, WarningSelection(topics=frozenset({RAW_HL7V2})))) == 2
    assert reason_summary(found) == [("CODE_WITHOUT_SYSTEM", 1), ("HL7_INVALID", 1)]


def test_a_record_that_cannot_be_decoded_skips_only_itself() -> None:
    read = decode_warnings([(0, 1, b"not avro"), (0, 2, None)])
    assert (read.found, read.undecodable) == ([], [(0, 1), (0, 2)])


def test_list_rejects_an_unknown_reason_code_clearly() -> None:
    result = CliRunner().invoke(main, ["warnings", "list", "--reason", "NOPE"])
    assert result.exit_code == 2
    assert "unknown reason code NOPE" in result.output


def test_list_prints_a_line_per_warning_and_counts_by_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    async def read(kafka: Any, **_: Any) -> warning_commands.Warnings:
        return decode_warnings((r.partition, r.offset, r.value) for r in await _published())

    monkeypatch.setattr(warning_commands, "read_warnings", read)
    monkeypatch.setattr(warning_commands, "connections", _NoConnections)
    result = CliRunner().invoke(
        main, ["warnings", "list", "--reason", "code_without_system", "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    assert "CODE_WITHOUT_SYSTEM  at=AL1-3.3" in line
    assert "1 of 2 warnings on concord.ingested" in result.stderr


class _NoConnections:
    """Stands in for cli.reachability.connections: no broker to check."""

    def __init__(self, *_: Any, **__: Any) -> None: ...

    def __enter__(self) -> None: ...

    def __exit__(self, *_: Any) -> None: ...
