"""A source's delete withdraws what its record's last upsert asserted: the pure core
(facts/withdrawals.py) and the normalization stage with its ports in memory.

Records are built by the ingestion cores, so that the key a delete finds its upsert by is the
one ingestion really gives every version and the delete of a record.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from builders import FakeIdentities, raw
from concord.config import NormalizationSettings
from concord.events import codec
from concord.events.models import MERGE_ATTRIBUTE, ClinicalFact, IngestedRecord
from concord.events.raw import RawEvent
from concord.ingestion.claims import ingest_claim
from concord.ingestion.fhir import ingest_fhir
from concord.normalization.app import NormalizationStage
from concord.normalization.facts.drafts import FactDraft, to_fact
from concord.normalization.facts.withdrawals import (
    Remembered,
    RememberedFact,
    latest,
    record_key,
    remembered,
    withdrawal_facts,
)
from concord.normalization.record_facts import InMemoryRecordFacts
from concord.normalization.terminology import Terminology
from concord.runtime.batch import run_batch
from concord.topics import FACTS, INGESTED, RAW_CLAIMS, RAW_FHIR

MPI = "urn:concord:enterprise-patient-id"
DSN = "postgresql://unused@127.0.0.1:1/none"
RECEIVED = datetime(2024, 3, 9, 12, tzinfo=UTC)
OBSERVATION_ATTRIBUTE = "Observation/2345-7"


def _patient(pid: str = "p1", enterprise: str | None = "E-100", **extra: Any) -> dict[str, Any]:
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"versionId": "2", "lastUpdated": "2024-01-02T03:04:05Z"},
        "name": [{"use": "official", "family": "Zyxwvut", "given": ["Ana"]}],
        "gender": "female",
        "birthDate": "1961-07-08",
    }
    if enterprise is not None:
        patient["identifier"] = [{"system": MPI, "value": enterprise}]
    return patient | extra


def _glucose(version: str = "1", updated: str = "2024-03-01T12:00:00Z") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"versionId": version, "lastUpdated": updated},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-03-01T07:30:00-05:00",
        "valueQuantity": {"value": 5.5, "unit": "mmol/L"},
    }


def _delete(reference: str, *, version: str = "3", at: str = "2024-03-05T00:00:00Z") -> Any:
    """A history Bundle's DELETE: no resource, only the URL that names it."""
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "request": {"method": "DELETE", "url": f"{reference}/_history/{version}"},
                "response": {"status": "204", "lastModified": at},
            }
        ],
    }


def _raw(value: bytes, topic: str, offset: int, source: bytes) -> RawEvent:
    return RawEvent(
        topic=topic,
        partition=0,
        offset=offset,
        key=None,
        value=value,
        headers=(("source", source),),
        received_time=RECEIVED,
    )


def _fhir(document: Any, *, offset: int = 0, source: bytes = b"ehr-alpha") -> IngestedRecord:
    records = ingest_fhir(
        _raw(orjson.dumps(document), RAW_FHIR, offset, source), max_payload_bytes=1 << 20
    )
    assert isinstance(records, list), records
    [record] = records
    return record


def _claims(lines: Sequence[bytes]) -> list[IngestedRecord]:
    records = []
    for offset, line in enumerate(lines):
        ingested = ingest_claim(
            _raw(line, RAW_CLAIMS, offset, b"payer-a"), max_payload_bytes=1 << 20
        )
        assert isinstance(ingested, list), ingested
        records += ingested
    return records


def _stage(memory: InMemoryRecordFacts | None = None) -> NormalizationStage:
    settings = NormalizationSettings(enterprise_id_systems=[MPI], database_url=DSN)
    return NormalizationStage(
        settings,
        FakeIdentities(),
        Terminology.load(),
        record_facts=memory if memory is not None else InMemoryRecordFacts(),
    )


def _consumed(records: Sequence[IngestedRecord]) -> list[RawEvent]:
    return [
        raw(codec.INGESTED_RECORD.encode(r), topic=INGESTED, offset=n)
        for n, r in enumerate(records)
    ]


async def _run(stage: NormalizationStage, *records: IngestedRecord) -> list[ClinicalFact]:
    out = await run_batch(stage, _consumed(records))
    assert all(r.topic == FACTS for r in out.pending)
    return [codec.CLINICAL_FACT.decode(r.value) for r in out.pending]


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the pure core ------------------------------------------------------------------------------


def test_every_version_and_the_delete_of_a_resource_share_one_key() -> None:
    first, second = _fhir(_glucose("1")), _fhir(_glucose("2", "2024-03-02T00:00:00Z"))
    delete = _fhir(_delete("Observation/o1"))
    assert delete.operation == "DELETE"
    assert len({first.record_id, second.record_id, delete.record_id}) == 3  # ids carry versions
    assert record_key(first) == record_key(second) == record_key(delete)
    assert record_key(delete) == ("ehr-alpha", "Observation/o1")
    other_source = _fhir(_delete("Observation/o1"), source=b"ehr-beta")
    assert record_key(other_source) != record_key(delete)
    hl7 = first.model_copy(update={"format": "HL7V2"})
    assert record_key(hl7) is None  # messages are never deleted: nothing to remember


def _memory(
    attributes: Sequence[str],
    *,
    patient: str = "E-100",
    at: datetime = datetime(2024, 3, 1, tzinfo=UTC),
    linked: str | None = None,
) -> Remembered:
    return Remembered(
        key=("ehr-alpha", "Observation/o1"),
        patient_id=patient,
        subject="Patient/p1",
        event_time=at,
        facts=tuple(RememberedFact(a, "LABORATORY") for a in attributes),
        linked_patient_id=linked,
    )


def test_a_delete_withdraws_each_remembered_attribute_with_its_own_provenance() -> None:
    delete = _fhir(_delete("Observation/o1"))
    facts = withdrawal_facts(delete, [_memory([OBSERVATION_ATTRIBUTE, "Observation/718-7"])])
    assert [f.attribute for f in facts] == ["Observation/2345-7", "Observation/718-7"]
    for fact in facts:
        assert (fact.status, fact.value, fact.patient_id) == ("DELETED", None, "E-100")
        assert (fact.attribute_class, fact.subject) == ("LABORATORY", "Patient/p1")
        assert fact.provenance == delete.provenance  # the delete's event time decides
        assert fact.record_id == delete.record_id
    assert len({f.fact_id for f in facts}) == 2


def test_withdrawal_ids_are_deterministic_and_per_delete_version() -> None:
    delete = _fhir(_delete("Observation/o1"))
    memory = [_memory([OBSERVATION_ATTRIBUTE])]
    again = _fhir(_delete("Observation/o1"), offset=9)  # redelivered: same version
    later = _fhir(_delete("Observation/o1", version="5"))
    [first] = withdrawal_facts(delete, memory)
    assert withdrawal_facts(again, memory) == [
        first.model_copy(update={"provenance": again.provenance})
    ]
    [other] = withdrawal_facts(later, memory)
    assert other.fact_id != first.fact_id
    upsert = _fhir(_glucose())
    draft_id = to_fact(_draft(), patient_id="E-100", record=upsert).fact_id
    assert first.fact_id != draft_id


def _draft() -> FactDraft:
    return FactDraft(OBSERVATION_ATTRIBUTE, "LABORATORY", "99")


def test_nothing_remembered_withdraws_nothing() -> None:
    assert withdrawal_facts(_fhir(_delete("Observation/o1")), []) == []


def test_memories_of_one_batch_withdraw_each_attribute_once_for_the_newest_patient() -> None:
    """A stored memory and an upsert of the same batch (a re-create beside its delete): what
    either said is withdrawn; the conflicts stage keeps the re-created facts, which are
    newer."""
    stored = _memory(["Observation/A", "Observation/B"], patient="E-old")
    recreated = _memory(["Observation/A"], patient="E-new", at=datetime(2024, 3, 7, tzinfo=UTC))
    facts = withdrawal_facts(_fhir(_delete("Observation/o1")), [recreated, stored])
    assert [(f.attribute, f.patient_id) for f in facts] == [
        ("Observation/A", "E-new"),
        ("Observation/B", "E-old"),
    ]


def test_a_record_follows_its_patients_merge_but_a_patient_record_does_not() -> None:
    linked = _memory([OBSERVATION_ATTRIBUTE], patient="E-provisional", linked="E-100")
    [fact] = withdrawal_facts(_fhir(_delete("Observation/o1")), [linked])
    assert fact.patient_id == "E-100"  # where the merge moved the record's assertion
    [own] = withdrawal_facts(_fhir(_delete("Patient/pA")), [linked])
    assert own.patient_id == "E-provisional"  # a merged Patient's demographics stay its own


def test_remembered_keeps_the_fact_keys_never_an_identity_signal() -> None:
    upsert = _fhir(_patient())
    facts = [  # one attribute twice (a record may report a test twice): one key
        to_fact(_draft(), patient_id="E-100", record=upsert, subject="Patient/p1"),
        to_fact(_draft(), patient_id="E-100", record=upsert, subject="Patient/p1"),
    ]
    merge = facts[0].model_copy(
        update={"attribute": MERGE_ATTRIBUTE, "attribute_class": "DEMOGRAPHICS"}
    )
    memory = remembered(upsert, [*facts, merge])
    assert memory is not None
    assert memory.key == ("ehr-alpha", "Patient/p1")
    assert memory.facts == (RememberedFact(OBSERVATION_ATTRIBUTE, "LABORATORY"),)
    assert (memory.patient_id, memory.subject) == ("E-100", "Patient/p1")
    assert memory.event_time == upsert.provenance.event_time
    assert remembered(upsert, [merge]) is None
    assert remembered(upsert.model_copy(update={"format": "HL7V2"}), facts) is None


def test_the_newest_upsert_is_remembered_whatever_the_order() -> None:
    old = _memory(["Observation/A"])
    new = _memory(["Observation/B"], at=old.event_time + timedelta(days=1))
    assert latest([new, old]) == {old.key: new}
    assert latest([old, new]) == {old.key: new}


# --- the stage ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_upsert_then_its_delete_withdraws_exactly_what_it_asserted() -> None:
    stage = _stage()
    asserted = await _run(stage, _fhir(_patient()), _fhir(_glucose(), offset=1))
    observation = [f for f in asserted if f.attribute.startswith("Observation/")]
    assert [f.attribute for f in observation] == [OBSERVATION_ATTRIBUTE]

    before = _count("concord_records_withdrawn_total", format="FHIR_R4")
    delete = _fhir(_delete("Observation/o1"), offset=2)
    withdrawn = await _run(stage, delete)
    assert [(f.attribute, f.attribute_class) for f in withdrawn] == [
        (f.attribute, f.attribute_class) for f in observation
    ]
    [fact] = withdrawn
    assert (fact.status, fact.value) == ("DELETED", None)
    assert (fact.patient_id, fact.subject) == (observation[0].patient_id, observation[0].subject)
    assert fact.provenance.event_time == delete.provenance.event_time
    assert fact.provenance.event_time > observation[0].provenance.event_time
    assert _count("concord_records_withdrawn_total", format="FHIR_R4") == before + 1


@pytest.mark.asyncio
async def test_a_delete_of_a_record_never_seen_is_counted_and_publishes_nothing() -> None:
    labels = {"format": "FHIR_R4", "operation": "DELETE"}
    before = _count("concord_records_not_normalized_total", **labels)
    assert await _run(_stage(), _fhir(_delete("Observation/o1"))) == []
    assert _count("concord_records_not_normalized_total", **labels) == before + 1


@pytest.mark.asyncio
async def test_a_redelivered_delete_repeats_the_same_facts() -> None:
    stage = _stage()
    await _run(stage, _fhir(_patient()), _fhir(_glucose(), offset=1))
    delete = _fhir(_delete("Observation/o1"), offset=2)
    first = await _run(stage, delete)
    again = await _run(stage, delete)
    assert first == again and first


@pytest.mark.asyncio
async def test_a_voided_claim_line_withdraws_its_conditions_and_drug() -> None:
    sample = resources.files("concord") / "demo" / "claims-sample.ndjson"
    lines = [line for line in sample.read_bytes().splitlines() if b"BWH-2026-0051388" in line]
    original, void = _claims(lines)
    assert (original.operation, void.operation) == ("UPSERT", "DELETE")
    stage = _stage()
    asserted = await _run(stage, original)
    assert {f.attribute_class for f in asserted} == {"CONDITION", "MEDICATION"}
    withdrawn = await _run(stage, void)
    assert {(f.attribute, f.attribute_class) for f in withdrawn} == {
        (f.attribute, f.attribute_class) for f in asserted
    }
    assert {f.status for f in withdrawn} == {"DELETED"}
    assert {f.patient_id for f in withdrawn} == {asserted[0].patient_id}
    assert {f.provenance.event_time for f in withdrawn} == {void.provenance.event_time}


@pytest.mark.asyncio
async def test_deleting_a_patient_withdraws_its_demographics_and_keeps_its_links() -> None:
    identities = FakeIdentities()
    stage = NormalizationStage(
        NormalizationSettings(enterprise_id_systems=[MPI], database_url=DSN),
        identities,
        Terminology.load(),
        record_facts=InMemoryRecordFacts(),
    )
    asserted = await _run(stage, _fhir(_patient()))
    links = dict(identities.crosswalk)
    withdrawn = await _run(stage, _fhir(_delete("Patient/p1"), offset=1))
    assert sorted(f.attribute for f in withdrawn) == sorted(f.attribute for f in asserted)
    assert {f.attribute_class for f in withdrawn} == {"DEMOGRAPHICS"}
    assert {(f.status, f.patient_id) for f in withdrawn} == {("DELETED", "E-100")}
    assert identities.crosswalk == links


@pytest.mark.asyncio
async def test_a_merge_is_not_remembered_as_what_the_patient_asserted() -> None:
    memory = InMemoryRecordFacts()
    stage = _stage(memory)
    merged = _patient("pB") | {"link": [{"type": "replaces", "other": {"reference": "Patient/pA"}}]}
    facts = await _run(
        stage, _fhir(_patient("pA", enterprise="E-200"), offset=0), _fhir(merged, offset=1)
    )
    assert MERGE_ATTRIBUTE in {f.attribute for f in facts}
    remembered_b = memory.memories[("ehr-alpha", "Patient/pB")]
    assert MERGE_ATTRIBUTE not in {f.attribute for f in remembered_b.facts}
    # A merge tombstone (replaced-by) asserts nothing: what pA said before stays remembered.
    before = memory.memories[("ehr-alpha", "Patient/pA")]
    tombstone = _patient("pA", enterprise=None) | {
        "meta": {"versionId": "3", "lastUpdated": "2024-02-01T00:00:00Z"},
        "link": [{"type": "replaced-by", "other": {"reference": "Patient/pB"}}],
    }
    await _run(stage, _fhir(tombstone, offset=2))
    assert memory.memories[("ehr-alpha", "Patient/pA")] == before


@pytest.mark.asyncio
async def test_a_re_created_record_asserts_again_after_its_delete() -> None:
    stage = _stage()
    await _run(stage, _fhir(_patient()), _fhir(_glucose(), offset=1))
    [withdrawn] = await _run(stage, _fhir(_delete("Observation/o1"), offset=2))
    again = await _run(stage, _fhir(_glucose("4", "2024-03-06T00:00:00Z"), offset=3))
    [recreated] = [f for f in again if f.attribute == OBSERVATION_ATTRIBUTE]
    assert recreated.status == "ASSERTED"
    assert recreated.provenance.event_time > withdrawn.provenance.event_time
    [withdrawn_again] = await _run(
        stage, _fhir(_delete("Observation/o1", version="5", at="2024-03-08T00:00:00Z"), offset=4)
    )
    assert withdrawn_again.fact_id != withdrawn.fact_id


@pytest.mark.asyncio
async def test_an_upsert_and_its_delete_in_one_batch() -> None:
    facts = await _run(
        _stage(),
        _fhir(_patient()),
        _fhir(_glucose(), offset=1),
        _fhir(_delete("Observation/o1"), offset=2),
    )
    statuses = {f.status for f in facts if f.attribute == OBSERVATION_ATTRIBUTE}
    assert statuses == {"ASSERTED", "DELETED"}


@pytest.mark.asyncio
async def test_a_delete_follows_the_merge_of_its_records_patient() -> None:
    """A result filed before its Patient got a provisional id; the Patient placed it since,
    and the identity index links the result's subject to the enterprise id now."""
    memory = InMemoryRecordFacts()
    stage = _stage(memory)
    [asserted] = await _run(stage, _fhir(_glucose()))
    assert "PROVISIONAL_PATIENT" in asserted.flags
    memory.links[("ehr-alpha", "Patient/p1")] = "E-100"
    [withdrawn] = await _run(stage, _fhir(_delete("Observation/o1"), offset=1))
    assert withdrawn.patient_id == "E-100" != asserted.patient_id
    assert withdrawn.subject == asserted.subject == "Patient/p1"
