"""Event time from the record, not the clock (issue 13): which time of a record says when it
became true, per FHIR resource type, HL7 v2 message and claim line, with its basis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from concord.conflicts.rules import as_assertion, supersedes
from concord.events import codec
from concord.events.models import IngestedRecord
from concord.events.raw import RawEvent
from concord.ingestion.fhir import ingest_fhir
from concord.ingestion.record_time import (
    ARRIVAL,
    BUNDLE_LAST_UPDATED,
    BUNDLE_TIMESTAMP,
    ENTRY_LAST_MODIFIED,
    META_LAST_UPDATED,
    RecordTime,
    bundle_record_time,
    claim_record_time,
    fhir_moment,
    fhir_record_time,
    resource_time,
)
from concord.normalization.facts.drafts import EVENT_TIME_IS_ARRIVAL, to_fact
from concord.normalization.facts.withdrawals import remembered, withdrawal_facts
from concord.normalization.records import read_record
from concord.normalization.terminology import Terminology

ARRIVED = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
MPI = "urn:concord:enterprise-patient-id"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
TERMINOLOGY = Terminology.load()


def _utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def _own(resource_type: str, **elements: Any) -> RecordTime | None:
    return resource_time({"resourceType": resource_type, **elements})


# --- FHIR date values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "moment"),
    [
        ("2024", _utc(2024, 1, 1)),
        ("2024-03", _utc(2024, 3, 1)),
        ("2024-03-05", _utc(2024, 3, 5)),
        ("2024-03-05T10:20:30Z", _utc(2024, 3, 5, 10, 20, 30)),
        ("2024-03-05T10:20:30.25-05:00", _utc(2024, 3, 5, 15, 20, 30, 250000)),
    ],
)
def test_a_partial_date_is_the_start_of_its_period_in_utc(value: str, moment: datetime) -> None:
    parsed = fhir_moment(value)
    assert parsed == moment
    assert parsed is not None and parsed.tzinfo is not None


@pytest.mark.parametrize(
    "value",
    [
        "2024-03-05T10:20:30",  # a time of day without a zone: invalid FHIR, not guessed
        "2024-03-05T10:20",
        "2024-02-30",  # no calendar date
        "0000",
        "20240305",  # ISO basic format is not FHIR
        "2024-3-5",
        "",
        None,
        20240305,
        # Valid on its face, but not an instant Python (nor Avro's timestamp) can hold in UTC.
        "9999-12-31T23:59:59-14:00",
        "0001-01-01T00:00:00+14:00",
    ],
)
def test_an_unusable_value_gives_no_time(value: object) -> None:
    assert fhir_moment(value) is None


def test_a_claim_time_past_year_9999_in_utc_is_no_time() -> None:
    line = {"submitted_at": "9999-12-31T23:59:59-14:00"}
    assert claim_record_time(line) is None


def test_a_time_without_a_zone_is_skipped_for_the_next_candidate() -> None:
    found = _own("Observation", issued="2024-03-05T10:20:30", effectiveDateTime="2024-03-04")
    assert found == RecordTime(_utc(2024, 3, 4), "Observation.effectiveDateTime")


# --- each resource type's rule ------------------------------------------------------------------


def test_a_patient_has_no_time_of_its_own() -> None:
    assert _own("Patient", birthDate="1970-01-01", deceasedDateTime="2024-01-01") is None


def test_a_condition_is_as_of_its_recorded_date() -> None:
    found = _own("Condition", recordedDate="2024-02-01T09:00:00Z", onsetDateTime="2023-12")
    assert found == RecordTime(_utc(2024, 2, 1, 9), "Condition.recordedDate")


def test_a_condition_abated_after_it_was_recorded_is_as_of_its_abatement() -> None:
    found = _own(
        "Condition",
        recordedDate="2024-02-01T09:00:00Z",
        onsetDateTime="2023-12",
        abatementDateTime="2024-05-10",
    )
    assert found == RecordTime(_utc(2024, 5, 10), "Condition.abatementDateTime")


def test_a_condition_without_a_recorded_date_takes_its_latest_onset_or_abatement() -> None:
    assert _own("Condition", onsetPeriod={"start": "2020", "end": "2021-06"}) == RecordTime(
        _utc(2021, 6, 1), "Condition.onsetPeriod.end"
    )
    assert _own(
        "Condition", onsetDateTime="2020", abatementPeriod={"start": "2022-01-01"}
    ) == RecordTime(_utc(2022, 1, 1), "Condition.abatementPeriod.start")
    assert _own("Condition", onsetString="childhood", abatementBoolean=True) is None


def test_an_allergy_is_as_of_the_latest_of_its_recorded_date_and_last_occurrence() -> None:
    assert _own("AllergyIntolerance", recordedDate="2023-01-01") == RecordTime(
        _utc(2023, 1, 1), "AllergyIntolerance.recordedDate"
    )
    found = _own(
        "AllergyIntolerance", recordedDate="2023-01-01", lastOccurrence="2024-07-02T08:00:00Z"
    )
    assert found == RecordTime(_utc(2024, 7, 2, 8), "AllergyIntolerance.lastOccurrence")


def test_a_medication_request_is_as_of_when_it_was_authored() -> None:
    assert _own("MedicationRequest", authoredOn="2024-04-04T04:04:04+02:00") == RecordTime(
        _utc(2024, 4, 4, 2, 4, 4), "MedicationRequest.authoredOn"
    )
    assert _own("MedicationRequest", dosageInstruction=[{"text": "daily"}]) is None


def test_a_medication_statement_is_as_of_its_assertion_or_a_later_effective_time() -> None:
    assert _own(
        "MedicationStatement", dateAsserted="2024-01-10", effectiveDateTime="2024-01-01"
    ) == RecordTime(_utc(2024, 1, 10), "MedicationStatement.dateAsserted")
    stopped = _own(
        "MedicationStatement",
        dateAsserted="2024-01-10",
        effectivePeriod={"start": "2024-01-01", "end": "2024-03-01"},
    )
    assert stopped == RecordTime(_utc(2024, 3, 1), "MedicationStatement.effectivePeriod.end")


def test_an_observation_is_as_of_when_it_was_issued_before_its_effective_time() -> None:
    found = _own(
        "Observation",
        issued="2024-03-01T10:00:00Z",
        effectiveDateTime="2024-03-01T07:30:00-05:00",  # 12:30 UTC: later, but issued decides
    )
    assert found == RecordTime(_utc(2024, 3, 1, 10), "Observation.issued")


def test_an_observation_without_issued_is_as_of_its_effective_time() -> None:
    assert _own("Observation", effectiveInstant="2024-03-01T07:30:00Z") == RecordTime(
        _utc(2024, 3, 1, 7, 30), "Observation.effectiveInstant"
    )
    assert _own(
        "Observation", effectivePeriod={"start": "2024-03-01", "end": "2024-03-02"}
    ) == RecordTime(_utc(2024, 3, 2), "Observation.effectivePeriod.end")


def test_a_diagnostic_report_is_as_of_when_it_was_issued_else_its_effective_time() -> None:
    assert _own(
        "DiagnosticReport", issued="2024-03-02T00:00:00Z", effectiveDateTime="2024-03-01"
    ) == RecordTime(_utc(2024, 3, 2), "DiagnosticReport.issued")
    assert _own("DiagnosticReport", effectiveDateTime="2024-03-01") == RecordTime(
        _utc(2024, 3, 1), "DiagnosticReport.effectiveDateTime"
    )


def test_a_procedure_is_as_of_when_it_was_performed() -> None:
    assert _own("Procedure", performedDateTime="2024-05") == RecordTime(
        _utc(2024, 5, 1), "Procedure.performedDateTime"
    )
    assert _own(
        "Procedure",
        performedPeriod={"start": "2024-05-01T08:00:00Z", "end": "2024-05-01T09:30:00Z"},
    ) == RecordTime(_utc(2024, 5, 1, 9, 30), "Procedure.performedPeriod.end")


def test_an_immunization_is_as_of_the_latest_of_recorded_and_occurrence() -> None:
    assert _own(
        "Immunization", occurrenceDateTime="2024-10-01", recorded="2024-10-03"
    ) == RecordTime(_utc(2024, 10, 3), "Immunization.recorded")
    assert _own("Immunization", occurrenceString="autumn") is None


def test_an_encounter_is_as_of_the_end_of_its_period_else_its_start() -> None:
    assert _own("Encounter", period={"start": "2024-01-01T08:00:00Z"}) == RecordTime(
        _utc(2024, 1, 1, 8), "Encounter.period.start"
    )
    assert _own(
        "Encounter", period={"start": "2024-01-01T08:00:00Z", "end": "2024-01-03T10:00:00Z"}
    ) == RecordTime(_utc(2024, 1, 3, 10), "Encounter.period.end")


def test_a_document_reference_is_as_of_its_date_before_its_context_period() -> None:
    assert _own(
        "DocumentReference",
        date="2024-02-02T02:02:02Z",
        context={"period": {"end": "2024-02-05"}},
    ) == RecordTime(_utc(2024, 2, 2, 2, 2, 2), "DocumentReference.date")
    assert _own("DocumentReference", context={"period": {"end": "2024-02-05"}}) == RecordTime(
        _utc(2024, 2, 5), "DocumentReference.context.period.end"
    )


@pytest.mark.parametrize("resource_type", ["Claim", "ExplanationOfBenefit"])
def test_a_claim_is_as_of_when_it_was_created_before_its_billable_period(
    resource_type: str,
) -> None:
    billable = {"start": "2024-01-01", "end": "2024-01-02"}
    assert _own(resource_type, created="2024-01-20", billablePeriod=billable) == RecordTime(
        _utc(2024, 1, 20), f"{resource_type}.created"
    )
    assert _own(resource_type, billablePeriod=billable) == RecordTime(
        _utc(2024, 1, 2), f"{resource_type}.billablePeriod.end"
    )


def test_other_types_are_as_of_the_latest_of_the_common_record_stamps() -> None:
    assert _own("CarePlan", created="2024-01-01", period={"end": "2030-01-01"}) == RecordTime(
        _utc(2024, 1, 1), "CarePlan.created"
    )
    assert _own("Composition", date="2024-06-01T00:00:00Z") == RecordTime(
        _utc(2024, 6, 1), "Composition.date"
    )
    assert _own("Organization", name="General Hospital") is None


def test_a_time_more_than_a_day_after_arrival_is_skipped() -> None:
    condition = {
        "resourceType": "Condition",
        "recordedDate": "2025-05-01",
        "abatementDateTime": "2099-01-01",  # a typo must not make the record unbeatable
    }
    found = fhir_record_time(condition, arrival=ARRIVED)
    assert found == RecordTime(_utc(2025, 5, 1), "Condition.recordedDate")
    # a clock a few hours ahead is still believed
    condition["abatementDateTime"] = "2025-06-01T20:00:00Z"
    found = fhir_record_time(condition, arrival=ARRIVED)
    assert found == RecordTime(_utc(2025, 6, 1, 20), "Condition.abatementDateTime")


# --- the order across the record, its Bundle entry and its Bundle -------------------------------


CONDITION = {"resourceType": "Condition", "recordedDate": "2024-02-01"}
STAMPED = {**CONDITION, "meta": {"lastUpdated": "2024-09-09T09:09:09+00:00"}}
BUNDLE = RecordTime(_utc(2025, 1, 1), BUNDLE_TIMESTAMP)


def test_last_updated_comes_first() -> None:
    found = fhir_record_time(
        STAMPED, arrival=ARRIVED, last_modified=_utc(2024, 10, 10), bundle=BUNDLE
    )
    assert found == RecordTime(_utc(2024, 9, 9, 9, 9, 9), META_LAST_UPDATED)


def test_the_entry_last_modified_comes_before_the_resources_own_times() -> None:
    found = fhir_record_time(
        CONDITION, arrival=ARRIVED, last_modified=_utc(2024, 10, 10), bundle=BUNDLE
    )
    assert found == RecordTime(_utc(2024, 10, 10), ENTRY_LAST_MODIFIED)


def test_the_resources_own_times_come_before_the_bundle_timestamp() -> None:
    found = fhir_record_time(CONDITION, arrival=ARRIVED, bundle=BUNDLE)
    assert found == RecordTime(_utc(2024, 2, 1), "Condition.recordedDate")
    patient = {"resourceType": "Patient"}
    assert fhir_record_time(patient, arrival=ARRIVED, bundle=BUNDLE) == BUNDLE
    assert fhir_record_time(patient, arrival=ARRIVED) == RecordTime(ARRIVED, ARRIVAL)


def test_a_delete_is_not_as_of_the_times_of_what_it_deletes() -> None:
    assert fhir_record_time(CONDITION, arrival=ARRIVED, deleted=True) == RecordTime(
        ARRIVED, ARRIVAL
    )
    assert fhir_record_time(CONDITION, arrival=ARRIVED, bundle=BUNDLE, deleted=True) == BUNDLE


def test_the_bundle_time_is_its_timestamp_else_its_last_updated() -> None:
    assert bundle_record_time({"timestamp": "2025-01-01T00:00:00Z"}) == BUNDLE
    assert bundle_record_time({"meta": {"lastUpdated": "2025-02-01T00:00:00Z"}}) == RecordTime(
        _utc(2025, 2, 1), BUNDLE_LAST_UPDATED
    )
    assert bundle_record_time({"timestamp": "2025-01-01T00:00:00"}) is None


def test_a_claim_line_is_as_of_its_adjudication_else_its_submission() -> None:
    line = {
        "service_date_from": "2026-09-14",
        "submitted_at": "2026-09-15T08:12:44-04:00",
        "adjudicated_at": "2026-09-22T16:05:10-04:00",
    }
    assert claim_record_time(line) == RecordTime(
        _utc(2026, 9, 22, 20, 5, 10), "claim.adjudicated_at"
    )
    del line["adjudicated_at"]
    assert claim_record_time(line) == RecordTime(
        _utc(2026, 9, 15, 12, 12, 44), "claim.submitted_at"
    )


# --- through ingestion and normalization --------------------------------------------------------


def _raw(document: Any, received: datetime, source: bytes = b"ehr-alpha") -> RawEvent:
    return RawEvent(
        topic="ehr.raw.fhir",
        partition=0,
        offset=1,
        key=None,
        value=orjson.dumps(document),
        headers=(("source", source),),
        received_time=received,
    )


def _ingested(document: Any, received: datetime, source: bytes = b"ehr-alpha") -> IngestedRecord:
    outcome = ingest_fhir(_raw(document, received, source), max_payload_bytes=1_000_000)
    assert isinstance(outcome, list), outcome
    [record] = outcome
    return record


def _condition(status: str = "active", **times: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": ICD10, "code": "C50.911"}]},
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": status}]},
        **times,
    }


def test_two_copies_published_at_different_times_get_the_same_event_time_and_basis() -> None:
    """A bulk export without meta.lastUpdated, mirrored by two EHRs a week apart: the second
    EHR wraps it in a Bundle stamped when it published."""
    condition = _condition(recordedDate="2023-11-05T14:00:00-05:00")
    first = _ingested(condition, ARRIVED, b"ehr-alpha")
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": "2025-06-08T00:00:00Z",
        "entry": [{"resource": condition}],
    }
    second = _ingested(bundle, ARRIVED + timedelta(days=7), b"ehr-beta")
    for record in (first, second):
        assert record.provenance.event_time == _utc(2023, 11, 5, 19)
        assert record.provenance.event_time_basis == "Condition.recordedDate"
    assert first.provenance.received_time != second.provenance.received_time


def test_the_zone_of_the_records_own_time_is_kept_as_an_instant() -> None:
    record = _ingested(_condition(recordedDate="2023-11-05T14:00:00-05:00"), ARRIVED)
    assert record.provenance.event_time.utcoffset() == timedelta(hours=-5)
    assert record.provenance.event_time == datetime(
        2023, 11, 5, 14, tzinfo=timezone(timedelta(hours=-5))
    )


def test_a_resource_without_any_time_is_as_of_its_arrival_and_its_facts_say_so() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": MPI, "value": "E-1"}],
        "name": [{"family": "Doe", "given": ["Jo"]}],
        "gender": "female",
        "birthDate": "1970-01-01",
    }
    record = _ingested(patient, ARRIVED)
    assert record.provenance.event_time == ARRIVED
    assert record.provenance.event_time_basis == ARRIVAL
    facts = _facts(record)
    assert facts
    assert all(EVENT_TIME_IS_ARRIVAL in fact.flags for fact in facts)
    assert all(fact.provenance.event_time_basis == ARRIVAL for fact in facts)


def test_facts_of_a_record_with_its_own_time_are_not_flagged() -> None:
    record = _ingested(_condition(recordedDate="2024-01-01"), ARRIVED)
    facts = _facts(record)
    assert facts
    assert not any(EVENT_TIME_IS_ARRIVAL in fact.flags for fact in facts)


def test_a_newer_abatement_supersedes_the_older_active_version_whatever_the_order() -> None:
    """Version 2 (resolved in May) reaches Concord before version 1 (active, recorded in
    February): its event time is still the later one, so it stands."""
    active = _ingested(_condition(recordedDate="2024-02-01"), ARRIVED + timedelta(hours=1))
    resolved = _ingested(
        _condition("resolved", recordedDate="2024-02-01", abatementDateTime="2024-05-10"),
        ARRIVED,
    )
    assert resolved.provenance.event_time > active.provenance.event_time
    assert resolved.provenance.event_time_basis == "Condition.abatementDateTime"

    [old] = [f for f in _facts(active) if f.attribute.startswith("Condition/")]
    [new] = [f for f in _facts(resolved) if f.attribute == old.attribute]
    assert supersedes(new, as_assertion(old))
    assert not supersedes(old, as_assertion(new))


def test_a_bare_delete_is_as_of_its_arrival_and_its_withdrawals_say_so() -> None:
    upsert = _ingested(_condition(recordedDate="2024-01-01"), ARRIVED)
    history = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [{"request": {"method": "DELETE", "url": "Condition/c1"}}],
    }
    delete = _ingested(history, ARRIVED + timedelta(days=1))
    assert delete.operation == "DELETE"
    assert delete.provenance.event_time_basis == ARRIVAL
    assert delete.provenance.event_time > upsert.provenance.event_time
    memory = remembered(upsert, _facts(upsert))
    assert memory is not None
    withdrawn = withdrawal_facts(delete, [memory])
    assert withdrawn
    assert all(f.status == "DELETED" and EVENT_TIME_IS_ARRIVAL in f.flags for f in withdrawn)


def test_the_basis_travels_on_the_wire() -> None:
    record = _ingested(_condition(recordedDate="2024-01-01"), ARRIVED)
    decoded = codec.INGESTED_RECORD.decode(codec.INGESTED_RECORD.encode(record))
    assert decoded.provenance.event_time_basis == "Condition.recordedDate"
    [fact] = [f for f in _facts(record) if f.attribute.startswith("Condition/")]
    decoded_fact = codec.CLINICAL_FACT.decode(codec.CLINICAL_FACT.encode(fact))
    assert decoded_fact.provenance.event_time_basis == "Condition.recordedDate"


def _facts(record: IngestedRecord) -> list[Any]:
    read = read_record(record, TERMINOLOGY, [MPI])
    assert read is not None
    return [to_fact(draft, patient_id="E-1", record=record) for draft in read.drafts]
