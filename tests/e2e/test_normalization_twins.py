"""An HL7 v2 message and its FHIR twin (the public converter samples), published as two
sources to the running stack, are one patient with the same facts, and raise no conflict."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from concord.events import codec
from concord.events.models import ClinicalFact
from concord.stack.stack import StackInfo
from concord.topics import CONFLICTS, FACTS, RAW_FHIR, RAW_HL7V2
from pipeline_tools import eventually, fetch, publish, read_topic

pytestmark = [pytest.mark.e2e, pytest.mark.shared_data]

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir-converter-samples"
# An ADT and two ORU samples whose FHIR twin carries the same clinical content (the
# converter's twins of other samples add or drop content: docs/normalization.md).
TWINS = ("ADT-A01-02", "LAB-ORU-1", "LRI_2.0-NG_CBC_Typ_Message")


def comparable(fact: ClinicalFact) -> tuple[str, str | None, str | None, str]:
    return (fact.attribute, fact.value, fact.unit, fact.status)


@pytest.mark.parametrize("sample", TWINS)
def test_a_message_and_its_fhir_twin_normalize_to_the_same_facts(
    zoned_stack: StackInfo, sample: str
) -> None:
    hl7 = SAMPLES / "hl7v2" / f"{sample}.hl7"
    twins = list((SAMPLES / "fhir-expected").rglob(f"{sample}-expected.json"))
    if not hl7.exists() or not twins:
        pytest.skip(f"NOT RUN: the public samples are absent ({SAMPLES} not found)")
    run = uuid.uuid4().hex[:6]
    v2_source, fhir_source = f"v2-{run}", f"fhir-{run}"

    async def scenario() -> dict[str, list[ClinicalFact]]:
        await publish(zoned_stack.bootstrap_servers, [(v2_source, hl7.read_bytes())], RAW_HL7V2)
        await publish(zoned_stack.bootstrap_servers, [(fhir_source, twins[0].read_bytes())],
                      RAW_FHIR)  # fmt: skip

        async def facts() -> dict[str, list[ClinicalFact]]:
            by_source: dict[str, list[ClinicalFact]] = defaultdict(list)
            for record in await read_topic(zoned_stack.bootstrap_servers, FACTS):
                fact = codec.CLINICAL_FACT.decode(record.value)
                if fact.provenance.source_system in (v2_source, fhir_source):
                    by_source[fact.provenance.source_system].append(fact)
            return by_source

        found = await eventually(facts, lambda f: len(f) == 2, within=30)
        await asyncio.sleep(1.0)  # let the last facts of the Bundle arrive
        return found if len(found) < 2 else await facts()

    by_source = asyncio.run(scenario())
    v2, fhir = by_source[v2_source], by_source[fhir_source]
    assert v2 and fhir
    # One patient: identity matching linked the FHIR Patient to the HL7 PID.
    assert len({f.patient_id for f in v2 + fhir}) == 1
    assert {comparable(f) for f in v2} == {comparable(f) for f in fhir}
    print(f"\n{sample}: {len(v2)} facts from HL7 v2 equal {len(fhir)} from FHIR")

    # Equivalent representations raise nothing, under the built-in policy's six classes.
    [patient] = {f.patient_id for f in v2}
    expected = {(f.attribute, f.provenance.source_system) for f in v2 + fhir}
    conflicts = asyncio.run(_conflicts_once_compared(zoned_stack, patient, expected))
    assert conflicts == []


async def _conflicts_once_compared(
    stack: StackInfo, patient: str, expected: set[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The conflict events about the patient, read once the conflicts stage holds every
    expected (attribute, source) assertion."""

    async def held() -> set[tuple[str, str]]:
        rows = await fetch(
            stack.database_url,
            "SELECT attribute, source_system FROM assertions WHERE patient_id = $1",
            patient,
        )
        return {(r["attribute"], r["source_system"]) for r in rows}

    stored = await eventually(held, lambda found: expected <= found, within=30)
    assert expected <= stored
    await _conflicts_published(stack)
    events = [
        codec.CONFLICT_EVENT.decode(record.value)
        for record in await read_topic(stack.bootstrap_servers, CONFLICTS)
    ]
    return [(e.attribute, e.kind) for e in events if e.patient_id == patient]


def test_every_sample_and_its_fhir_twin_disagree_about_nothing(zoned_stack: StackInfo) -> None:
    """All the converter's HL7 v2 samples that have a FHIR twin, each pair published as two
    sources of its own: no conflict opens between a message and its twin. (Two samples may
    describe one patient differently: two samples' disagreements, not a twin's, left out. The
    samples' active medications are years old, so each source's is stale for want of
    reconfirmation: a STALE record, rightly, and no disagreement.)"""
    pairs = []
    for hl7 in sorted((SAMPLES / "hl7v2").glob("*.hl7")):
        twins = list((SAMPLES / "fhir-expected").rglob(f"{hl7.stem}-expected.json"))
        if twins:
            pairs.append((hl7, twins[0]))
    if not pairs:
        pytest.skip(f"NOT RUN: the public samples are absent ({SAMPLES} not found)")
    run = uuid.uuid4().hex[:6]
    count, disagreeing = asyncio.run(_twin_conflicts(zoned_stack, pairs, run))
    print(f"\n{len(pairs)} pairs, {count} facts, twin conflicts: {disagreeing}")
    assert count > 0
    assert disagreeing == []


async def _twin_conflicts(
    stack: StackInfo, pairs: list[tuple[Path, Path]], run: str
) -> tuple[int, list[tuple[str, str]]]:
    """Publish each pair as sources v2-<run>|<sample> and fhir-<run>|<sample>; once the
    conflicts stage holds all their facts, the conflicts opened between a sample and its twin
    alone."""
    for hl7, twin in pairs:
        await publish(stack.bootstrap_servers, [(f"v2-{run}|{hl7.stem}", hl7.read_bytes())],
                      RAW_HL7V2)  # fmt: skip
        await publish(stack.bootstrap_servers, [(f"fhir-{run}|{hl7.stem}", twin.read_bytes())],
                      RAW_FHIR)  # fmt: skip

    async def ours() -> list[ClinicalFact]:
        decoded = (
            codec.CLINICAL_FACT.decode(r.value)
            for r in await read_topic(stack.bootstrap_servers, FACTS)
        )
        return [f for f in decoded if f"-{run}|" in f.provenance.source_system]

    await eventually(ours, lambda f: len(f) > 0, within=60)
    await asyncio.sleep(3.0)  # let the last Bundles through
    facts = await ours()
    expected = {(f.patient_id, f.attribute, f.provenance.source_system) for f in facts}

    async def held() -> set[tuple[str, str, str]]:
        rows = await fetch(
            stack.database_url,
            "SELECT patient_id, attribute, source_system FROM assertions "
            "WHERE source_system LIKE $1",
            f"%-{run}|%",
        )
        return {(r["patient_id"], r["attribute"], r["source_system"]) for r in rows}

    assert expected <= await eventually(held, lambda found: expected <= found, within=60)
    await _conflicts_published(stack)
    patients = {f.patient_id for f in facts}
    disagreeing = []
    for record in await read_topic(stack.bootstrap_servers, CONFLICTS):
        event = codec.CONFLICT_EVENT.decode(record.value)
        if event.patient_id in patients and event.kind == "OPENED":
            samples = {a.source_system.partition("|")[2] for a in event.assertions}
            if len(samples) == 1:
                disagreeing.append((samples.pop(), event.attribute))
    return len(facts), disagreeing


async def _conflicts_published(stack: StackInfo) -> None:
    """Wait until the conflicts stage holds nothing back (suppress_for: results are held 30 s)
    and its outbox is empty: its events, committed with the state, are then on the topic."""

    async def pending() -> int:
        rows = await fetch(
            stack.database_url,
            "SELECT (SELECT count(*) FROM outbox WHERE stage = 'conflicts') "
            "+ (SELECT count(*) FROM held_records) AS n",
        )
        return int(rows[0]["n"])

    assert await eventually(pending, lambda n: n == 0, within=90) == 0
