"""Builders and fakes more than one test module needs (imported as `builders`: pytest puts
tests/ on the path, as for mllp_client and pipeline_tools)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from concord.alerting.lifecycle import AlertRecord
from concord.alerting.ports import AlertStorePort
from concord.events.models import Alert, Assertion, FactStatus, IngestedRecord, Provenance
from concord.events.raw import RawEvent
from concord.ingestion.fhir import ingest_fhir
from concord.ingestion.ports import SeenVersions
from concord.normalization.identity.index import InMemoryIdentityIndex
from concord.normalization.identity.resolution import (
    IdentityRequest,
    LocalId,
    Resolution,
    apply,
    resolve,
)
from concord.normalization.ports import IdentityStore, MergeSignal
from concord.publishing import read_file
from concord.runtime.batch import Outbound, OutboundRecord, Producer
from concord.runtime.ports import OutboxPort


def assertion_at(
    source: str,
    value: str | None,
    at: datetime,
    *,
    fact_id: str,
    status: FactStatus = "ASSERTED",
    unit: str | None = None,
    record: str = "r",
    display: str | None = None,
) -> Assertion:
    """One source's assertion, effective and said at `at`."""
    return Assertion(
        source_system=source,
        value=value,
        display=display,
        status=status,
        fact_id=fact_id,
        unit=unit,
        effective_time=at,
        provenance=Provenance(
            source_system=source,
            source_record_id=record,
            event_time=at,
            received_time=at,
            raw_topic="ehr.raw.fhir",
            raw_partition=0,
            raw_offset=0,
            payload_sha256="00" * 32,
        ),
    )


def raw(
    value: bytes | None,
    *,
    topic: str,
    partition: int = 0,
    offset: int = 0,
    key: bytes | None = None,
    headers: Sequence[tuple[str, bytes | None]] = (),
    received_time: datetime | None = None,
) -> RawEvent:
    """A consumed record as the batch loop hands it to a stage (received now, by default)."""
    return RawEvent(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        headers=tuple(headers),
        received_time=received_time or datetime.now(UTC),
    )


def published_events(path: Path, source: str, received_time: datetime) -> list[RawEvent]:
    """A file's records as `concord publish` sends them and a stage then consumes them: one
    partition, offsets in file order, the source in the header."""
    return [
        raw(
            message.value,
            topic=message.topic,
            offset=offset,
            key=message.key,
            headers=(("source", source.encode()),),
            received_time=received_time,
        )
        for offset, message in enumerate(read_file(path, source))
    ]


def ingested_fhir(document: dict[str, Any], source: str) -> IngestedRecord:
    """One FHIR resource as ingestion makes it a record (it must ingest as exactly one)."""
    consumed = RawEvent(
        topic="ehr.raw.fhir",
        partition=0,
        offset=0,
        key=None,
        value=orjson.dumps(document),
        headers=(("source", source.encode()),),
        received_time=datetime(2024, 3, 9, tzinfo=UTC),
    )
    records = ingest_fhir(consumed, max_payload_bytes=1 << 20)
    assert isinstance(records, list), records
    [record] = records
    return record


class FakeIdentities(IdentityStore):
    """The identity port on the pure core, with the crosswalk and index in memory."""

    def __init__(self) -> None:
        self.crosswalk: dict[LocalId, str] = {}
        self.index = InMemoryIdentityIndex()
        self.signals: list[OutboundRecord] = []  # as the outbox would hold them

    async def resolve_batch(
        self, requests: Sequence[IdentityRequest], merge_signal: MergeSignal | None = None
    ) -> list[Resolution]:
        resolutions = []
        for index, request in enumerate(requests):
            resolution = resolve(request, crosswalk=self.crosswalk, index=self.index)
            apply(request, resolution, self.crosswalk, self.index)
            resolutions.append(resolution)
            if merge_signal is not None:
                self.signals += [
                    merge_signal(index, resolution.enterprise_id, a) for a in resolution.absorbed
                ]
        return resolutions


class FakeSeenVersions(SeenVersions):
    """The de-duplication window in memory: (version key, record id) -> when first seen, with a
    log of each prune's instant and limit."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], datetime] = {}
        self.pruned: list[datetime] = []
        self.limits: list[int] = []

    async def emitted(self, version_keys: Sequence[str]) -> dict[str, set[str]]:
        wanted = set(version_keys)
        found: dict[str, set[str]] = {}
        for key, record_id in self.seen:
            if key in wanted:
                found.setdefault(key, set()).add(record_id)
        return found

    async def remember(self, records: Sequence[tuple[str, str, str]]) -> None:
        now = datetime.now(UTC)
        for key, record_id, _source in records:
            self.seen.setdefault((key, record_id), now)

    async def prune(self, before: datetime, limit: int) -> int:
        self.pruned.append(before)
        self.limits.append(limit)
        old = [row for row, first_seen in self.seen.items() if first_seen < before][:limit]
        for row in old:
            del self.seen[row]
        return len(old)


class FakeProducer(Producer):
    """Every send acknowledged at once, and kept: (topic, value, key, headers)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, Sequence[tuple[str, bytes]] | None]] = []

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[None]:
        self.sent.append((topic, value, key, headers))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class FakeAlerts(AlertStorePort):
    """Alerts and their history in memory, as PostgreSQL keeps them; `refuse` names conflict
    ids whose save fails as a value PostgreSQL refuses would."""

    def __init__(self, refuse: Sequence[str] = ()) -> None:
        self.alerts: dict[str, AlertRecord] = {}
        self.history: list[tuple[Alert, str]] = []
        self.refuse = set(refuse)

    async def load(self, alert_ids: Sequence[str]) -> dict[str, AlertRecord]:
        return {i: self.alerts[i] for i in alert_ids if i in self.alerts}

    async def save(
        self,
        changes: Sequence[tuple[AlertRecord, str]],
        history: Sequence[tuple[Alert, str]],
        events: Sequence[OutboundRecord],
    ) -> None:
        if self.refuse & {record.alert.alert_id for record, _ in changes}:
            raise ValueError("a value the database refuses")  # nothing saved: a rollback
        self.alerts.update((record.alert.alert_id, record) for record, _ in changes)
        self.history += history

    async def open_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.alerts.values():
            if record.alert.status in ("OPEN", "ACKNOWLEDGED"):
                counts[record.alert.severity] = counts.get(record.alert.severity, 0) + 1
        return counts


class FakeOutbox(OutboxPort):
    """The outbox without a database: what a store wrote goes to the batch at once, and
    `pending` is what an earlier owner left for drain() to publish."""

    def __init__(self, pending: int = 0) -> None:
        self.pending = pending
        self.acknowledged = 0
        self.drained_with: list[Producer] = []

    def publish_written(self, out: Outbound, records: Sequence[OutboundRecord]) -> None:
        for record in records:
            out.add(record)

    async def acknowledge(self) -> None:
        self.acknowledged += 1

    async def drain(self, producer: Producer, *, older_than: float = 0.0) -> int:
        self.drained_with.append(producer)
        drained, self.pending = self.pending, 0
        return drained


def listify(value: Any) -> Any:
    """A model_dump as an Avro reader returns it: tuples of array fields as lists."""
    if isinstance(value, dict):
        return {k: listify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [listify(v) for v in value]
    return value
