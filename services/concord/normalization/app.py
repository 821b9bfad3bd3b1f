"""The normalization worker's stage: decode ingested records, read them with the pure core,
resolve the batch's patients in the identity index, publish the facts, and the records'
narrative texts for the narrative worker (concord.documents).

A source's delete (a FHIR DELETE, a voided claim line) names only its record: the stage
remembers what each record's upserts asserted (`record_facts.py`), and publishes a delete as
that, withdrawn (`facts/withdrawals.py`).

It also publishes what an operator's identity change (`concord identity unmerge`) left in
the identity outbox, when it gets partitions: the command publishes its own signal, and
this covers a command that stopped between its commit and the broker's ack."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from concord import metrics
from concord.config import NormalizationSettings
from concord.deadletters import Rejection
from concord.events import codec
from concord.events.models import ClinicalFact, IngestedRecord
from concord.events.raw import RawEvent
from concord.normalization.documents import to_document
from concord.normalization.facts.drafts import PROVISIONAL_PATIENT, merge_fact, to_fact
from concord.normalization.facts.withdrawals import (
    RecordKey,
    Remembered,
    record_key,
    remembered,
    withdrawal_facts,
)
from concord.normalization.identity import systems as naming
from concord.normalization.identity.resolution import Resolution
from concord.normalization.identity.systems import IdentifierSystems
from concord.normalization.outbound import document_record, fact_record
from concord.normalization.ports import IdentityOutbox, IdentityStore, RecordFacts
from concord.normalization.records import ReadRecord, read_record
from concord.normalization.terminology import Terminology
from concord.runtime.batch import Outbound, OutboundRecord, Producer, publish_dead_letter
from concord.runtime.ports import LEFT_BEHIND_SECONDS
from concord.runtime.stage import BaseStage, core_failure, decode_or_dead_letter
from concord.topics import INGESTED

log = logging.getLogger(__name__)


def publish_fact(out: Outbound, *, fact: ClinicalFact) -> None:
    out.add(fact_record(fact))


class NormalizationStage(BaseStage):
    stage = "normalization"
    topics: tuple[str, ...] = (INGESTED,)

    def __init__(
        self,
        settings: NormalizationSettings,
        identities: IdentityStore,
        terminology: Terminology,
        *,
        record_facts: RecordFacts,
        identity_outbox: IdentityOutbox | None = None,
        producer: Producer | None = None,
    ) -> None:
        self.systems = tuple(settings.enterprise_id_systems)
        # Raises NamingError on a bad file: the worker does not start on it.
        naming.configure(IdentifierSystems.load(settings.identifier_systems_path))
        self.identities = identities
        self.terminology = terminology
        self.record_facts = record_facts
        self.identity_outbox = identity_outbox
        self.producer = producer

    async def on_assigned(self, partitions: set[int]) -> None:
        await self._drain(older_than=0.0)

    async def on_tick(self, partitions: set[int], out: Outbound) -> None:
        await self._drain(older_than=LEFT_BEHIND_SECONDS)

    async def on_produced(self) -> None:
        if self.identity_outbox is not None:
            await self.identity_outbox.acknowledge()

    async def _drain(self, *, older_than: float) -> None:
        if self.identity_outbox is None or self.producer is None:
            return
        drained = await self.identity_outbox.drain(self.producer, older_than=older_than)
        if drained:
            log.info("published %d identity signals left in the outbox", drained)

    async def process(self, events: Sequence[RawEvent], out: Outbound) -> None:
        read, deletes = self._read_all(events, out)
        resolutions, merges = await self._resolve(read)
        memories: list[Remembered] = []
        for index, ((ingested, outcome), resolution) in enumerate(
            zip(read, resolutions, strict=True)
        ):
            flags = (PROVISIONAL_PATIENT,) if resolution.provisional else ()
            metrics.IDENTITY_DECISIONS.labels(resolution.how.value).inc()
            # Written to the identity outbox with the decision; published in the batch's
            # order, and left to a drain if the batch never gets this far.
            self._publish_signals(out, [merges[(index, a)] for a in resolution.absorbed])
            facts = [
                to_fact(
                    draft,
                    patient_id=resolution.enterprise_id,
                    record=ingested,
                    subject=outcome.request.local_ids[0],
                    extra_flags=flags,
                )
                for draft in outcome.drafts
            ]
            for fact in facts:
                for flag in fact.flags:
                    metrics.FACTS_FLAGGED.labels(fact.attribute_class, flag).inc()
                publish_fact(out, fact=fact)
            for text in outcome.documents:
                document = to_document(
                    text,
                    patient_id=resolution.enterprise_id,
                    record=ingested,
                    subject=outcome.request.local_ids[0],
                    withdrawn=outcome.withdrawn,
                    extra_flags=flags,
                )
                metrics.DOCUMENTS_PUBLISHED.labels(document.kind).inc()
                out.add(document_record(document))
            memory = remembered(ingested, facts)
            if memory is not None:
                memories.append(memory)
        await self._withdraw(deletes, memories, out)
        # After the recall: a delete must see the memory from before this batch, not only
        # the batch's own upserts (_withdraw adds those).
        await self.record_facts.remember(memories)

    def _read_all(
        self, events: Sequence[RawEvent], out: Outbound
    ) -> tuple[list[tuple[IngestedRecord, ReadRecord]], list[IngestedRecord]]:
        """The upserts read by the core, and the deletes; what cannot be read is
        dead-lettered."""
        read: list[tuple[IngestedRecord, ReadRecord]] = []
        deletes: list[IngestedRecord] = []
        for raw in events:
            ingested = decode_or_dead_letter(out, raw, codec.INGESTED_RECORD)
            if ingested is None:
                continue
            if ingested.operation == "DELETE":
                deletes.append(ingested)
                continue
            outcome = self._read(ingested, raw)
            if isinstance(outcome, Rejection):
                publish_dead_letter(out, raw=raw, rejection=outcome)
            elif outcome is None:
                metrics.RECORDS_NOT_NORMALIZED.labels(ingested.format, ingested.operation).inc()
            else:
                read.append((ingested, outcome))
        return read, deletes

    async def _resolve(
        self, read: Sequence[tuple[IngestedRecord, ReadRecord]]
    ) -> tuple[list[Resolution], dict[tuple[int, str], OutboundRecord]]:
        """Each record's resolution, and the merge signals (by record and absorbed id) the
        identity store wrote to its outbox with the decisions."""
        merges: dict[tuple[int, str], OutboundRecord] = {}

        def merge_signal(index: int, survivor: str, absorbed: str) -> OutboundRecord:
            fact = merge_fact(survivor=survivor, absorbed=absorbed, record=read[index][0])
            merges[(index, absorbed)] = record = fact_record(fact)
            return record

        requests = [outcome.request for _, outcome in read]
        return await self.identities.resolve_batch(requests, merge_signal), merges

    def _publish_signals(self, out: Outbound, signals: Sequence[OutboundRecord]) -> None:
        """The merge signals, in the batch's order; the outbox's rows are deleted once they
        are acknowledged, or published by a drain if the batch never gets that far."""
        if self.identity_outbox is not None:
            self.identity_outbox.publish_written(out, signals)
        else:
            for signal in signals:
                out.add(signal)

    async def _withdraw(
        self, deletes: Sequence[IngestedRecord], upserts: Sequence[Remembered], out: Outbound
    ) -> None:
        """Publish each delete as what its record's upserts asserted, withdrawn: as
        remembered, and as said by the batch itself (an upsert and its delete may share a
        batch, in either order). A delete of a record never seen is counted, nothing more."""
        if not deletes:
            return
        keys = [record_key(d) for d in deletes]
        stored = await self.record_facts.recall([k for k in keys if k is not None])
        in_batch: defaultdict[RecordKey, list[Remembered]] = defaultdict(list)
        for memory in upserts:
            in_batch[memory.key].append(memory)
        for delete, key in zip(deletes, keys, strict=True):
            memories = in_batch.get(key, []) if key is not None else []
            if key is not None and key in stored:
                memories = [stored[key], *memories]
            facts = withdrawal_facts(delete, memories)
            if not facts:
                metrics.RECORDS_NOT_NORMALIZED.labels(delete.format, delete.operation).inc()
                continue
            metrics.RECORDS_WITHDRAWN.labels(delete.format).inc()
            for fact in facts:
                publish_fact(out, fact=fact)

    def _read(self, ingested: IngestedRecord, raw: RawEvent) -> ReadRecord | Rejection | None:
        try:
            return read_record(ingested, self.terminology, self.systems)
        except Exception as exc:
            return core_failure(exc, raw, stage=self.stage, reason_code="NORMALIZATION_FAILED")
