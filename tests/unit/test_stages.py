"""The stage adapters (ingestion, normalization, alerting): raw events in, outbound records out.

No broker: RawEvents are built by hand and run through the stages by run_batch, as the batch
loop would run them.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import orjson
import pytest
from aiokafka.structs import TopicPartition
from prometheus_client import REGISTRY

from builders import FakeAlerts, FakeIdentities, FakeOutbox, FakeProducer, FakeSeenVersions, raw
from concord.alerting.app import AlertingStage
from concord.config import IngestionSettings, NormalizationSettings
from concord.conflicts.policy import DEFAULT_POLICY
from concord.conflicts.rules import AttributeState, apply_fact, evaluate
from concord.deadletters import Rejection
from concord.events import codec
from concord.events.models import (
    MERGE_ATTRIBUTE,
    ClinicalFact,
    DeadLetter,
    Header,
    IngestedRecord,
    Provenance,
)
from concord.events.raw import RawEvent
from concord.ingestion.app import IngestionStage, patient_key
from concord.normalization.app import NormalizationStage
from concord.normalization.identity.resolution import (
    new_enterprise_id,
)
from concord.normalization.record_facts import InMemoryRecordFacts
from concord.normalization.terminology import Terminology
from concord.runtime.batch import BatchLoop, Outbound, OutboundRecord, run_batch
from concord.runtime.stage import BaseStage
from concord.topics import (
    ALERTS,
    CONFLICTS,
    DEADLETTER,
    DOCUMENTS,
    FACTS,
    INGESTED,
    RAW_CLAIMS,
    RAW_FHIR,
    RAW_HL7V2,
)

MPI = "urn:concord:enterprise-patient-id"


def _patient(pid: str = "p1", enterprise: str | None = "E-100") -> dict[str, Any]:
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
    return patient


def _record(
    value: bytes | None,
    *,
    headers: Sequence[tuple[str, bytes | None]] = (("source", b"ehr-alpha"),),
    topic: str = RAW_FHIR,
    partition: int = 1,
    offset: int = 0,
    key: bytes | None = None,
) -> RawEvent:
    return raw(value, topic=topic, partition=partition, offset=offset, key=key, headers=headers)


DSN = "postgresql://unused@127.0.0.1:1/none"


def _ingestion(seen: FakeSeenVersions | None = None, **settings: Any) -> IngestionStage:
    options: dict[str, Any] = {"max_payload_bytes": 64 * 1024, "database_url": DSN} | settings
    return IngestionStage(IngestionSettings(**options), seen or FakeSeenVersions())


def _normalization() -> NormalizationStage:
    settings = NormalizationSettings(enterprise_id_systems=[MPI], database_url=DSN)
    return NormalizationStage(
        settings, FakeIdentities(), Terminology.load(), record_facts=InMemoryRecordFacts()
    )


def _on(out: Outbound, topic: str) -> list[OutboundRecord]:
    return [r for r in out.pending if r.topic == topic]


def _letters(out: Outbound) -> list[DeadLetter]:
    return [codec.DEAD_LETTER.decode(r.value) for r in _on(out, DEADLETTER)]


def _ingested_record(patient: dict[str, Any], record_id: str = "r-1") -> IngestedRecord:
    return IngestedRecord(
        record_id=record_id,
        format="FHIR_R4",
        resource_type="Patient",
        payload=orjson.dumps(patient),
        provenance=Provenance(
            source_system="ehr-alpha",
            source_record_id=f"Patient/{patient['id']}",
            source_record_version="2",
            event_time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            received_time=datetime(2024, 1, 2, 3, 4, 6, tzinfo=UTC),
            raw_topic=RAW_FHIR,
            raw_partition=1,
            raw_offset=0,
            payload_sha256="ab" * 32,
        ),
    )


def _fact() -> ClinicalFact:
    ingested = _ingested_record(_patient())
    return ClinicalFact(
        fact_id="f1",
        patient_id="E-100",
        attribute="Patient.gender",
        attribute_class="DEMOGRAPHICS",
        value="female",
        status="ASSERTED",
        provenance=ingested.provenance,
    )


# --- ingestion ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_ingestion_publishes_valid_records_and_dead_letters_the_rest() -> None:
    valid = orjson.dumps(_patient())
    malformed = b'{"resourceType": "Patient", "id": '
    sourceless = orjson.dumps(_patient("p2"))
    batch = [
        _record(valid, offset=10, key=b"k-valid"),
        _record(
            malformed,
            offset=11,
            key=b"k-bad",
            headers=[("source", b"ehr-alpha"), ("trace", b"\x00\x01")],
        ),
        _record(sourceless, offset=12, headers=[("trace", b"t-3")]),
    ]
    out = await run_batch(_ingestion(), batch)

    assert len(out.pending) == 3
    [ingested] = _on(out, INGESTED)
    assert ingested.key == b"ehr-alpha/Patient/p1"
    record = codec.INGESTED_RECORD.decode(ingested.value)
    assert record.resource_type == "Patient"
    assert orjson.loads(record.payload) == _patient()
    assert record.provenance.source_system == "ehr-alpha"
    assert record.provenance.source_record_id == "Patient/p1"
    assert (record.provenance.raw_topic, record.provenance.raw_partition) == (RAW_FHIR, 1)
    assert record.provenance.raw_offset == 10

    bad, no_source = _letters(out)
    assert [r.key for r in _on(out, DEADLETTER)] == [b"k-bad", None]
    assert bad.stage == "ingestion"
    assert bad.reason_code == "MALFORMED_JSON"
    assert bad.original_value == malformed
    assert bad.original_key == b"k-bad"
    assert (bad.original_topic, bad.original_partition, bad.original_offset) == (RAW_FHIR, 1, 11)
    assert bad.original_headers == (
        Header(key="source", value=b"ehr-alpha"),
        Header(key="trace", value=b"\x00\x01"),
    )
    assert bad.failed_at.tzinfo is not None

    assert no_source.reason_code == "MISSING_SOURCE_HEADER"
    assert no_source.original_value == sourceless
    assert no_source.original_offset == 12
    assert no_source.original_key is None
    assert no_source.original_headers == (Header(key="trace", value=b"t-3"),)
    for letter in (bad, no_source):
        assert "Zyxwvut" not in letter.reason


@pytest.mark.asyncio
async def test_ingestion_splits_a_bundle() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": _patient("a")}, {"resource": _patient("b")}],
    }
    out = await run_batch(_ingestion(), [_record(orjson.dumps(bundle), offset=5)])
    assert [r.key for r in out.pending] == [b"ehr-alpha/Patient/a", b"ehr-alpha/Patient/b"]
    decoded = [codec.INGESTED_RECORD.decode(r.value) for r in out.pending]
    assert {d.provenance.raw_offset for d in decoded} == {5}


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.asyncio
async def test_a_record_accepted_with_warnings_is_published_marked_and_counted_by_reason() -> None:
    """Partial acceptance (issue 13): the Bundle is published, not dead-lettered; the record
    that carries the warnings says so in a header, and each warning is counted by reason."""
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "a1",
        "patient": {"reference": "Patient/a"},
        "code": {"coding": [{"code": "local-allergen"}]},
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": _patient("a")}, {"resource": allergy}],
    }
    counted = "concord_record_warnings_total"
    labels = {"stage": "ingestion", "reason_code": "CODE_WITHOUT_SYSTEM"}
    before = _count(counted, **labels)
    out = await run_batch(_ingestion(), [_record(orjson.dumps(bundle), offset=6)])
    patient, marked = _on(out, INGESTED)
    assert (patient.headers, marked.headers) == ((), (("concord-warnings", b"1"),))
    [warning] = codec.INGESTED_RECORD.decode(marked.value).warnings
    assert (warning.reason_code, warning.location) == (
        "CODE_WITHOUT_SYSTEM",
        "Bundle.entry[1].resource.code.coding[0]",
    )
    assert _letters(out) == []
    assert _count(counted, **labels) == before + 1


@pytest.mark.asyncio
async def test_a_type_kept_for_provenance_is_published_and_counted_by_type() -> None:
    immunization = {
        "resourceType": "Immunization",
        "id": "i1",
        "status": "completed",
        "patient": {"reference": "Patient/p1"},
    }
    counted = "concord_records_not_compared_total"
    labels = {"format": "FHIR_R4", "resource_type": "Immunization"}
    before = _count(counted, **labels)
    out = await run_batch(_ingestion(), [_record(orjson.dumps(immunization), offset=7)])
    [published] = _on(out, INGESTED)
    assert published.key == b"ehr-alpha/Patient/p1" and published.headers == ()
    assert codec.INGESTED_RECORD.decode(published.value).resource_type == "Immunization"
    assert _count(counted, **labels) == before + 1


@pytest.mark.asyncio
async def test_ingestion_dead_letters_a_tombstone() -> None:
    out = await run_batch(_ingestion(), [_record(None, offset=3, key=b"k")])
    [letter] = _letters(out)
    assert letter.reason_code == "EMPTY_PAYLOAD"
    assert letter.original_value is None
    assert letter.original_key == b"k"


@pytest.mark.asyncio
async def test_a_null_source_header_is_dead_lettered_not_a_crash() -> None:
    """Kafka header values may be null, and aiokafka hands them over as None. Such a record
    has no source: it must be dead-lettered, not crash the batch (and so the worker, forever)."""
    nameless = _record(orjson.dumps(_patient()), headers=[("source", None)])
    out = await run_batch(_ingestion(), [nameless])
    [letter] = _letters(out)
    assert letter.reason_code == "MISSING_SOURCE_HEADER"
    assert letter.original_headers == (Header(key="source", value=None),)


@pytest.mark.asyncio
async def test_dead_letters_keep_repeated_headers() -> None:
    """Kafka headers are a list and may repeat a key; the dead letter keeps the original."""
    headers = [("source", b"ehr-alpha"), ("hop", b"1"), ("hop", b"2")]
    out = await run_batch(_ingestion(), [_record(b"not json", headers=headers)])
    [letter] = _letters(out)
    assert letter.original_headers == tuple(Header(key=k, value=v) for k, v in headers)


# --- normalization ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_normalization_turns_an_ingested_record_into_three_facts() -> None:
    ingested = _ingested_record(_patient())
    record = _record(codec.INGESTED_RECORD.encode(ingested), topic=INGESTED, offset=4)
    out = await run_batch(_normalization(), [record])

    facts_out = _on(out, FACTS)
    assert len(facts_out) == len(out.pending) == 3
    assert {r.key for r in facts_out} == {b"E-100"}
    facts = [codec.CLINICAL_FACT.decode(r.value) for r in facts_out]
    assert {f.attribute for f in facts} == {"Patient.birthDate", "Patient.gender", "Patient.name"}
    assert all(f.patient_id == "E-100" for f in facts)
    assert all(f.provenance == ingested.provenance for f in facts)


@pytest.mark.asyncio
async def test_normalization_dead_letters_undecodable_bytes() -> None:
    garbage = b"\xc3\x01 not an ingested record"
    batch = [
        _record(garbage, topic=INGESTED, partition=2, offset=7, key=b"k", headers=[]),
        _record(None, topic=INGESTED, offset=8, headers=[]),
        _record(codec.CLINICAL_FACT.encode(_fact()), topic=INGESTED, offset=9, headers=[]),
    ]
    out = await run_batch(_normalization(), batch)
    letters = _letters(out)
    assert len(letters) == len(out.pending) == 3
    assert {letter.reason_code for letter in letters} == {"UNDECODABLE_EVENT"}
    first = letters[0]
    assert first.stage == "normalization"
    assert first.original_value == garbage
    assert first.original_key == b"k"
    assert (first.original_topic, first.original_partition, first.original_offset) == (
        INGESTED,
        2,
        7,
    )
    assert [letter.original_offset for letter in letters] == [7, 8, 9]


@pytest.mark.asyncio
async def test_a_patient_without_enterprise_id_is_placed_by_matching() -> None:
    encoded = codec.INGESTED_RECORD.encode(_ingested_record(_patient(enterprise=None)))
    out = await run_batch(_normalization(), [_record(encoded, topic=INGESTED)])
    assert _letters(out) == []
    facts = [codec.CLINICAL_FACT.decode(r.value) for r in _on(out, FACTS)]
    assert len(facts) == 3
    assert {f.patient_id for f in facts} == {new_enterprise_id("ehr-alpha", "Patient/p1")}


@pytest.mark.asyncio
async def test_clinical_records_and_hl7_follow_their_patient() -> None:
    patient = _ingested_record(_patient())
    glucose = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-03-01T07:30:00-05:00",
        "valueQuantity": {"value": 5.5, "unit": "mmol/L"},
    }
    observation = patient.model_copy(
        update={
            "record_id": "r-2",
            "resource_type": "Observation",
            "payload": orjson.dumps(glucose),
        }
    )
    orphan = observation.model_copy(
        update={
            "record_id": "r-3",
            "payload": orjson.dumps(glucose | {"subject": {"reference": "Patient/zz"}}),
        }
    )
    adt = patient.model_copy(
        update={
            "record_id": "r-4",
            "format": "HL7V2",
            "resource_type": "ADT^A08",
            "payload": b"MSH|^~\\&|EPIC|GH|CONCORD|GH|20240301083000-0500||ADT^A08|C1|P|2.5.1\r"
            b"EVN|A08|20240301082500-0500\rPID|1||M-9^^^GH^MR||Doe^Jo||19700101|F\r",
        }
    )
    records = [
        _record(codec.INGESTED_RECORD.encode(r), topic=INGESTED, offset=n)
        for n, r in enumerate([patient, observation, orphan, adt])
    ]
    out = await run_batch(_normalization(), records)
    facts = [codec.CLINICAL_FACT.decode(r.value) for r in _on(out, FACTS)]
    by_record = {f.record_id: f for f in facts if f.record_id != "r-4"}
    assert by_record["r-2"].patient_id == "E-100"  # the crosswalk of Patient/p1
    assert by_record["r-2"].attribute == "Observation/2345-7"
    assert by_record["r-2"].unit == "mg/dL"
    assert "PROVISIONAL_PATIENT" in by_record["r-3"].flags  # nobody described Patient/zz yet
    hl7 = [f for f in facts if f.record_id == "r-4"]
    assert {f.attribute for f in hl7} == {"Patient.birthDate", "Patient.gender", "Patient.name"}
    assert len({f.patient_id for f in hl7}) == 1


@pytest.mark.asyncio
async def test_ingestion_reads_hl7v2_from_its_topic_in_the_sources_zone() -> None:
    message = (
        b"MSH|^~\\&|LAB|GH|CONCORD|GH|20240301090000||ADT^A04^ADT_A01|C-9|P|2.5\r"
        b"EVN|A04|20240301090000\rPID|1||M-1^^^GH^MR||Doe^Jo||19700101|F\r"
    )
    stage = _ingestion(source_time_zones={"lab": "America/Chicago"})
    records = [
        _record(message, topic=RAW_HL7V2, headers=(("source", b"lab"),)),
        _record(message, topic=RAW_HL7V2, headers=(("source", b"clinic"),), offset=1),
    ]
    out = await run_batch(stage, records)
    [ingested] = [codec.INGESTED_RECORD.decode(r.value) for r in _on(out, INGESTED)]
    assert ingested.format == "HL7V2" and ingested.source_time_zone == "America/Chicago"
    assert ingested.provenance.event_time == datetime(2024, 3, 1, 15, tzinfo=UTC)
    [letter] = _letters(out)
    assert letter.reason_code == "HL7_TIME_ZONE_UNKNOWN" and letter.original_offset == 1


@pytest.mark.asyncio
async def test_a_version_already_emitted_is_counted_not_emitted_again() -> None:
    seen = FakeSeenVersions()
    stage = _ingestion(seen)
    first = _record(orjson.dumps(_patient("p1")), offset=0)
    again = _record(orjson.dumps(_patient("p1")), offset=1)  # the same version, re-sent
    other = _record(orjson.dumps(_patient("p2")), offset=2)

    out = await run_batch(stage, [first, again], acknowledged=False)
    assert len(_on(out, INGESTED)) == 1  # a repeat inside one batch is a duplicate too
    assert seen.seen == {}  # nothing is remembered before Kafka acknowledged it
    await stage.on_produced()
    assert len(seen.seen) == 1  # remembered after the acks

    out = await run_batch(stage, [again, other])
    [emitted] = [codec.INGESTED_RECORD.decode(r.value) for r in _on(out, INGESTED)]
    assert emitted.provenance.source_record_id == "Patient/p2"


@pytest.mark.asyncio
async def test_a_batch_that_failed_to_produce_is_emitted_again() -> None:
    """A crash between produce and acknowledgement must not lose the records: they are only
    remembered in on_produced, so redelivery emits them again."""
    seen = FakeSeenVersions()
    record = _record(orjson.dumps(_patient("p1")))
    await run_batch(_ingestion(seen), [record], acknowledged=False)
    out = await run_batch(_ingestion(seen), [record])  # a restarted worker, same window
    assert len(_on(out, INGESTED)) == 1


@pytest.mark.asyncio
async def test_ingestion_reads_claim_lines_from_their_topic() -> None:
    sample = resources.files("concord") / "demo" / "claims-sample.ndjson"
    lines = [line for line in sample.read_bytes().splitlines() if line.strip()]
    records = [_record(line, topic=RAW_CLAIMS, offset=n) for n, line in enumerate(lines)]
    out = await run_batch(_ingestion(), [*records, _record(b'{"claim_id": 7}', topic=RAW_CLAIMS)])
    ingested = [codec.INGESTED_RECORD.decode(r.value) for r in _on(out, INGESTED)]
    assert len(ingested) == len(lines)
    assert {r.format for r in ingested} == {"CLAIM"}
    assert "DELETE" in {r.operation for r in ingested}  # the sample's voided line
    [letter] = _letters(out)
    assert letter.reason_code == "CLAIM_INVALID"


@pytest.mark.asyncio
async def test_normalization_passes_over_what_it_does_not_normalize_yet() -> None:
    """A delete of a record never seen, claims and encounters are valid records, not errors:
    they are neither dead-lettered nor turned into facts."""
    patient = _ingested_record(_patient())
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "finished"}
    others = [
        patient.model_copy(update={"operation": "DELETE"}),
        patient.model_copy(update={"format": "CLAIM", "resource_type": "ClaimLine"}),
        patient.model_copy(
            update={"resource_type": "Encounter", "payload": orjson.dumps(encounter)}
        ),
    ]
    records = [_record(codec.INGESTED_RECORD.encode(r), topic=INGESTED) for r in others]
    out = await run_batch(_normalization(), records)
    assert out.pending == []


@pytest.mark.asyncio
async def test_normalization_hands_a_documents_text_to_the_narrative_worker() -> None:
    """Issue 18: a DocumentReference's text goes on concord.documents, its patient resolved
    like its facts' would be; entered in error, it goes as withdrawn, without its text."""
    text = "Assessment: stage IIB breast cancer, ER positive."
    note = {
        "resourceType": "DocumentReference",
        "id": "n1",
        "status": "current",
        "subject": {"reference": "Patient/p1"},
        "date": "2024-03-01T09:30:00Z",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        "content": [{"attachment": {"contentType": "text/plain; charset=utf-8",
                                    "data": base64.b64encode(text.encode()).decode()}}],
    }  # fmt: skip
    record = _ingested_record(_patient()).model_copy(
        update={"resource_type": "DocumentReference", "payload": orjson.dumps(note),
                "patient_ref": "Patient/p1"}
    )  # fmt: skip
    withdrawn = record.model_copy(
        update={"record_id": "r-2",
                "payload": orjson.dumps({**note, "status": "entered-in-error"})}
    )  # fmt: skip
    events = [_record(codec.INGESTED_RECORD.encode(r), topic=INGESTED) for r in (record, withdrawn)]
    out = await run_batch(_normalization(), events)
    first, second = [codec.CLINICAL_DOCUMENT.decode(r.value) for r in _on(out, DOCUMENTS)]
    assert (first.text, first.kind, first.part) == (text, "note-text", "content/0")
    assert first.authored_time == datetime(2024, 3, 1, 9, 30, tzinfo=UTC)
    assert (first.type_system, first.type_code) == ("http://loinc.org", "11506-3")
    assert first.patient_id == second.patient_id and first.subject == "Patient/p1"
    assert first.document_id != second.document_id
    assert (second.withdrawn, second.text) == (True, None)
    assert _on(out, FACTS) == []


# --- Outbound -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_outbound_flush_sends_everything_in_order_and_empties() -> None:
    out = Outbound("ingestion")
    out.add(OutboundRecord(INGESTED, b"1", key=b"a"))
    out.add(OutboundRecord(DEADLETTER, b"2", headers=[("h", b"v")]))
    producer = FakeProducer()
    assert await out.flush(producer) == 2
    assert producer.sent == [
        (INGESTED, b"1", b"a", []),
        (DEADLETTER, b"2", None, [("h", b"v")]),
    ]
    assert out.pending == []


@pytest.mark.asyncio
async def test_a_core_that_raises_dead_letters_the_record_and_the_batch_goes_on() -> None:
    stage = _ingestion()
    secret = "Zyxwvut-4471"

    def broken(raw: RawEvent) -> list[IngestedRecord] | Rejection:
        raise ValueError(f"bad value {secret}")

    stage.ingest[RAW_CLAIMS] = broken
    out = await run_batch(
        stage, [_record(b"{}", topic=RAW_CLAIMS), _record(orjson.dumps(_patient()), offset=1)]
    )
    [letter] = _letters(out)
    assert letter.reason_code == "INGESTION_FAILED"
    assert letter.reason == "ValueError in the ingestion core"
    assert len(_on(out, INGESTED)) == 1


def test_ingested_records_are_keyed_by_the_sources_patient() -> None:
    """A Patient and the results filed under it share a partition, in order."""
    patient = _ingested_record(_patient()).model_copy(update={"patient_ref": "Patient/p1"})
    observation = patient.model_copy(
        update={"resource_type": "Observation", "patient_ref": "Patient/p1"}
    )
    adt = patient.model_copy(update={"format": "HL7V2", "patient_ref": "PID/M-9"})
    claim = patient.model_copy(update={"format": "CLAIM", "patient_ref": None})
    assert patient_key(patient) == patient_key(observation) == b"ehr-alpha/Patient/p1"
    assert patient_key(adt) == b"ehr-alpha/PID/M-9"
    assert patient_key(claim) == b"ehr-alpha/Patient/p1"  # no patient read: the record's own


@pytest.mark.asyncio
async def test_the_cores_name_the_patient_of_each_record() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:6f1c4c1e-8f65-4d5e-9a55-3f1c1d1e2b3a",
             "resource": _patient("p7")},
            {"resource": {
                "resourceType": "Observation", "id": "o1", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                "subject": {"reference": "urn:uuid:6f1c4c1e-8f65-4d5e-9a55-3f1c1d1e2b3a"},
                "valueQuantity": {"value": 99, "unit": "mg/dL"},
            }},
        ],
    }  # fmt: skip
    out = await run_batch(_ingestion(), [_record(orjson.dumps(bundle))])
    ingested = [codec.INGESTED_RECORD.decode(r.value) for r in _on(out, INGESTED)]
    assert [r.patient_ref for r in ingested] == ["Patient/p7", "Patient/p7"]
    assert {r.key for r in _on(out, INGESTED)} == {b"ehr-alpha/Patient/p7"}


@pytest.mark.asyncio
async def test_a_patient_link_replaces_publishes_the_merge_for_the_conflicts_stage() -> None:
    stage = _normalization()
    old = _patient("pA", enterprise=None) | {"birthDate": "1940-01-01", "gender": "male"}
    survivor = _patient("pB", enterprise=None)
    merged = survivor | {"link": [{"type": "replaces", "other": {"reference": "Patient/pA"}}]}
    records = [
        _ingested_record(doc).model_copy(update={"record_id": f"r-{n}"})
        for n, doc in enumerate([old, survivor, merged])
    ]
    out = await run_batch(
        stage,
        [_record(codec.INGESTED_RECORD.encode(r), topic=INGESTED, offset=n)
         for n, r in enumerate(records)],
    )  # fmt: skip
    facts = [codec.CLINICAL_FACT.decode(r.value) for r in _on(out, FACTS)]
    [merge] = [f for f in facts if f.attribute == MERGE_ATTRIBUTE]
    old_id = next(f.patient_id for f in facts if f.record_id == "r-0")
    new_id = next(f.patient_id for f in facts if f.record_id == "r-1")
    assert old_id != new_id
    assert (merge.patient_id, merge.value) == (new_id, old_id)


@pytest.mark.asyncio
async def test_normalization_publishes_the_identity_outbox_when_it_gets_partitions() -> None:
    settings = NormalizationSettings(enterprise_id_systems=[MPI], database_url=DSN)
    # The identity outbox: what an unmerge left behind, drained by whoever gets partitions.
    outbox, producer = FakeOutbox(pending=1), FakeProducer()
    stage = NormalizationStage(
        settings,
        FakeIdentities(),
        Terminology.load(),
        record_facts=InMemoryRecordFacts(),
        identity_outbox=outbox,
        producer=producer,
    )
    await stage.on_assigned({0})
    assert (outbox.pending, outbox.drained_with) == (0, [producer])
    await _normalization().on_assigned({0})  # none wired: no-op


class _TickingStage(BaseStage):
    stage = "ticking"
    topics = (FACTS,)

    def __init__(self) -> None:
        self.ticks: list[set[int]] = []
        self.produced = 0

    async def process(self, events: Sequence[RawEvent], out: Outbound) -> None:
        return None

    async def on_tick(self, partitions: set[int], out: Outbound) -> None:
        self.ticks.append(partitions)
        out.add(OutboundRecord(FACTS, b"tick"))

    async def on_produced(self) -> None:
        self.produced += 1


class _AssignedConsumer:
    """Where aiokafka's types stop: the loop hands the stage partition numbers."""

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(FACTS, 3)}


@pytest.mark.asyncio
async def test_the_loop_ticks_at_most_every_tick_seconds_and_sends_what_it_raised() -> None:
    handler = _TickingStage()
    settings = IngestionSettings(database_url=DSN)
    loop = BatchLoop(handler, settings, tick_seconds=3600)
    producer = FakeProducer()
    await loop.tick(_AssignedConsumer(), producer)
    await loop.tick(_AssignedConsumer(), producer)  # too soon
    assert handler.ticks == [{3}]
    assert [topic for topic, *_ in producer.sent] == [FACTS]
    assert handler.produced == 1  # the outbox learns its events were acknowledged
    every_call = BatchLoop(handler, settings, tick_seconds=0)
    for _ in range(2):
        await every_call.tick(_AssignedConsumer(), producer)
    assert len(handler.ticks) == 3


@pytest.mark.asyncio
async def test_the_harness_hands_a_stage_only_the_topics_it_consumes() -> None:
    with pytest.raises(ValueError, match=r"ingestion does not consume concord\.facts"):
        await run_batch(_ingestion(), [_record(b"{}", topic=FACTS)])


# --- alerting -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_alerting_stores_and_publishes_a_conflict_once_and_dead_letters_garbage() -> None:
    state = AttributeState("E-100", "Patient.gender", "DEMOGRAPHICS")
    apply_fact(state, _fact())
    other = _fact().provenance.model_copy(update={"source_system": "ehr-beta"})
    apply_fact(
        state, _fact().model_copy(update={"fact_id": "f2", "value": "male", "provenance": other})
    )
    at = datetime(2024, 1, 2, 4, tzinfo=UTC)
    opened = evaluate(state, DEFAULT_POLICY, now=at, trigger_received_time=at)
    assert opened is not None
    store, outbox = FakeAlerts(), FakeOutbox()
    stage = AlertingStage(store, outbox, FakeProducer())
    event = raw(codec.CONFLICT_EVENT.encode(opened), topic=CONFLICTS)
    out = await run_batch(stage, [event, raw(b"not avro", topic=CONFLICTS, offset=1)])

    [alert] = [codec.ALERT.decode(r.value) for r in _on(out, ALERTS)]
    assert (alert.alert_id, alert.status, alert.patient_id) == (opened.conflict_id, "OPEN", "E-100")
    assert [letter.reason_code for letter in _letters(out)] == ["UNDECODABLE_EVENT"]
    assert outbox.acknowledged == 1  # the outbox rows go once the broker acknowledged them
    assert await store.open_counts() == {alert.severity: 1}
    again = await run_batch(stage, [event])  # redelivered: no second alert, no second revision
    assert again.pending == []
    assert len(store.history) == 1
