"""The ingestion worker's stage: decode nothing, validate via the core, publish the outcome."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial

from concord import metrics
from concord.config import IngestionSettings
from concord.deadletters import Rejection
from concord.events import codec
from concord.events.models import IngestedRecord
from concord.events.raw import RawEvent
from concord.ingestion.claims import ingest_claim
from concord.ingestion.common import WARNINGS_HEADER, version_key_of
from concord.ingestion.fhir import SUPPORTED_TYPES, ingest_fhir, prepare_checks
from concord.ingestion.hl7v2 import ingest_hl7v2, zones_from
from concord.ingestion.ports import ANY_CONTENT, SeenVersions
from concord.runtime.batch import Outbound, OutboundRecord, publish_dead_letter
from concord.runtime.stage import BaseStage, core_failure
from concord.topics import INGESTED, RAW_CLAIMS, RAW_FHIR, RAW_HL7V2

# The window is pruned from the loop's tick, in DELETEs of PRUNE_CHUNK_ROWS rows (tens of
# milliseconds each, so no statement holds its locks long) for at most PRUNE_BUDGET_SECONDS a
# tick; a backlog goes on at the next tick (TICK_SECONDS later), and once none is left the next
# prune waits PRUNE_EVERY_SECONDS. Measured (benchmarks/dedupe_prune.py): ~100,000 rows a
# tick, ~20,000 rows/s per worker sustained, several times what a worker can ingest.
PRUNE_EVERY_SECONDS = 60.0
PRUNE_CHUNK_ROWS = 5_000
PRUNE_BUDGET_SECONDS = 0.5


def patient_key(record: IngestedRecord) -> bytes:
    """`<source>/<the source's patient>`: every record about one source patient in one
    partition, in the order sent, so that normalization reads a Patient before the results a
    Bundle (or a later message) files under it; a record's versions stay in order with it.
    Without a patient, the record itself."""
    patient = record.patient_ref or record.provenance.source_record_id
    return f"{record.provenance.source_system}/{patient}".encode()


def publish_ingested(out: Outbound, *, record: IngestedRecord) -> None:
    """The record on concord.ingested; one that carries warnings says how many in a header, so
    that `concord warnings list` need not decode every record. Counted by warning reason, and
    by type when it is kept for provenance only."""
    headers = ((WARNINGS_HEADER, str(len(record.warnings)).encode()),) if record.warnings else ()
    value = codec.INGESTED_RECORD.encode(record)
    out.add(OutboundRecord(INGESTED, value, key=patient_key(record), headers=headers))
    for warning in record.warnings:
        metrics.RECORD_WARNINGS.labels(out.stage, warning.reason_code).inc()
    if record.format == "FHIR_R4" and record.resource_type not in SUPPORTED_TYPES:
        # A FHIR R4 type name (ingestion refuses any other) or Bundle: a bounded label.
        metrics.RECORDS_NOT_COMPARED.labels(record.format, record.resource_type).inc()


Ingest = Callable[[RawEvent], list[IngestedRecord] | Rejection]


def ingest_functions(settings: IngestionSettings) -> dict[str, Ingest]:
    """Each raw topic's core with the deployment's limits and zones: the stage's, and the
    MLLP gateway's, which must accept exactly what the stage will."""
    limit = settings.max_payload_bytes
    zone_of = zones_from(settings.source_time_zones, settings.default_time_zone)
    prepare_checks()
    return {
        RAW_FHIR: partial(ingest_fhir, max_payload_bytes=limit),
        RAW_HL7V2: partial(ingest_hl7v2, max_payload_bytes=limit, zone_of=zone_of),
        RAW_CLAIMS: partial(ingest_claim, max_payload_bytes=limit),
    }


class IngestionStage(BaseStage):
    stage = "ingestion"
    topics: tuple[str, ...] = (RAW_FHIR, RAW_HL7V2, RAW_CLAIMS)

    def __init__(self, settings: IngestionSettings, seen: SeenVersions) -> None:
        self.seen = seen
        self.window = timedelta(days=settings.dedupe_window_days)
        # None, not 0.0: time.monotonic() counts from boot, so 0.0 would mean "recently"
        # on a machine up for less than PRUNE_EVERY_SECONDS.
        self.pruned_at: float | None = None
        self.prune_backlog = False  # the last tick's budget ran out before the window did
        # (version key, record id, source) of the batch's records, remembered once acknowledged.
        self.emitted: list[tuple[str, str, str]] = []
        self.ingest = ingest_functions(settings)

    async def process(self, events: Sequence[RawEvent], out: Outbound) -> None:
        # A pass that raises (an output too large to produce, the database away) is dropped,
        # output and all: what it emitted must not be remembered either, or a replay of its
        # records (a Bundle's entries before the one too large) would be taken for duplicates.
        mark = len(self.emitted)
        try:
            await self._process(events, out)
        except BaseException:
            del self.emitted[mark:]
            raise

    async def _process(self, events: Sequence[RawEvent], out: Outbound) -> None:
        accepted: list[IngestedRecord] = []
        for raw in events:
            outcome = self._ingest(raw)
            if isinstance(outcome, Rejection):
                publish_dead_letter(out, raw=raw, rejection=outcome)
            else:
                accepted.extend(outcome)
        keys = [version_key_of(r) for r in accepted]
        emitted = await self.seen.emitted(list(dict.fromkeys(keys)))
        for ingested, key in zip(accepted, keys, strict=True):
            topic = ingested.provenance.raw_topic
            ids = emitted.setdefault(key, set())  # a repeat within the batch is one too
            if ingested.record_id in ids or ANY_CONTENT in ids:
                metrics.INGESTION_DUPLICATES.labels(topic).inc()
                continue
            if ids:
                # The sender re-used the version's key for other content: a record of its own,
                # whose id (covering its content) differs from the first one's.
                metrics.INGESTION_REUSED_VERSIONS.labels(topic).inc()
            ids.add(ingested.record_id)
            publish_ingested(out, record=ingested)
            self.emitted.append((key, ingested.record_id, ingested.provenance.source_system))

    def _ingest(self, raw: RawEvent) -> list[IngestedRecord] | Rejection:
        try:
            return self.ingest[raw.topic](raw)
        except Exception as exc:
            return core_failure(exc, raw, stage=self.stage, reason_code="INGESTION_FAILED")

    async def on_produced(self) -> None:
        emitted, self.emitted = self.emitted, []
        await self.seen.remember(emitted)

    async def on_tick(self, partitions: set[int], out: Outbound) -> None:
        """Prune the window: between batches, so a prune never delays one by more than its
        budget, and also while idle, so the window shrinks when no record comes."""
        started = time.monotonic()
        due = self.pruned_at is None or started - self.pruned_at > PRUNE_EVERY_SECONDS
        if not (due or self.prune_backlog):
            return
        self.pruned_at = started
        before = datetime.now(UTC) - self.window
        while await self.seen.prune(before, PRUNE_CHUNK_ROWS) >= PRUNE_CHUNK_ROWS:
            if time.monotonic() - started >= PRUNE_BUDGET_SECONDS:
                self.prune_backlog = True
                return
        self.prune_backlog = False
