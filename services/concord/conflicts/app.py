"""The conflicts worker's stage: decode facts, apply them to cached state, persist, publish.

State is cached per owned partition and loaded lazily from PostgreSQL; a revoked partition's
cache is dropped, so a worker only ever trusts memory for partitions it owns.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, TopicPartition

from concord.conflicts.policy import SourcePolicy
from concord.conflicts.rules import AttributeState, apply_fact, evaluate, merged_facts
from concord.conflicts.store import ConflictStore, Key
from concord.deadletters import Rejection
from concord.events import codec
from concord.events.models import MERGE_ATTRIBUTE, ClinicalFact, ConflictEvent
from concord.runtime.batch import Outbound, OutboundRecord
from concord.runtime.outbox import Outbox
from concord.runtime.records import raw_event
from concord.runtime.stage import BaseStage, publish_dead_letter
from concord.topics import CONFLICTS, FACTS

log = logging.getLogger(__name__)


def conflict_record(conflict: ConflictEvent) -> OutboundRecord:
    return OutboundRecord(
        CONFLICTS, codec.CONFLICT_EVENT.encode(conflict), key=conflict.patient_id.encode()
    )


class ConflictsStage(BaseStage):
    stage = "conflicts"
    topics: tuple[str, ...] = (FACTS,)

    def __init__(
        self,
        store: ConflictStore,
        outbox: Outbox,
        producer: AIOKafkaProducer,
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

    async def on_assigned(self, partitions: set[TopicPartition]) -> None:
        drained = await self.outbox.drain(self.producer)
        if drained:
            log.info("published %d outbox events left by an earlier owner", drained)

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            for key in self.keys_by_partition.pop(tp.partition, set()):
                self.cache.pop(key, None)

    async def on_produced(self) -> None:
        await self.outbox.acknowledge()

    async def process(self, records: Sequence[ConsumerRecord], out: Outbound) -> None:
        facts: list[tuple[ClinicalFact, int]] = []
        for record in records:
            try:
                facts.append((codec.CLINICAL_FACT.decode(record.value), record.partition))
            except codec.CodecError as exc:
                rejection = Rejection("UNDECODABLE_EVENT", f"{exc} [{exc.reason_code}]")
                publish_dead_letter(out, raw=raw_event(record), rejection=rejection)
        if not facts:
            return
        try:
            facts = await self._expand_merges(facts)
            await self._detect(facts, out)
        except BaseException:
            # Memory may now be ahead of PostgreSQL: forget it, the store is the truth.
            self.cache.clear()
            self.keys_by_partition.clear()
            raise
        self._evict(len(self.cache) - self.cache_max_keys)

    async def _expand_merges(
        self, facts: list[tuple[ClinicalFact, int]]
    ) -> list[tuple[ClinicalFact, int]]:
        """A merge becomes ordinary facts: each assertion of the absorbed patient asserted
        again of the survivor (event time decides against the survivor's own), and a
        tombstone for it on the absorbed patient, so its open conflicts resolve."""
        merges = [(f, p) for f, p in facts if f.attribute == MERGE_ATTRIBUTE and f.value]
        if not merges:
            return facts
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

    async def _detect(self, facts: list[tuple[ClinicalFact, int]], out: Outbound) -> None:
        await self._load([fact for fact, _ in facts], [p for _, p in facts])
        now = datetime.now(UTC)
        changed_assertions: dict[tuple[Key, str], tuple[AttributeState, str, int]] = {}
        changed_conflicts: dict[Key, tuple[AttributeState, int]] = {}
        events: list[OutboundRecord] = []
        for fact, partition in facts:
            key = (fact.patient_id, fact.attribute)
            state = self.cache[key]
            if not apply_fact(state, fact):
                continue
            source = fact.provenance.source_system
            changed_assertions[(key, source)] = (state, source, partition)
            if fact.attribute_class not in self.policy.compared_classes:
                continue
            event = evaluate(
                state, self.policy, now=now, trigger_received_time=fact.provenance.received_time
            )
            if event is not None:
                changed_conflicts[key] = (state, partition)
                events.append(conflict_record(event))
        if not changed_assertions:
            return
        await self.store.save(changed_assertions.values(), changed_conflicts.values(), events)
        self.outbox.publish_written(out, events)

    async def _load(self, facts: list[ClinicalFact], partitions: list[int]) -> None:
        wanted = [
            ((fact.patient_id, fact.attribute), fact.attribute_class, partition)
            for fact, partition in zip(facts, partitions, strict=True)
        ]
        await self._load_keys(wanted)

    async def _load_keys(self, wanted: Sequence[tuple[Key, str, int]]) -> None:
        """Cache the state of each (key, class, partition), loading what is not cached."""
        missing: dict[Key, str] = {}
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
