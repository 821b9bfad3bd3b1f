"""An HL7 v2 message and its FHIR twin (the public converter samples), published as two
sources to the running stack, are one patient with the same facts, and raise no conflict."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from pipeline_tools import eventually, fetch, publish, read_topic

from concord.events import codec
from concord.events.models import ClinicalFact
from concord.stack.stack import StackInfo
from concord.topics import CONFLICTS, FACTS, RAW_FHIR, RAW_HL7V2

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
    events = [
        codec.CONFLICT_EVENT.decode(record.value)
        for record in await read_topic(stack.bootstrap_servers, CONFLICTS)
    ]
    return [(e.attribute, e.kind) for e in events if e.patient_id == patient]
