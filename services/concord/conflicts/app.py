"""The conflicts worker's stage: decode facts, apply them to cached state, persist, publish.

State is cached per owned partition and loaded lazily from PostgreSQL; a revoked partition's
cache is dropped, so a worker only ever trusts memory for partitions it owns.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

from concord import metrics
from concord.conflicts.derive import derive
from concord.conflicts.policy import SourcePolicy
from concord.conflicts.ports import ConflictStorePort, Key, Timer
from concord.conflicts.rules import (
    AttributeState,
    apply_fact,
    apply_resolution,
    evaluate,
    merged_facts,
    rebuild,
)
from concord.conflicts.staleness import check_staleness
from concord.events import codec
from concord.events.models import (
    IDENTITY_SIGNALS,
    MERGE_ATTRIBUTE,
    UNMERGE_ATTRIBUTE,
    AttributeClass,
    ClinicalFact,
    ConflictEvent,
    ConflictResolution,
)
from concord.events.raw import RawEvent
from concord.runtime.batch import Outbound, OutboundRecord, Producer
from concord.runtime.ports import LEFT_BEHIND_SECONDS, OutboxPort
from concord.runtime.stage import BaseStage, decode_or_dead_letter
from concord.topics import CONFLICTS, FACTS, RESOLUTIONS

log = logging.getLogger(__name__)


def conflict_record(conflict: ConflictEvent) -> OutboundRecord:
    return OutboundRecord(
        CONFLICTS, codec.CONFLICT_EVENT.encode(conflict), key=conflict.patient_id.encode()
    )


class ConflictsStage(BaseStage):
    stage = "conflicts"
    topics: tuple[str, ...] = (FACTS, RESOLUTIONS)

    def __init__(
        self,
        store: ConflictStorePort,
        outbox: OutboxPort,
        producer: Producer,
        policy: SourcePolicy,
        *,
        cache_max_keys: int = 200_000,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.producer = producer
        self.policy = policy
        self.cache_max_keys = cache_max_keys
        # Least recently used first; PostgreSQL holds the truth, so dropping is always safe.
        self.cache: OrderedDict[Key, AttributeState] = OrderedDict()
        self.keys_by_partition: dict[int, set[Key]] = defaultdict(set)

    async def on_assigned(self, partitions: set[int]) -> None:
        await self.store.claim(partitions)
        drained = await self.outbox.drain(self.producer)
        if drained:
            log.info("published %d outbox events left by an earlier owner", drained)

    async def on_revoked(self, partitions: set[int]) -> None:
        await self.store.release(partitions)
        for partition in partitions:
            for key in self.keys_by_partition.pop(partition, set()):
                self.cache.pop(key, None)

    async def on_produced(self) -> None:
        await self.outbox.acknowledge()

    async def process(self, events: Sequence[RawEvent], out: Outbound) -> None:
        facts: list[tuple[ClinicalFact, int]] = []
        resolutions: list[tuple[ConflictResolution, int]] = []
        for raw in events:
            if raw.topic == RESOLUTIONS:
                decision = decode_or_dead_letter(out, raw, codec.CONFLICT_RESOLUTION)
                if decision is not None:
                    resolutions.append((decision, raw.partition))
            elif (fact := decode_or_dead_letter(out, raw, codec.CLINICAL_FACT)) is not None:
                facts.append((fact, raw.partition))
        if not (facts or resolutions):
            return
        # One policy for the whole batch, even if a reload swaps it meanwhile.
        policy = self.policy
        facts = self._with_derived(facts, policy)
        consumed = [fact for fact, _ in facts if fact.attribute not in IDENTITY_SIGNALS]
        try:
            facts = await self._expand_merges(facts)
            rebuilt = await self._rebuild_unmerged(
                [(f, p) for f, p in facts if f.attribute == UNMERGE_ATTRIBUTE and f.value]
            )
            facts = [(f, p) for f, p in facts if f.attribute != UNMERGE_ATTRIBUTE]
            await self._detect(
                facts, out, policy, consumed=consumed, rebuilt=rebuilt, resolutions=resolutions
            )
        except BaseException:
            # Memory may now be ahead of PostgreSQL: forget it, the store is the truth.
            self.cache.clear()
            self.keys_by_partition.clear()
            raise
        self._evict(len(self.cache) - self.cache_max_keys)

    @staticmethod
    def _with_derived(
        facts: list[tuple[ClinicalFact, int]], policy: SourcePolicy
    ) -> list[tuple[ClinicalFact, int]]:
        """Each fact followed by what the policy derives from it (oncology: metastatic status
        from a C78 claim or a stage)."""
        derivations = policy.derived
        if not derivations:
            return facts
        expanded: list[tuple[ClinicalFact, int]] = []
        for fact, partition in facts:
            expanded.append((fact, partition))
            if fact.attribute not in IDENTITY_SIGNALS:
                expanded += [(d, partition) for d in derive(fact, derivations)]
        return expanded

    async def _expand_merges(
        self, facts: list[tuple[ClinicalFact, int]]
    ) -> list[tuple[ClinicalFact, int]]:
        """A merge becomes ordinary facts: each assertion of the absorbed patient asserted
        again of the survivor (event time decides against the survivor's own), and a
        tombstone for it on the absorbed patient, so its open conflicts resolve."""
        merges = [(f, p) for f, p in facts if f.attribute == MERGE_ATTRIBUTE and f.value]
        if not merges:
            return facts
        await self.store.move_subjects([(m.value or "", m.patient_id) for m, _ in merges])
        classes = await self.store.attributes_of(sorted({f.value for f, _ in merges if f.value}))
        keys_of: dict[str, list[Key]] = defaultdict(list)
        for key in sorted(classes):
            keys_of[key[0]].append(key)
        # Under the survivor's partition: the absorbed patient's state moves there.
        await self._load_keys(
            [(k, classes[k], p) for m, p in merges for k in keys_of[m.value or ""]]
        )
        expanded: list[tuple[ClinicalFact, int]] = []
        for merge, partition in merges:
            for key in keys_of[merge.value or ""]:
                expanded += [(fact, partition) for fact in merged_facts(self.cache[key], merge)]
        return expanded + [(f, p) for f, p in facts if f.attribute != MERGE_ATTRIBUTE]

    async def _rebuild_unmerged(
        self, unmerges: list[tuple[ClinicalFact, int]]
    ) -> list[tuple[AttributeState, str, int]]:
        """An unmerge gives the restored patient its sources' subjects back, then rebuilds
        both patients' assertions from the fact history: what each source last said under
        the subjects each owns now. Under the survivor's partition, like the merge."""
        rebuilt: list[tuple[AttributeState, str, int]] = []
        for unmerge, partition in unmerges:
            absorbed = unmerge.value or ""
            holders = await self.store.restore_subjects(absorbed)
            patients = sorted({absorbed, unmerge.patient_id, *holders})
            history = await self.store.history_of(patients)
            classes = await self.store.attributes_of(patients)
            for fact in history:
                if fact.owner in patients:
                    classes.setdefault((fact.owner, fact.attribute), fact.attribute_class)
            await self._load_keys([(key, c, partition) for key, c in sorted(classes.items())])
            states = {key: self.cache[key] for key in classes}
            rebuilt += [(state, source, partition) for state, source in rebuild(states, history)]
        return rebuilt

    async def _detect(
        self,
        facts: list[tuple[ClinicalFact, int]],
        out: Outbound,
        policy: SourcePolicy,
        *,
        consumed: Sequence[ClinicalFact],
        rebuilt: Sequence[tuple[AttributeState, str, int]],
        resolutions: Sequence[tuple[ConflictResolution, int]] = (),
    ) -> None:
        await self._load([fact for fact, _ in facts], [p for _, p in facts])
        changes = _Changes(policy, datetime.now(UTC))
        for state, partition in {
            (s.patient_id, s.attribute): (s, p) for s, _, p in rebuilt
        }.values():
            changes.check(state, partition, changes.now)
        # Every fact first, then each changed state compared once: a source's records of one
        # concept arriving in one batch are one belief, not a run of passing disagreements.
        changed: dict[Key, tuple[AttributeState, int, datetime]] = {}
        for fact, partition in facts:
            key = (fact.patient_id, fact.attribute)
            state = self.cache[key]
            if not apply_fact(state, fact):
                continue
            source = fact.provenance.source_system
            changes.assertions[(key, source)] = (state, source, partition)
            changed[key] = (state, partition, fact.provenance.received_time)
        for state, partition, received in changed.values():
            changes.check(state, partition, received)
        # After the facts: a decision names a conflict facts opened (in this batch, or before).
        await self._load_decided(resolutions)
        for resolution, partition in resolutions:
            decided = self.cache.get((resolution.patient_id, resolution.attribute))
            event = (
                apply_resolution(decided, resolution, policy, now=changes.now)
                if decided is not None
                else None
            )
            metrics.RESOLUTIONS.labels("applied" if event else "ignored").inc()
            if decided is not None and event is not None:  # (event implies decided)
                changes.conflicts[(decided.patient_id, decided.attribute)] = (decided, partition)
                changes.events.append(conflict_record(event))
        if not (changes.assertions or changes.conflicts or consumed or rebuilt):
            return
        await self._save(changes, out, consumed=consumed, rebuilt=rebuilt)

    async def _load_decided(self, resolutions: Sequence[tuple[ConflictResolution, int]]) -> None:
        """Cache the states the decisions name (a decision names no attribute class: the
        stored assertions do; an attribute nobody asserted has no conflict to resolve)."""
        if not resolutions:
            return
        classes = await self.store.attributes_of(sorted({r.patient_id for r, _ in resolutions}))
        await self._load_keys(
            [
                ((r.patient_id, r.attribute), classes[(r.patient_id, r.attribute)], p)
                for r, p in resolutions
                if (r.patient_id, r.attribute) in classes
            ]
        )

    async def on_tick(self, partitions: set[int], out: Outbound) -> None:
        """The timer: look again at the attributes of the owned partitions whose time has
        come (an index read, not a scan), raise what became stale or has been held long
        enough (suppress_for), re-arm. Reads TIMER_BATCH at a time, again while a batch
        comes back full, for at most TIMER_BUDGET_SECONDS (a backlog's holds end together)."""
        drained = await self.outbox.drain(self.producer, older_than=LEFT_BEHIND_SECONDS)
        if drained:
            log.info("published %d outbox events left behind", drained)
        owned = sorted(partitions)
        if not owned:
            return
        deadline = time.monotonic() + TIMER_BUDGET_SECONDS
        while True:
            changes = _Changes(self.policy, datetime.now(UTC))
            due = await self.store.due(owned, changes.now, TIMER_BATCH)
            if not due:
                return
            try:
                await self._load_keys([(key, c, p) for key, c, p, _ in due])
                for key, _, partition, _ in due:
                    changes.check(self.cache[key], partition, changes.now, timer=True)
                await self._save(changes, out)
            except BaseException:
                self.cache.clear()  # as in process(): memory may be ahead of PostgreSQL
                self.keys_by_partition.clear()
                raise
            self._evict(len(self.cache) - self.cache_max_keys)  # an idle worker's stays bounded
            if len(due) < TIMER_BATCH or time.monotonic() > deadline:
                return

    async def _save(
        self,
        changes: _Changes,
        out: Outbound,
        *,
        consumed: Sequence[ClinicalFact] = (),
        rebuilt: Sequence[tuple[AttributeState, str, int]] = (),
    ) -> None:
        await self.store.save(
            changes.assertions.values(),
            changes.conflicts.values(),
            changes.events,
            facts=consumed,
            rebuilt=rebuilt,
            stale=changes.stale.values(),
            held=changes.held.values(),
            timers=list(changes.timers.values()),
        )
        self.outbox.publish_written(out, changes.events)

    async def _load(self, facts: list[ClinicalFact], partitions: list[int]) -> None:
        wanted = [
            ((fact.patient_id, fact.attribute), fact.attribute_class, partition)
            for fact, partition in zip(facts, partitions, strict=True)
        ]
        await self._load_keys(wanted)

    async def _load_keys(self, wanted: Sequence[tuple[Key, AttributeClass, int]]) -> None:
        """Cache the state of each (key, class, partition), loading what is not cached."""
        missing: dict[Key, AttributeClass] = {}
        for key, attribute_class, partition in wanted:
            self.keys_by_partition[partition].add(key)
            if key in self.cache:
                self.cache.move_to_end(key)
            else:
                missing[key] = attribute_class
        if missing:
            self.cache.update(await self.store.load(list(missing), missing))

    def _evict(self, count: int) -> None:
        for _ in range(max(0, min(count, len(self.cache)))):
            key, _state = self.cache.popitem(last=False)
            for keys in self.keys_by_partition.values():
                keys.discard(key)


# Attributes looked at per timer read; reads go on while they come back full, for at most
# TIMER_BUDGET_SECONDS a tick (the batch loop consumes nothing meanwhile); the rest wait for
# the next tick.
TIMER_BATCH = 1000
TIMER_BUDGET_SECONDS = 2.0


class _Changes:
    """What one batch (or one timer tick) changed, and the events it raises."""

    def __init__(self, policy: SourcePolicy, now: datetime) -> None:
        self.policy = policy
        self.now = now
        self.assertions: dict[tuple[Key, str], tuple[AttributeState, str, int]] = {}
        self.conflicts: dict[Key, tuple[AttributeState, int]] = {}
        self.stale: dict[tuple[Key, str], tuple[AttributeState, str, int]] = {}
        self.held: dict[Key, tuple[AttributeState, int]] = {}
        self.timers: dict[Key, Timer] = {}
        self.events: list[OutboundRecord] = []

    def check(
        self, state: AttributeState, partition: int, received: datetime, *, timer: bool = False
    ) -> None:
        """Disagreement, then staleness, of a state that changed, or whose timer fired
        (`timer`: its timer row exists and must be re-armed or cleared)."""
        key = (state.patient_id, state.attribute)
        if state.attribute_class not in self.policy.compared_classes:
            if timer:  # the policy stopped comparing the class while a timer was set
                self.timers[key] = (key, state.attribute_class, partition, None)
            return
        held = dict(state.held)
        event = evaluate(state, self.policy, now=self.now, trigger_received_time=received)
        if event is not None:
            self.conflicts[key] = (state, partition)
            self.events.append(conflict_record(event))
        self._stale_check(state, partition, received, timer=timer)
        if state.held != held:
            self.held[key] = (state, partition)

    def _stale_check(
        self, state: AttributeState, partition: int, received: datetime, *, timer: bool
    ) -> None:
        key = (state.patient_id, state.attribute)
        rule = self.policy.rule(state.attribute, state.attribute_class)
        ages = rule is not None and (rule.max_age or rule.reconfirm_within)
        if not ages and not state.stale and not state.held:
            # Most attributes never age nor wait: no timer row is written for them at all.
            if timer:
                self.timers[key] = (key, state.attribute_class, partition, None)
            return
        events, due = check_staleness(
            state, self.policy, now=self.now, trigger_received_time=received
        )
        for event in events:
            self.events.append(conflict_record(event))
        if events:
            for source in state.stale:
                self.stale[(key, source)] = (state, source, partition)
        self.timers[key] = (key, state.attribute_class, partition, due)
