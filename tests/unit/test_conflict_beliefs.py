"""A source's belief from several records (issue 13, item 2), pure: two EHRs holding the same
records of one concept, received in any order and under their own ids, agree."""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from concord.conflicts.beliefs import believed, record_key
from concord.conflicts.policy import parse_policy
from concord.conflicts.rules import AttributeState, apply_fact, as_assertion, evaluate
from concord.events.models import AttributeClass, ClinicalFact, ConflictEvent, Provenance

T0 = datetime(2020, 1, 1, tzinfo=UTC)
# The built-in policy without its holds, so that one evaluation shows what is raised.
UNHELD = parse_policy(
    resources.files("concord.conflicts")
    .joinpath("default_policy.yaml")
    .read_text()
    .replace("suppress_for: PT10S", "suppress_for: PT0S")
)
NOW = datetime(2026, 6, 1, tzinfo=UTC)
ASTHMA = "Condition/J45.909"
METFORMIN = "Medication/6809"


def _fact(
    source: str,
    record: str,
    value: str,
    *,
    days: int,
    attribute: str = ASTHMA,
    attribute_class: AttributeClass = "CONDITION",
    status: str = "ASSERTED",
    version: int = 1,
    topic: str = "ehr.raw.fhir",
) -> ClinicalFact:
    identity = f"{source}/{record}/{version}/{attribute}"
    return ClinicalFact(
        fact_id=hashlib.sha256(identity.encode()).hexdigest()[:32],
        patient_id="E-1",
        attribute=attribute,
        attribute_class=attribute_class,
        value=value,
        status=status,  # type: ignore[arg-type]
        provenance=Provenance(
            source_system=source,
            source_record_id=record,
            source_record_version=str(version),
            event_time=T0 + timedelta(days=days),
            received_time=NOW,
            raw_topic=topic,
            raw_partition=0,
            raw_offset=0,
            payload_sha256="00" * 32,
        ),
    )


def _episodes(source: str, ids: tuple[str, str, str]) -> list[ClinicalFact]:
    """Asthma as a synthetic population writes it: resolved twice, then active again."""
    return [
        _fact(source, f"Condition/{ids[0]}", "resolved", days=0),
        _fact(source, f"Condition/{ids[1]}", "active", days=400),
        _fact(source, f"Condition/{ids[2]}", "resolved", days=200),
    ]


def _run(
    facts: list[ClinicalFact],
    attribute: str = ASTHMA,
    attribute_class: AttributeClass = "CONDITION",
) -> tuple[AttributeState, list[ConflictEvent]]:
    state = AttributeState("E-1", attribute, attribute_class)
    events = []
    for fact in facts:
        if apply_fact(state, fact):
            event = evaluate(state, UNHELD, now=NOW, trigger_received_time=NOW)
            if event is not None:
                events.append(event)
    return state, events


def _batch(
    facts: list[ClinicalFact],
    attribute: str = ASTHMA,
    attribute_class: AttributeClass = "CONDITION",
) -> tuple[AttributeState, ConflictEvent | None]:
    """All the facts applied, then the state compared once, as a batch of the stage does."""
    state = AttributeState("E-1", attribute, attribute_class)
    for fact in facts:
        apply_fact(state, fact)
    return state, evaluate(state, UNHELD, now=NOW, trigger_received_time=NOW)


def test_two_ehrs_holding_the_same_episodes_in_any_order_raise_nothing() -> None:
    """The report: a recurring condition held as resolved and active episodes; whichever
    record was taken last stood for the source, so two identical sources disagreed."""
    a = _episodes("ehr-a", ("a1", "a2", "a3"))
    b = _episodes("ehr-b", ("b9", "b8", "b7"))
    for order in itertools.permutations([*a, *b]):
        state, event = _batch(list(order))
        assert event is None, [f.provenance.source_record_id for f in order]
        assert {s: x.value for s, x in state.assertions.items()} == {
            "ehr-a": "active",
            "ehr-b": "active",
        }


def test_episodes_of_one_event_time_agree_whatever_their_ids() -> None:
    """A bulk export with no time on its records: every episode has the export's time, so
    "the latest record" would be chosen by id, and two EHRs' ids differ."""
    statuses = ("resolved", "active", "resolved")
    for n in range(20):
        facts = [
            _fact(source, f"Condition/{source}-{n}-{i}", status, days=0)
            for source in ("ehr-a", "ehr-b")
            for i, status in enumerate(statuses)
        ]
        state, event = _batch(facts)
        assert event is None
        assert {x.value for x in state.assertions.values()} == {"active"}


def test_a_condition_is_active_while_any_current_episode_is() -> None:
    state, _ = _run(_episodes("ehr-a", ("1", "2", "3")))
    assert state.assertions["ehr-a"].provenance.source_record_id == "Condition/2"
    assert set(state.records["ehr-a"]) == {"Condition/1", "Condition/2", "Condition/3"}


def test_an_active_episode_resolved_by_its_own_newer_version_leaves_the_source_resolved() -> None:
    facts = [
        *_episodes("ehr-a", ("1", "2", "3")),
        _fact("ehr-a", "Condition/2", "resolved", days=500, version=2),
    ]
    state, _ = _run(facts)
    assert state.assertions["ehr-a"].value == "resolved"


def test_entered_in_error_withdraws_only_its_own_record() -> None:
    active = _fact("ehr-a", "Condition/1", "active", days=10)
    duplicate = _fact("ehr-a", "Condition/2", "active", days=20)
    withdrawn = _fact(
        "ehr-a", "Condition/2", "active", days=30, version=2, status="ENTERED_IN_ERROR"
    )
    other = _fact("ehr-b", "Condition/x", "active", days=10)
    state, events = _run([active, duplicate, other, withdrawn])
    assert state.assertions["ehr-a"].provenance.source_record_id == "Condition/1"
    assert state.assertions["ehr-a"].status == "ASSERTED"
    assert events == []  # the duplicate's withdrawal is no disagreement with ehr-b
    alone, opened = _run([duplicate, other, withdrawn])
    assert alone.assertions["ehr-a"].status == "ENTERED_IN_ERROR"  # nothing else stands
    assert [e.kind for e in opened] == ["OPENED"]


def test_a_medications_status_is_its_latest_orders() -> None:
    """Ordered, stopped, ordered again: a renewal supersedes, whatever arrives last."""
    orders = [
        _fact("ehr-a", "MedicationRequest/1", "stopped", days=0, attribute=METFORMIN,
              attribute_class="MEDICATION"),
        _fact("ehr-a", "MedicationRequest/2", "active", days=90, attribute=METFORMIN,
              attribute_class="MEDICATION"),
        _fact("ehr-a", "MedicationRequest/0", "active", days=-90, attribute=METFORMIN,
              attribute_class="MEDICATION"),
    ]  # fmt: skip
    for order in itertools.permutations(orders):
        state, _ = _run(list(order), METFORMIN, "MEDICATION")
        assert state.assertions["ehr-a"].provenance.source_record_id == "MedicationRequest/2"


def test_a_stopped_medication_in_one_ehr_and_active_in_the_other_still_disagree() -> None:
    """The two medications the report missed: they must be found on beliefs too."""
    a = [
        _fact("ehr-a", "MedicationRequest/1", "active", days=0, attribute=METFORMIN,
              attribute_class="MEDICATION"),
        _fact("ehr-a", "MedicationRequest/2", "stopped", days=60, attribute=METFORMIN,
              attribute_class="MEDICATION"),
    ]  # fmt: skip
    b = [
        _fact("ehr-b", "MedicationRequest/9", "active", days=0, attribute=METFORMIN,
              attribute_class="MEDICATION"),
    ]  # fmt: skip
    _, events = _run([*a, *b], METFORMIN, "MEDICATION")
    assert [e.kind for e in events] == ["OPENED"]
    assert {x.source_system: x.value for x in events[0].assertions} == {
        "ehr-a": "stopped",
        "ehr-b": "active",
    }


def test_hl7_messages_are_one_record_whose_latest_stands() -> None:
    """A v2 message is a snapshot of the patient, not a record of its own."""
    older = _fact("lab", "MSG1", "active", days=0, topic="ehr.raw.hl7v2")
    newer = _fact("lab", "MSG2", "resolved", days=5, topic="ehr.raw.hl7v2")
    state, _ = _run([newer, older])
    assert state.assertions["lab"].value == "resolved"
    assert state.records == {}  # one record: its belief is all there is to keep


def test_results_keep_only_their_latest_record() -> None:
    first = _fact("lab", "Observation/1", "5.1", days=0, attribute="Observation/2345-7",
                  attribute_class="LABORATORY")  # fmt: skip
    second = _fact("lab", "Observation/2", "6.3", days=1, attribute="Observation/2345-7",
                   attribute_class="LABORATORY")  # fmt: skip
    state, _ = _run([first, second], "Observation/2345-7", "LABORATORY")
    assert state.assertions["lab"].value == "6.3" and state.records == {}


def test_the_belief_does_not_depend_on_record_ids() -> None:
    records = {
        record_key(as_assertion(f)): as_assertion(f) for f in _episodes("a", ("x", "y", "z"))
    }
    renamed = {
        record_key(as_assertion(f)): as_assertion(f) for f in _episodes("a", ("z", "x", "q"))
    }
    first, second = believed(records, "CONDITION"), believed(renamed, "CONDITION")
    assert first is not None and second is not None
    assert (first.value, first.provenance.event_time) == (
        second.value,
        second.provenance.event_time,
    )


_STATUSES = st.sampled_from(["active", "resolved", "inactive", "recurrence", "remission"])


@st.composite
def _histories(draw: st.DrawFn) -> list[tuple[int, str, int, str]]:
    """(record number, status, day, withdrawn?) of one source's records of one condition."""
    count = draw(st.integers(1, 4))
    return [
        (n, draw(_STATUSES), draw(st.integers(0, 900)), draw(st.sampled_from(["", "EIE"])))
        for n in range(count)
    ]


@settings(max_examples=150, deadline=None)
@given(history=_histories(), seed=st.randoms(use_true_random=False))
@pytest.mark.parametrize("attribute_class", ["CONDITION", "MEDICATION"])
def test_two_sources_with_the_same_records_never_disagree(
    history: list[tuple[int, str, int, str]], seed: object, attribute_class: AttributeClass
) -> None:
    facts = [
        _fact(source, f"R/{source}-{n}", status, days=day, attribute=ASTHMA,
              attribute_class=attribute_class,
              status="ENTERED_IN_ERROR" if withdrawn else "ASSERTED")
        for source in ("ehr-a", "ehr-b")
        for n, status, day, withdrawn in history
    ]  # fmt: skip
    seed.shuffle(facts)  # type: ignore[attr-defined]
    state, event = _batch(facts, ASTHMA, attribute_class)
    assert event is None
    a, b = state.assertions["ehr-a"], state.assertions["ehr-b"]
    assert (a.value, a.status) == (b.value, b.status)  # records of one day too: ids never decide


def test_results_of_one_time_pick_the_same_value_whatever_their_ids() -> None:
    """Several observations of one code at one visit (a synthetic population's symptoms):
    two EHRs holding the same ones never disagree about which stands."""
    symptoms = ("Fever", "Cough", "Fatigue")
    for n in range(10):
        facts = [
            _fact(source, f"Observation/{source}-{n}-{i}", value, days=3,
                  attribute="Observation/75325-1", attribute_class="LABORATORY")
            for source in ("ehr-a", "ehr-b")
            for i, value in enumerate(symptoms)
        ]  # fmt: skip
        state, event = _batch(facts, "Observation/75325-1", "LABORATORY")
        assert event is None
        assert state.assertions["ehr-a"].value == state.assertions["ehr-b"].value


def test_a_later_version_of_a_record_with_no_newer_time_still_replaces_it() -> None:
    """A status change that carries no later time of its own (no meta.lastUpdated, the same
    recordedDate): the record's version says which is newer, whatever the arrival order."""
    first = _fact("ehr-a", "Condition/1", "active", days=0, version=1)
    second = _fact("ehr-a", "Condition/1", "resolved", days=0, version=2)
    for order in ([first, second], [second, first]):
        state, _ = _run(order)
        assert state.assertions["ehr-a"].value == "resolved"
