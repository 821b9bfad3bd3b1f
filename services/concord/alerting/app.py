"""The alerting worker's stage: decode conflict events, move alerts, persist, publish."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from concord import metrics
from concord.alerting.lifecycle import AlertRecord, apply_conflict_event, change_reason
from concord.alerting.ports import AlertStorePort
from concord.events import codec
from concord.events.models import Alert, ConflictEvent
from concord.events.raw import RawEvent
from concord.runtime.batch import Outbound, OutboundRecord, Producer
from concord.runtime.ports import LEFT_BEHIND_SECONDS, OutboxPort
from concord.runtime.stage import BaseStage, decode_or_dead_letter
from concord.topics import ALERTS, CONFLICTS

log = logging.getLogger(__name__)
SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
GAUGE_REFRESH_SECONDS = 10.0


def alert_record(alert: Alert) -> OutboundRecord:
    return OutboundRecord(ALERTS, codec.ALERT.encode(alert), key=alert.patient_id.encode())


class AlertingStage(BaseStage):
    stage = "alerting"
    topics: tuple[str, ...] = (CONFLICTS,)

    def __init__(self, store: AlertStorePort, outbox: OutboxPort, producer: Producer) -> None:
        self.store = store
        self.outbox = outbox
        self.producer = producer
        self._published: list[tuple[ConflictEvent, datetime]] = []
        self._gauge_refreshed: float | None = None  # never; see IngestionStage.pruned_at

    async def on_assigned(self, partitions: set[int]) -> None:
        drained = await self.outbox.drain(self.producer)
        if drained:
            log.info("published %d outbox alerts left by an earlier owner", drained)
        await self._refresh_open_gauge()

    async def on_tick(self, partitions: set[int], out: Outbound) -> None:
        drained = await self.outbox.drain(self.producer, older_than=LEFT_BEHIND_SECONDS)
        if drained:
            log.info("published %d outbox alerts left behind", drained)

    async def on_produced(self) -> None:
        await self.outbox.acknowledge()
        published_at = datetime.now(UTC)
        if self._published:
            since_received = metrics.ALERT_LATENCY.labels("received")
            since_event = metrics.ALERT_LATENCY.labels("event")
            for event, _ in self._published:
                latest_event = max(a.provenance.event_time for a in event.assertions)
                since_received.observe((published_at - event.trigger_received_time).total_seconds())
                since_event.observe(max(0.0, (published_at - latest_event).total_seconds()))
        refreshed = self._gauge_refreshed
        if self._published and (
            refreshed is None or time.monotonic() - refreshed > GAUGE_REFRESH_SECONDS
        ):
            await self._refresh_open_gauge()
        self._published = []

    async def process(self, events: Sequence[RawEvent], out: Outbound) -> None:
        decoded = [
            event
            for raw in events
            if (event := decode_or_dead_letter(out, raw, codec.CONFLICT_EVENT)) is not None
        ]
        if not decoded:
            return
        current = await self.store.load([e.conflict_id for e in decoded])
        now = datetime.now(UTC)
        history: list[tuple[Alert, str]] = []
        to_publish: list[OutboundRecord] = []
        published: list[tuple[ConflictEvent, datetime]] = []
        for event in decoded:
            updated = apply_conflict_event(current.get(event.conflict_id), event, now=now)
            if updated is None:
                continue
            current[event.conflict_id] = updated
            history.append((updated.alert, change_reason(event)))
            to_publish.append(alert_record(updated.alert))
            published.append((event, now))
        if not history:
            return
        latest: dict[str, tuple[AlertRecord, str]] = {}
        for alert, reason in history:
            latest[alert.alert_id] = (current[alert.alert_id], reason)
        await self.store.save(list(latest.values()), history, to_publish)
        self.outbox.publish_written(out, to_publish)
        # Only once saved: a pass that fails (and is retried or split) leaves no trace here.
        self._published += published

    async def _refresh_open_gauge(self) -> None:
        # A count over every open alert: seconds-old is fresh enough for a dashboard.
        self._gauge_refreshed = time.monotonic()
        counts = await self.store.open_counts()
        for severity in SEVERITIES:
            metrics.ALERTS_OPEN.labels(severity).set(counts.get(severity, 0))
