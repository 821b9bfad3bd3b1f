"""Comparisons per attribute class, pure: what counts as a disagreement, and what does not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from builders import assertion_at
from concord.conflicts.compare import disagree, participants
from concord.conflicts.policy import AttributeRule, ClassRule, SourcePolicy, Tolerance
from concord.conflicts.rules import AttributeState, evaluate
from concord.events.models import Assertion, FactStatus

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
STATUS = ClassRule(compare="status")
LAB = ClassRule(
    compare="numeric",
    tolerance=Tolerance(relative=0.05),
    specimen_window=timedelta(hours=1),
)


def _said(
    source: str,
    value: str | None,
    status: FactStatus = "ASSERTED",
    *,
    unit: str | None = None,
    minutes: float = 0,
    fact_id: str | None = None,
) -> Assertion:
    return assertion_at(
        source,
        value,
        T0 + timedelta(minutes=minutes),
        fact_id=fact_id or f"{source}-{value}-{status}-{minutes}",
        status=status,
        unit=unit,
    )


def _disagree(rule: ClassRule, *assertions: Assertion) -> bool:
    return disagree(participants(assertions, rule), rule)


@pytest.mark.parametrize(
    ("other", "status"),
    [
        ("active", "REFUTED"),
        ("active", "ENTERED_IN_ERROR"),
        (None, "DELETED"),
        ("resolved", "ASSERTED"),
        ("stopped", "ASSERTED"),
        ("inactive", "ASSERTED"),
    ],
)
def test_active_against_refuted_withdrawn_or_inactive_disagrees(
    other: str | None, status: FactStatus
) -> None:
    assert _disagree(STATUS, _said("ehr", "active"), _said("clinic", other, status))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("active", "ASSERTED"), ("recurrence", "ASSERTED")),  # both active
        (("resolved", "ASSERTED"), ("inactive", "REFUTED")),  # neither active
        (("active", "ASSERTED"), ("completed", "ASSERTED")),  # given, says nothing of now
        (("active", "ASSERTED"), ("unknown", "ASSERTED")),
    ],
)
def test_statuses_that_do_not_disagree(
    a: tuple[str, FactStatus], b: tuple[str, FactStatus]
) -> None:
    assert not _disagree(STATUS, _said("ehr", a[0], a[1]), _said("clinic", b[0], b[1]))


def test_concords_own_tombstones_take_no_part() -> None:
    merge_tombstone = _said("clinic", None, "DELETED", fact_id="merged:abc")
    assert participants([merge_tombstone], STATUS) == []
    assert not _disagree(STATUS, _said("ehr", "active"), merge_tombstone)


def test_results_within_tolerance_agree_and_beyond_it_disagree() -> None:
    glucose = _said("lab", "5.5", unit="mmol/L")
    assert not _disagree(LAB, glucose, _said("ehr", "5.7", unit="mmol/L"))  # 3.5% apart
    assert _disagree(LAB, glucose, _said("ehr", "6.0", unit="mmol/L"))  # 8.3% apart


def test_an_absolute_tolerance_wins_where_it_is_the_larger_bound() -> None:
    rule = ClassRule(compare="numeric", tolerance=Tolerance(absolute=0.5, relative=0.01))
    assert not _disagree(rule, _said("a", "1.0"), _said("b", "1.4"))
    assert _disagree(rule, _said("a", "1.0"), _said("b", "1.6"))


def test_results_of_different_specimens_are_not_compared() -> None:
    morning = _said("lab", "5.5", unit="mmol/L")
    evening = _said("ehr", "9.0", unit="mmol/L", minutes=600)
    assert not _disagree(LAB, morning, evening)
    same_draw = _said("ehr", "9.0", unit="mmol/L", minutes=20)
    assert _disagree(LAB, morning, same_draw)


def test_a_result_without_a_time_is_not_taken_for_the_same_specimen() -> None:
    timeless = _said("ehr", "9.0", unit="mmol/L").model_copy(update={"effective_time": None})
    assert not _disagree(LAB, _said("lab", "5.5", unit="mmol/L"), timeless)


def test_values_in_units_normalization_could_not_reconcile_are_not_compared() -> None:
    assert not _disagree(
        LAB, _said("lab", "5.5", unit="mmol/L"), _said("ehr", "99", unit="[arb'U]")
    )


def test_coded_results_compare_exactly() -> None:
    positive = _said("lab", "http://snomed.info/sct|10828004")
    negative = _said("ehr", "http://snomed.info/sct|260385009")
    assert _disagree(LAB, positive, negative)
    assert not _disagree(LAB, positive, _said("ehr", "http://snomed.info/sct|10828004"))


def test_an_allergy_refuted_by_the_better_ranked_source_is_proposed_as_refuted() -> None:
    policy = SourcePolicy(
        version="p",
        classes={"ALLERGY": ClassRule(compare="status", source_rank=("allergy-clinic",))},
    )
    state = AttributeState("E1", "AllergyIntolerance/7980", "ALLERGY")
    state.assertions["ehr"] = _said("ehr", "active")
    state.assertions["allergy-clinic"] = _said("allergy-clinic", "active", "REFUTED")
    event = evaluate(state, policy, now=T0, trigger_received_time=T0)
    assert event is not None and event.kind == "OPENED"
    assert event.proposed_value == "refuted"
    assert event.proposed_reason is not None and "allergy-clinic" in event.proposed_reason
    # The refuting source is withdrawn again: nobody disagrees with the active allergy.
    del state.assertions["allergy-clinic"]
    resolved = evaluate(state, policy, now=T0, trigger_received_time=T0)
    assert resolved is not None and resolved.kind == "RESOLVED"


def test_a_corrected_result_within_tolerance_resolves_the_conflict() -> None:
    policy = SourcePolicy(version="p", classes={"LABORATORY": LAB})
    state = AttributeState("E1", "Observation/2345-7", "LABORATORY")
    state.assertions["lab"] = _said("lab", "5.5", unit="mmol/L")
    state.assertions["ehr"] = _said("ehr", "7.0", unit="mmol/L", minutes=5)
    opened = evaluate(state, policy, now=T0, trigger_received_time=T0)
    assert opened is not None and opened.kind == "OPENED"
    assert opened.severity == "MEDIUM"
    state.assertions["ehr"] = _said("ehr", "5.6", unit="mmol/L", minutes=5)  # corrected
    resolved = evaluate(state, policy, now=T0, trigger_received_time=T0)
    assert resolved is not None and resolved.kind == "RESOLVED"


def test_a_dose_compares_as_a_number_where_the_medication_compares_by_status() -> None:
    policy = SourcePolicy(
        version="p",
        classes={"MEDICATION": ClassRule(compare="status")},
        attributes={
            "Medication/*/dose": AttributeRule(compare="numeric", tolerance=Tolerance(absolute=0))
        },
    )
    dose = policy.rule("Medication/1191/dose", "MEDICATION")
    status = policy.rule("Medication/1191", "MEDICATION")
    assert dose is not None and status is not None
    assert (dose.compare, status.compare) == ("numeric", "status")
    assert _disagree(dose, _said("ehr", "500", unit="mg"), _said("pharmacy", "1000", unit="mg"))
    assert not _disagree(dose, _said("ehr", "500", unit="mg"), _said("pharmacy", "500", unit="mg"))
    assert policy.rule("Observation/2345-7", "LABORATORY") is None  # not compared
