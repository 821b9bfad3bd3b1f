"""The narrative worker's stage: decode clinical documents, read their text with the pure
core (clinical_text.extract), publish what the text says surely enough as facts, keep the
rest as text review tasks, and withdraw what a document's newer version no longer says.

Reading text costs milliseconds a document (the structured stages spend microseconds a
record), so the stage runs small batches (CONCORD_MAX_BATCH_RECORDS, 50 by default) and reads
each document in a thread, so that the consumer's heartbeats go on however long a text is."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from concord import metrics
from concord.clinical_text.extract import extract, method
from concord.clinical_text.rules import TextRules, default_rules
from concord.events import codec
from concord.events.models import ClinicalDocument
from concord.events.raw import RawEvent
from concord.narrative.ports import RecordFacts, TextReviews
from concord.narrative.reading import (
    Candidate,
    Reading,
    memory_key,
    read_findings,
    record_memory_key,
    record_remembered,
    remembered,
    withdrawn_facts,
)
from concord.normalization.facts.withdrawals import RecordKey, Remembered
from concord.normalization.outbound import fact_record
from concord.runtime.batch import Outbound, publish_dead_letter
from concord.runtime.stage import BaseStage, core_failure, decode_or_dead_letter
from concord.topics import DOCUMENTS


class NarrativeStage(BaseStage):
    stage = "narrative"
    topics: tuple[str, ...] = (DOCUMENTS,)

    def __init__(
        self,
        record_facts: RecordFacts,
        reviews: TextReviews,
        *,
        min_confidence: float,
        rules: TextRules | None = None,
    ) -> None:
        self.record_facts = record_facts
        self.reviews = reviews
        self.min_confidence = min_confidence
        self.rules = rules or default_rules()
        self.method = method(self.rules)

    async def on_tick(self, partitions: set[int], out: Outbound) -> None:
        """Between batches and while idle: the database answers, or the loop retries this with
        backoff and the worker says it is not ready. The worker reads what normalization
        sends, and normalization sends nothing while the database is away: without this, an
        idle narrative worker would call itself ready through an outage."""
        await self.reviews.reachable()

    async def process(self, events: Sequence[RawEvent], out: Outbound) -> None:
        read: list[tuple[ClinicalDocument, Reading]] = []
        for raw in events:
            document = decode_or_dead_letter(out, raw, codec.CLINICAL_DOCUMENT)
            if document is None:
                continue
            # Off the event loop: a long document takes seconds, and the consumer's heartbeats
            # must go on meanwhile (the loop thread gets the interpreter every few ms).
            reading = await asyncio.to_thread(self._read, document, raw, out)
            if reading is not None:
                read.append((document, reading))
        keys = {k for d, _ in read for k in (memory_key(d), record_memory_key(d))}
        stored = await self.record_facts.recall(list(keys))
        memories: dict[RecordKey, Remembered] = {}
        candidates: list[Candidate] = []
        for document, reading in read:
            key, record_key = memory_key(document), record_memory_key(document)
            previous = memories.get(key) or stored.get(key)
            for fact in (*withdrawn_facts(document, previous, reading.facts), *reading.facts):
                metrics.TEXT_FACTS.labels(document.kind, fact.status).inc()
                out.add(fact_record(fact))
            candidates += reading.candidates
            memory = remembered(document, reading.facts)
            if previous is None or memory.event_time >= previous.event_time:
                memories[key] = memory
                whole = memories.get(record_key) or stored.get(record_key)
                memories[record_key] = record_remembered(document, memory, whole)
        metrics.TEXT_REVIEW_TASKS.inc(len(candidates))
        await self.reviews.add(candidates)
        await self.record_facts.remember(list(memories.values()))

    def _read(self, document: ClinicalDocument, raw: RawEvent, out: Outbound) -> Reading | None:
        started = time.perf_counter()
        try:
            text = None if document.withdrawn else document.text
            findings = extract(text, self.rules) if text else []
            reading = read_findings(
                document, findings, method=self.method, min_confidence=self.min_confidence
            )
        except Exception as exc:
            rejection = core_failure(exc, raw, stage=self.stage, reason_code="NARRATIVE_FAILED")
            publish_dead_letter(out, raw=raw, rejection=rejection)
            return None
        metrics.TEXT_READ_SECONDS.labels(document.kind).observe(time.perf_counter() - started)
        return reading
