"""An alert's line, pure: one line a reviewer reads as one disagreement, every source's value
shown once with the sources asserting it, the odd one out marked; provenance in the JSON."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from concord.alerting.render import alert_json, alert_line, sides
from concord.conflicts.compare import MERGE_TOMBSTONE_PREFIX
from concord.events.models import Alert, Assertion, FactStatus, Provenance

T0 = datetime(2026, 11, 11, 8, 0, tzinfo=UTC)
HOSPITAL, CLINIC, LAB = "hospital-ehr", "clinic-ehr", "lab-system"


def _said(
    source: str,
    value: str | None,
    *,
    display: str | None = None,
    status: FactStatus = "ASSERTED",
    unit: str | None = None,
    fact_id: str | None = None,
) -> Assertion:
    return Assertion(
        source_system=source,
        value=value,
        display=display,
        status=status,
        unit=unit,
        fact_id=fact_id or f"fact-{source}",
        provenance=Provenance(
            source_system=source,
            source_record_id=f"Patient/{source}-record",
            source_record_version="1",
            event_time=T0 - timedelta(days=1),
            received_time=T0,
            raw_topic="ehr.raw.fhir",
            raw_partition=0,
            raw_offset=7,
            payload_sha256="00" * 32,
        ),
    )


def _alert(*assertions: Assertion, **overrides: Any) -> Alert:
    fields: dict[str, Any] = {
        "alert_id": "392879aca18c" + "0" * 20,
        "revision": 1,
        "kind": "CONFLICT",
        "status": "OPEN",
        "patient_id": "EP-000604",
        "attribute": "Patient.birthDate",
        "attribute_class": "DEMOGRAPHICS",
        "severity": "CRITICAL",
        # As conflict events carry them: every source's assertion, sorted by source.
        "assertions": tuple(sorted(assertions, key=lambda a: a.source_system)),
        "proposed_value": None,
        "proposed_reason": None,
        "opened_at": T0,
        "updated_at": T0,
    }
    fields.update(overrides)
    return Alert(**fields)


def _the_demos_one_of_three() -> Alert:
    return _alert(
        _said(HOSPITAL, "1961-05-20"),
        _said(CLINIC, "1961-05-20"),
        _said(LAB, "1961-05-02"),
        proposed_value="1961-05-20",
        proposed_reason="hospital-ehr ranks highest among the disagreeing sources",
    )


def test_sources_that_agree_read_as_one_side_and_the_lone_one_is_the_odd_one_out() -> None:
    line = alert_line(_the_demos_one_of_three())
    assert line == (
        "08:00:00 OPEN     CRITICAL EP-000604 Patient.birthDate: "
        "1961-05-20 (clinic-ehr, hospital-ehr) vs 1961-05-02 (lab-system, odd one out); "
        "proposed 1961-05-20 (hospital-ehr ranks highest among the disagreeing sources)  "
        "[392879aca18c r1]"
    )
    # No two equal values side by side: each value is said once, then once as the proposal.
    assert line.count("1961-05-20") == 2
    assert "clinic-ehr=" not in line


def test_the_side_most_sources_take_comes_first_whatever_the_source_order() -> None:
    alert = _alert(
        _said(CLINIC, "1961-05-02"), _said(HOSPITAL, "1961-05-20"), _said(LAB, "1961-05-20")
    )
    assert [(s.labels, s.sources, s.note) for s in sides(alert)] == [
        (["1961-05-20"], [HOSPITAL, LAB], None),
        (["1961-05-02"], [CLINIC], "odd one out"),
    ]


def test_two_sources_that_disagree_have_no_odd_one_out() -> None:
    line = alert_line(_alert(_said(HOSPITAL, "1988-05-14"), _said(LAB, "1988-05-15")))
    assert "1988-05-14 (hospital-ehr) vs 1988-05-15 (lab-system)" in line
    assert "odd one out" not in line


def test_a_three_way_split_has_no_odd_one_out() -> None:
    line = alert_line(
        _alert(_said(HOSPITAL, "1975-02-14"), _said(CLINIC, "1975-04-12"), _said(LAB, "1957-02-14"))
    )
    assert "1975-04-12 (clinic-ehr) vs 1975-02-14 (hospital-ehr) vs 1957-02-14 (lab-system)" in line
    assert "odd one out" not in line


def test_names_group_by_the_compared_value_and_show_every_spelling_and_the_proposal() -> None:
    """Patient.name compares a case-folded key; the line shows what the sources sent."""
    alert = _alert(
        _said(HOSPITAL, "snickersby|ada", display="Ada Snickersby"),
        _said(CLINIC, "snickersby|ada", display="Ada SNICKERSBY"),
        _said(LAB, "snickersbee|ada", display="Ada Snickersbee"),
        attribute="Patient.name",
        proposed_value="snickersby|ada",
        proposed_reason="hospital-ehr ranks highest among the disagreeing sources",
    )
    line = alert_line(alert)
    assert (
        "Ada SNICKERSBY / Ada Snickersby (clinic-ehr, hospital-ehr) vs "
        "Ada Snickersbee (lab-system, odd one out); proposed Ada SNICKERSBY / Ada Snickersby ("
    ) in line
    assert "snickersby|ada" not in line


def test_a_resolved_alert_shows_the_agreement_and_why() -> None:
    alert = _alert(
        _said(HOSPITAL, "1988-05-14"),
        _said(LAB, "1988-05-14"),
        status="RESOLVED",
        revision=2,
        proposed_reason="the sources agree",
    )
    line = alert_line(alert)
    assert "RESOLVED" in line
    assert "Patient.birthDate: 1988-05-14 (hospital-ehr, lab-system); the sources agree  [" in line
    assert line.endswith("r2]")


def test_a_reviewers_decision_reads_as_decided_not_proposed() -> None:
    alert = _the_demos_one_of_three().model_copy(
        update={
            "status": "RESOLVED",
            "proposed_value": "1961-05-02",
            "proposed_reason": "resolved by reviewer ana: chose_value",
        }
    )
    line = alert_line(alert)
    assert "; decided 1961-05-02 (resolved by reviewer ana: chose_value)" in line
    assert "proposed" not in line


def test_withdrawn_and_merged_away_assertions_read_as_what_they_are() -> None:
    alert = _alert(
        _said("payer", None, status="DELETED", fact_id=MERGE_TOMBSTONE_PREFIX + "ab"),
        _said(HOSPITAL, "active"),
        _said(CLINIC, "active", status="REFUTED"),
        _said(LAB, "active"),
        attribute="AllergyIntolerance/http://snomed.info/sct|91936005",
        attribute_class="ALLERGY",
    )
    line = alert_line(alert)
    # What a merge moved away says nothing of this patient: it makes no third side.
    assert (
        "active (hospital-ehr, lab-system) vs refuted (clinic-ehr, odd one out) vs "
        "moved by a merge (payer)"
    ) in line


def test_no_odd_one_out_when_the_rest_do_not_agree_either() -> None:
    alert = _alert(
        _said(HOSPITAL, "1975-02-14"),
        _said(CLINIC, "1975-02-14"),
        _said(LAB, "1957-02-14"),
        _said("payer", "1975-04-12"),
    )
    line = alert_line(alert)
    assert "1975-02-14 (clinic-ehr, hospital-ehr) vs 1957-02-14 (lab-system) vs " in line
    assert "odd one out" not in line


def test_values_show_their_unit_and_differ_by_it() -> None:
    alert = _alert(
        _said(HOSPITAL, "5.1", unit="mmol/L"),
        _said(CLINIC, "5.1", unit="mg/dL"),
        _said(LAB, "5.1", unit="mmol/L"),
        attribute="Observation/http://loinc.org|2345-7",
        attribute_class="LABORATORY",
    )
    assert "5.1 mmol/L (hospital-ehr, lab-system) vs 5.1 mg/dL (clinic-ehr, odd one out)" in (
        alert_line(alert)
    )


def test_a_stale_record_names_its_source_and_marks_no_odd_one_out() -> None:
    alert = _the_demos_one_of_three().model_copy(
        update={"kind": "STALE", "stale_source": LAB, "proposed_reason": "lab-system is old"}
    )
    line = alert_line(alert)
    assert "Patient.birthDate (stale at lab-system): 1961-05-20 (clinic-ehr, hospital-ehr)" in line
    assert "odd one out" not in line


def test_the_line_is_one_line_whatever_the_sources_send() -> None:
    alert = _alert(
        _said(HOSPITAL, "x", display="Ana\n12:00:00 RESOLVED LOW E-9 forged"),
        _said("b\r\nc", "y"),
        _said(LAB, "z"),
        proposed_value="q\nr",
        proposed_reason="why\rnot",
    )
    line = alert_line(alert)
    assert line.splitlines() == [line]


def test_only_the_control_characters_a_source_sent_are_escaped() -> None:
    alert = _alert(
        _said(HOSPITAL, "x", display="José Núñez\tJr."),
        _said(LAB, "y", display="José Núñez"),
        attribute="Patient.name",
    )
    line = alert_line(alert)
    assert "José Núñez\\tJr. (hospital-ehr) vs José Núñez (lab-system)" in line


def test_the_line_leaves_provenance_to_the_json() -> None:
    alert = _the_demos_one_of_three()
    assert "Patient/" not in alert_line(alert)
    shown = alert_json(alert)
    assert [(a["source"], a["value"], a["source_record_id"]) for a in shown["assertions"]] == [
        (CLINIC, "1961-05-20", "Patient/clinic-ehr-record"),
        (HOSPITAL, "1961-05-20", "Patient/hospital-ehr-record"),
        (LAB, "1961-05-02", "Patient/lab-system-record"),
    ]
    assert shown["proposed_reason"] == "hospital-ehr ranks highest among the disagreeing sources"
