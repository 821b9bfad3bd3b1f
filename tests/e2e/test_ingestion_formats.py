"""The running ingestion worker on HL7 v2 and re-sent records: every raw event accounted for,
a version sent twice emitted once."""

from __future__ import annotations

import uuid

import pytest
from pipeline_tools import eventually, patient, publish, read_topic

from concord.events import codec
from concord.events.models import IngestedRecord
from concord.stack.stack import StackInfo
from concord.topics import DEADLETTER, INGESTED, RAW_FHIR, RAW_HL7V2

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]


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
