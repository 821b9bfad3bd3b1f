"""The conflicts stage with fakes of its ports: events published, state cached and bounded."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import FakeOutbox, FakeProducer, raw
from concord.conflicts import app
from concord.conflicts.app import ConflictsStage
from concord.conflicts.derive import Derivation, FactPattern, derive
from concord.conflicts.policy import DEFAULT_POLICY, ClassRule
from concord.conflicts.ports import ConflictStorePort, Key, Timer
from concord.conflicts.rules import AttributeState, HistoricFact
from concord.events import codec
from concord.events.models import (
    MERGE_ATTRIBUTE,
    AttributeClass,
    ClinicalFact,
    ConflictResolution,
    Provenance,
)
from concord.events.raw import RawEvent
from concord.runtime.batch import Outbound, OutboundRecord, run_batch
from concord.topics import CONFLICTS, DEADLETTER, FACTS, RESOLUTIONS

T0 = datetime(2026, 5, 1, tzinfo=UTC)


class FakeStore(ConflictStorePort):
    """Keeps saved state in memory, as PostgreSQL would; counts loads. Without subject owners:
    unmerges are tested against PostgreSQL (tests/integration/test_stores.py)."""

    def __init__(self) -> None:
        self.saved: dict[Key, AttributeState] = {}
        self.loaded: list[Key] = []
        self.events: list[OutboundRecord] = []
        self.moved: list[tuple[str, str]] = []
        self.recorded: list[ClinicalFact] = []
        self.timers: dict[Key, Timer] = {}

    async def load(
        self, keys: Sequence[Key], classes: Mapping[Key, AttributeClass]
    ) -> dict[Key, AttributeState]:
        self.loaded += keys
        return {k: self.saved.get(k) or AttributeState(k[0], k[1], classes[k]) for k in keys}

    async def attributes_of(self, patient_ids: Sequence[str]) -> dict[Key, AttributeClass]:
        return {k: st.attribute_class for k, st in self.saved.items() if k[0] in patient_ids}

    async def move_subjects(self, merges: Sequence[tuple[str, str]]) -> None:
        self.moved += merges

    async def restore_subjects(self, absorbed: str) -> set[str]:
        raise NotImplementedError

    async def history_of(self, patient_ids: Sequence[str]) -> list[HistoricFact]:
        raise NotImplementedError

    async def save(
        self,
        assertions: Iterable[tuple[AttributeState, str, int]],
        conflicts: Iterable[tuple[AttributeState, int]],
        events: Sequence[OutboundRecord],
        *,
        facts: Sequence[ClinicalFact] = (),
        rebuilt: Iterable[tuple[AttributeState, str, int]] = (),
        stale: Iterable[tuple[AttributeState, str, int]] = (),
        held: Iterable[tuple[AttributeState, int]] = (),
        timers: Sequence[Timer] = (),
    ) -> None:
        for state, _, _ in [*assertions, *rebuilt, *stale]:
            self.saved[(state.patient_id, state.attribute)] = state
        for state, _ in held:
            self.saved[(state.patient_id, state.attribute)] = state
        self.events += events
        self.recorded += facts
        for key, attribute_class, partition, due in timers:
            if due is None:
                self.timers.pop(key, None)
            else:
                self.timers[key] = (key, attribute_class, partition, due)

    async def due(self, partitions: Sequence[int], now: datetime, limit: int) -> list[Timer]:
        found = [
            (due, t)
            for t in self.timers.values()
            if (due := t[3]) is not None and t[2] in partitions and due <= now
        ]
        return [t for _, t in sorted(found, key=lambda d: d[0])][:limit]


def _fact(patient: str, source: str, value: str, minutes: int = 0) -> ClinicalFact:
    at = T0 + timedelta(minutes=minutes)
    return ClinicalFact(
        fact_id=f"{patient}/{source}/{minutes}",
        patient_id=patient,
        attribute="Patient.birthDate",
        attribute_class="DEMOGRAPHICS",
        value=value,
        status="ASSERTED",
        provenance=Provenance(
            source_system=source,
            source_record_id=f"Patient/{source}",
            event_time=at,
            received_time=at,
            raw_topic="ehr.raw.fhir",
            raw_partition=0,
            raw_offset=minutes,
            payload_sha256="0" * 64,
        ),
    )


def _records(facts: Sequence[ClinicalFact | bytes], partition: int = 0) -> list[RawEvent]:
    return [
        raw(
            f if isinstance(f, bytes) else codec.CLINICAL_FACT.encode(f),
            topic=FACTS,
            partition=partition,
            offset=i,
        )
        for i, f in enumerate(facts)
    ]


def _stage(store: FakeStore, cache_max_keys: int = 100) -> ConflictsStage:
    return ConflictsStage(
        store,
        FakeOutbox(),
        producer=FakeProducer(),
        policy=DEFAULT_POLICY,
        cache_max_keys=cache_max_keys,
    )


@pytest.mark.asyncio
async def test_a_disagreement_is_saved_and_published_as_one_conflict_event() -> None:
    store = FakeStore()
    out = await run_batch(
        _stage(store), _records([_fact("P1", "a", "1970-01-01"), _fact("P1", "b", "1970-01-02")])
    )
    assert [r.topic for r in out.pending] == [CONFLICTS]
    event = codec.CONFLICT_EVENT.decode(out.pending[0].value)
    assert (event.kind, event.patient_id, out.pending[0].key) == ("OPENED", "P1", b"P1")
    assert store.events == out.pending  # what is published is what the transaction kept


@pytest.mark.asyncio
async def test_redelivery_of_a_batch_publishes_nothing_more() -> None:
    store = FakeStore()
    stage = _stage(store)
    batch = _records([_fact("P1", "a", "1970-01-01"), _fact("P1", "b", "1970-01-02")])
    await run_batch(stage, batch)
    again = await run_batch(stage, batch)
    assert again.pending == []
    # A restarted worker (empty cache) reloads the saved state and stays quiet too.
    fresh = await run_batch(_stage(store), batch)
    assert fresh.pending == []


@pytest.mark.asyncio
async def test_the_cache_is_bounded_and_evicted_state_reloads_from_the_store() -> None:
    store = FakeStore()
    stage = _stage(store, cache_max_keys=2)
    for n, patient in enumerate(("P1", "P2", "P3")):
        await run_batch(stage, _records([_fact(patient, "a", "1970-01-01", n)]))
    assert list(stage.cache) == [("P2", "Patient.birthDate"), ("P3", "Patient.birthDate")]
    store.loaded.clear()
    out = await run_batch(stage, _records([_fact("P1", "b", "1999-09-09", 9)]))
    assert store.loaded == [("P1", "Patient.birthDate")]
    assert codec.CONFLICT_EVENT.decode(out.pending[0].value).kind == "OPENED"


@pytest.mark.asyncio
async def test_undecodable_facts_are_dead_lettered_and_the_rest_go_on() -> None:
    store = FakeStore()
    out = await run_batch(_stage(store), _records([b"not avro", _fact("P1", "a", "1970-01-01")]))
    assert [r.topic for r in out.pending] == [DEADLETTER]
    letter = codec.DEAD_LETTER.decode(out.pending[0].value)
    assert (letter.reason_code, letter.original_value) == ("UNDECODABLE_EVENT", b"not avro")
    assert ("P1", "Patient.birthDate") in store.saved


@pytest.mark.asyncio
async def test_a_merge_moves_the_absorbed_patients_assertions_to_the_survivor() -> None:
    store = FakeStore()
    stage = _stage(store)
    await run_batch(
        stage,
        _records(
            [
                _fact("OLD", "a", "1970-01-01"),
                _fact("OLD", "b", "1970-01-02"),
                _fact("NEW", "c", "1970-01-01"),
            ]
        ),
    )
    merge = _fact("NEW", "mpi", "OLD", minutes=30).model_copy(
        update={"attribute": MERGE_ATTRIBUTE, "fact_id": "merge-1"}
    )
    out = await run_batch(stage, _records([merge]))
    events = sorted(
        (
            (e.patient_id, e.kind)
            for e in map(codec.CONFLICT_EVENT.decode, (r.value for r in out.pending))
        ),
    )
    # The absorbed patient's conflict resolves; the survivor now holds a, b and c: b disagrees.
    assert events == [("NEW", "OPENED"), ("OLD", "RESOLVED")]
    assert store.moved == [("OLD", "NEW")]
    assert MERGE_ATTRIBUTE not in {f.attribute for f in store.recorded}
    survivor = store.saved[("NEW", "Patient.birthDate")]
    assert sorted(survivor.assertions) == ["a", "b", "c"]
    absorbed = store.saved[("OLD", "Patient.birthDate")]
    assert {a.status for a in absorbed.assertions.values()} == {"DELETED"}
    again = await run_batch(stage, _records([merge]))  # redelivered
    assert again.pending == []
    assert sorted(store.saved[("NEW", "Patient.birthDate")].assertions) == ["a", "b", "c"]


@pytest.mark.asyncio
async def test_a_metastatic_claim_and_a_stage_one_condition_conflict_through_derivation() -> None:
    sct = "http://snomed.info/sct"
    policy = DEFAULT_POLICY.model_copy(
        update={
            "classes": {"ONCOLOGY": ClassRule(compare="exact", severity="HIGH")},
            "derived": (
                Derivation(
                    attribute="Oncology.metastatic",
                    value="true",
                    when=(FactPattern(attribute="Condition/C7[7-9]*"),),
                ),
                Derivation(
                    attribute="Oncology.metastatic",
                    value="false",
                    when=(FactPattern(attribute="*/stage", values=(f"{sct}|258215001",)),),
                ),
            ),
        }
    )
    claim = _fact("P1", "claims", "active").model_copy(
        update={"attribute": "Condition/C78.00", "attribute_class": "ONCOLOGY"}
    )
    stage_one = _fact("P1", "ehr", f"{sct}|258215001", minutes=1).model_copy(
        update={"attribute": f"Condition/{sct}|254637007/stage", "attribute_class": "ONCOLOGY"}
    )
    store = FakeStore()
    stage = _stage(store)
    stage.policy = policy
    out = await run_batch(stage, _records([claim, stage_one]))
    [event] = [codec.CONFLICT_EVENT.decode(r.value) for r in out.pending]
    assert (event.attribute, event.kind, event.severity) == (
        "Oncology.metastatic",
        "OPENED",
        "HIGH",
    )
    said = {a.source_system: a.value for a in event.assertions}
    assert said == {"claims": "true", "ehr": "false"}
    # The derived facts are kept in the history with the facts they come from.
    assert sorted(f.attribute for f in store.recorded).count("Oncology.metastatic") == 2


# --- delivery order: shuffled and repeated facts end in the same state ----------------------

_SCT = "http://snomed.info/sct"
# (attribute, class, values): one of each comparison of the built-in policy, and facts that
# derive metastatic status.
_ATTRIBUTES = (
    ("Patient.birthDate", "DEMOGRAPHICS", ("1970-01-01", "1970-01-02")),
    ("AllergyIntolerance/7980", "ALLERGY", ("active", "resolved")),
    ("Observation/2345-7", "LABORATORY", ("100", "103", "140")),
    ("Condition/C78.00", "ONCOLOGY", ("active", "resolved")),
    (f"Condition/{_SCT}|254637007/stage", "ONCOLOGY", (f"{_SCT}|258215001", f"{_SCT}|258228008")),
)


@st.composite
def _deliveries(draw: st.DrawFn) -> list[ClinicalFact]:
    facts = []
    for patient in ("P1", "P2"):
        for source in ("hospital-ehr", "lab-system", "payer"):
            for attribute, attribute_class, values in _ATTRIBUTES:
                for version in range(draw(st.integers(0, 2))):
                    minutes = draw(st.integers(0, 90))  # results an hour apart: two specimens
                    fact = _fact(patient, source, draw(st.sampled_from(values)), minutes=minutes)
                    facts.append(
                        fact.model_copy(
                            update={
                                "fact_id": f"{patient}/{source}/{attribute}/{version}",
                                "attribute": attribute,
                                "attribute_class": attribute_class,
                                "status": draw(st.sampled_from(["ASSERTED"] * 3 + ["REFUTED"])),
                                "unit": "mg/dL" if attribute_class == "LABORATORY" else None,
                                "effective_time": fact.provenance.event_time,
                            }
                        )
                    )
    return facts


def _deliver(facts: list[ClinicalFact], batch_sizes: list[int]) -> FakeStore:
    store = FakeStore()
    stage = _stage(store, cache_max_keys=1000)
    sizes = iter(batch_sizes)

    async def run() -> None:
        start = 0
        while start < len(facts):
            size = next(sizes, 7)
            await run_batch(stage, _records(facts[start : start + size]))
            start += size

    asyncio.run(run())
    return store


def _final(store: FakeStore) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Each attribute's assertions and the disagreement open on it, if any. A conflict that
    opened and resolved on the way is no difference: which ones flash depends on the order
    (suppression windows are for that), what stays open must not."""
    return {
        key: (
            {source: a.fact_id for source, a in state.assertions.items()},
            state.conflict.digest if state.conflict and state.conflict.status == "OPEN" else None,
        )
        for key, state in store.saved.items()
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(facts=_deliveries(), data=st.data())
def test_shuffled_and_repeated_delivery_ends_in_the_same_conflicts(
    facts: list[ClinicalFact], data: st.DataObject
) -> None:
    in_order = sorted(facts, key=lambda f: (f.provenance.event_time, f.fact_id))
    # Any interleaving, and what a crash replays: some facts delivered again, later.
    shuffled = data.draw(st.permutations(facts))
    repeated = data.draw(st.lists(st.sampled_from(facts), max_size=10)) if facts else []
    batches = data.draw(st.lists(st.integers(1, 12), max_size=20))

    expected = _final(_deliver(in_order, [len(in_order) or 1]))
    found = _final(_deliver([*shuffled, *repeated], batches))
    assert found == expected
    # What the policy derives from the facts was derived, for every patient concerned.
    implied = {
        (d.patient_id, d.attribute) for f in facts for d in derive(f, DEFAULT_POLICY.derived)
    }
    assert implied <= found.keys()


@pytest.mark.asyncio
async def test_a_reviewers_decision_on_concord_resolutions_resolves_the_conflict() -> None:
    store = FakeStore()
    stage = _stage(store)
    out = await run_batch(
        stage, _records([_fact("P1", "a", "1970-01-01"), _fact("P1", "b", "1970-01-02")])
    )
    [opened] = [codec.CONFLICT_EVENT.decode(r.value) for r in out.pending]
    stage.cache.clear()  # the decision may come long after: the store has the conflict
    decision = ConflictResolution(
        resolution_id="r-1",
        conflict_id=opened.conflict_id,
        patient_id="P1",
        attribute="Patient.birthDate",
        decision="ACCEPTED_PROPOSAL",
        resolved_by="reviewer-7",
        resolved_at=T0,
    )
    record = dataclasses.replace(
        _records([b""])[0], topic=RESOLUTIONS, value=codec.CONFLICT_RESOLUTION.encode(decision)
    )
    decided = await run_batch(stage, [record])
    [resolved] = [codec.CONFLICT_EVENT.decode(r.value) for r in decided.pending]
    assert (resolved.conflict_id, resolved.kind) == (opened.conflict_id, "RESOLVED")
    assert resolved.proposed_value == opened.proposed_value
    assert store.saved[("P1", "Patient.birthDate")].conflict.reviewed  # type: ignore[union-attr]
    again = await run_batch(stage, [record])  # redelivered
    assert again.pending == []


@pytest.mark.asyncio
@pytest.mark.parametrize(("budget", "left"), [(60.0, 0), (0.0, 3)])
async def test_a_tick_reads_due_timers_again_while_they_come_full_within_its_budget(
    monkeypatch: pytest.MonkeyPatch, budget: float, left: int
) -> None:
    """A backlog's holds end together: one tick takes them in several reads (here 2 at a
    time) until none is left, unless its time budget runs out first."""
    monkeypatch.setattr(app, "TIMER_BATCH", 2)
    monkeypatch.setattr(app, "TIMER_BUDGET_SECONDS", budget)
    store = FakeStore()
    past = datetime.now(UTC) - timedelta(seconds=1)
    for n in range(5):
        key = (f"E{n}", "Patient.birthDate")
        store.timers[key] = (key, "DEMOGRAPHICS", 0, past)
    stage = _stage(store)
    await stage.on_tick({0}, Outbound("conflicts"))
    assert len(store.timers) == left  # each timer looked at is cleared: nothing ages here
