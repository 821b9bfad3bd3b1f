"""The normalization worker's stage: decode ingested records, call the core, publish facts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from aiokafka.structs import ConsumerRecord

from concord import metrics
from concord.config import NormalizationSettings
from concord.deadletters import Rejection
from concord.events import codec
from concord.events.models import ClinicalFact
from concord.normalization.patient import normalizable, patient_facts
from concord.runtime.batch import Outbound, OutboundRecord
from concord.runtime.records import raw_event
from concord.runtime.stage import BaseStage, publish_dead_letter
from concord.topics import FACTS, INGESTED


def publish_fact(out: Outbound, *, fact: ClinicalFact) -> None:
    # Keyed by enterprise patient id: all facts of one patient meet in one partition, in order.
    out.add(OutboundRecord(FACTS, codec.CLINICAL_FACT.encode(fact), key=fact.patient_id.encode()))


class NormalizationStage(BaseStage):
    stage = "normalization"
    topics: tuple[str, ...] = (INGESTED,)

    def __init__(self, settings: NormalizationSettings) -> None:
        self.systems = tuple(settings.enterprise_id_systems)

    async def process(self, records: Sequence[ConsumerRecord], out: Outbound) -> None:
        received = datetime.now(UTC)
        for record in records:
            try:
                ingested = codec.INGESTED_RECORD.decode(record.value)
            except codec.CodecError as exc:
                rejection = Rejection("UNDECODABLE_EVENT", f"{exc} [{exc.reason_code}]")
                publish_dead_letter(out, raw=raw_event(record, received), rejection=rejection)
                continue
            if not normalizable(ingested):
                metrics.RECORDS_NOT_NORMALIZED.labels(ingested.format, ingested.operation).inc()
                continue
            outcome = patient_facts(ingested, self.systems)
            if isinstance(outcome, Rejection):
                publish_dead_letter(out, raw=raw_event(record, received), rejection=outcome)
                continue
            for fact in outcome:
                publish_fact(out, fact=fact)
