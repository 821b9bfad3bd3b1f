"""The running ingestion worker on HL7 v2 and re-sent records: every raw event accounted for,
a version sent twice emitted once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from concord.events import codec
from concord.events.models import IngestedRecord
from concord.stack.stack import StackInfo
from concord.topics import DEADLETTER, INGESTED, RAW_FHIR, RAW_HL7V2
from pipeline_tools import eventually, patient, publish, read_topic

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

CONCORD = str(Path(sys.executable).with_name("concord"))


def _adt(control_id: str, mrn: str) -> bytes:
    return (
        f"MSH|^~\\&|EPIC|GH|CONCORD|GH|20240301083000-0500||ADT^A08^ADT_A01|{control_id}|P|2.5.1\r"
        "EVN|A08|20240301082500-0500\r"
        f"PID|1||{mrn}^^^GH^MR||Doe^Jo||19700512|F\r"
        "ZPD|kept\r"
    ).encode()


async def test_hl7v2_and_resent_versions_through_the_running_worker(stack: StackInfo) -> None:
    run = uuid.uuid4().hex[:8]
    good = [_adt(f"{run}-{n}", f"M{run}{n}") for n in range(3)]
    zone_less = _adt(f"{run}-z", f"M{run}z").replace(b"-0500", b"")  # the stack sets no zone
    hl7_sent = await publish(
        stack.bootstrap_servers,
        [("clinic", m) for m in good]
        + [("clinic", good[0])]  # the same message re-sent by the engine
        + [("clinic", b"MSH|bad"), ("clinic", zone_less)],
        topic=RAW_HL7V2,
    )
    fhir = patient(f"EPZ-{run}", f"dup-{run}")
    fhir_sent = await publish(stack.bootstrap_servers, [("clinic", fhir), ("clinic", fhir)])

    def mine(records: list[IngestedRecord]) -> list[IngestedRecord]:
        return [r for r in records if run in r.provenance.source_record_id]

    async def ingested() -> list[IngestedRecord]:
        records = await read_topic(stack.bootstrap_servers, INGESTED)
        return mine([codec.INGESTED_RECORD.decode(r.value) for r in records])

    records = await eventually(ingested, lambda rs: len(rs) >= 4, within=30)
    hl7 = [r for r in records if r.format == "HL7V2"]
    assert sorted(r.provenance.source_record_id for r in hl7) == sorted(
        f"ADT^A08/{run}-{n}" for n in range(3)
    )
    assert all(r.payload.endswith(b"ZPD|kept") for r in hl7)
    assert [r.provenance.raw_topic for r in records if r.format == "FHIR_R4"] == [RAW_FHIR]

    letters = [
        codec.DEAD_LETTER.decode(r.value)
        for r in await read_topic(stack.bootstrap_servers, DEADLETTER)
    ]
    hl7_letters = {
        (d.original_partition, d.original_offset): d.reason_code
        for d in letters
        if d.original_topic == RAW_HL7V2
    }
    assert hl7_letters[hl7_sent[4]] == "HL7_MALFORMED"
    assert hl7_letters[hl7_sent[5]] == "HL7_TIME_ZONE_UNKNOWN"
    # The re-sent message and the second FHIR copy are neither emitted nor dead-lettered.
    assert hl7_sent[3] not in hl7_letters
    assert not any(
        (d.original_partition, d.original_offset) in fhir_sent
        for d in letters
        if d.original_topic == RAW_FHIR
    )


async def test_mllp_send_through_the_running_worker(stack: StackInfo, tmp_path: Path) -> None:
    """`concord mllp send` to the stack's listener: AA for what Kafka holds, AE with the reason
    for the rest, and a message re-sent after a lost AA is ingested once."""
    run = uuid.uuid4().hex[:8]
    good = [_adt(f"M{run}-{n}", f"MM{run}{n}") for n in range(2)]
    zone_less = _adt(f"M{run}-z", f"MM{run}z").replace(b"-0500", b"")
    batch = tmp_path / "batch.hl7"
    batch.write_bytes(b"\r\n".join([*good, zone_less]))
    resent = tmp_path / "resent.hl7"
    resent.write_bytes(good[0])

    def send(path: Path) -> subprocess.CompletedProcess[str]:
        command = [CONCORD, "mllp", "send", "--state-dir", str(stack.state_dir), str(path)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    first = await asyncio.to_thread(send, batch)
    assert first.returncode == 1, first.stderr  # not every message was accepted
    assert first.stdout.splitlines() == [
        f"batch.hl7#1 M{run}-0 AA",
        f"batch.hl7#2 M{run}-1 AA",
        f"batch.hl7#3 M{run}-z AE: a timestamp has no offset and no time zone is configured "
        "for the source at EVN^1^2",
    ]
    assert "3 messages sent" in first.stderr and "2 AA, 1 AE" in first.stderr
    again = await asyncio.to_thread(send, resent)
    assert again.returncode == 0 and again.stdout.strip() == f"resent.hl7#1 M{run}-0 AA"

    async def ingested() -> list[IngestedRecord]:
        records = await read_topic(stack.bootstrap_servers, INGESTED)
        decoded = [codec.INGESTED_RECORD.decode(r.value) for r in records]
        return [r for r in decoded if f"M{run}-" in r.provenance.source_record_id]

    records = await eventually(ingested, lambda rs: len(rs) >= 2, within=30)
    await asyncio.sleep(1.0)  # time for a duplicate to show up, were one emitted
    records = await ingested()
    assert sorted(r.provenance.source_record_id for r in records) == [
        f"ADT^A08/M{run}-0",
        f"ADT^A08/M{run}-1",
    ]
    assert {r.provenance.source_system for r in records} == {"EPIC"}  # MSH-3
    letters = [
        codec.DEAD_LETTER.decode(r.value)
        for r in await read_topic(stack.bootstrap_servers, DEADLETTER)
    ]
    [letter] = [d for d in letters if d.original_value == zone_less]
    assert (letter.stage, letter.reason_code, letter.original_offset) == (
        "mllp",
        "HL7_TIME_ZONE_UNKNOWN",
        -1,
    )
