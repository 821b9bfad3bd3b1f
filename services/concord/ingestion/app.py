"""The ingestion worker's stage: decode nothing, validate via the core, publish the outcome."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from aiokafka.structs import ConsumerRecord

from concord.config import IngestionSettings
from concord.deadletters import Rejection
from concord.events import codec
from concord.events.models import IngestedRecord
from concord.ingestion.fhir import ingest_fhir
from concord.runtime.batch import Outbound, OutboundRecord
from concord.runtime.records import raw_event
from concord.runtime.stage import BaseStage, publish_dead_letter
from concord.topics import INGESTED, RAW_FHIR


def publish_ingested(out: Outbound, *, record: IngestedRecord) -> None:
    # Keyed by source and record, so the versions of one record stay in order.
    key = f"{record.provenance.source_system}/{record.provenance.source_record_id}".encode()
    out.add(OutboundRecord(INGESTED, codec.INGESTED_RECORD.encode(record), key=key))


class IngestionStage(BaseStage):
    stage = "ingestion"
    topics: tuple[str, ...] = (RAW_FHIR,)

    def __init__(self, settings: IngestionSettings) -> None:
        self.max_payload_bytes = settings.max_payload_bytes

    async def process(self, records: Sequence[ConsumerRecord], out: Outbound) -> None:
        received = datetime.now(UTC)
        for record in records:
            raw = raw_event(record, received)
            outcome = ingest_fhir(raw, max_payload_bytes=self.max_payload_bytes)
            if isinstance(outcome, Rejection):
                publish_dead_letter(out, raw=raw, rejection=outcome)
                continue
            for ingested in outcome:
                publish_ingested(out, record=ingested)
