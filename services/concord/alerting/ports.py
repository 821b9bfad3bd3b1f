"""What the alerting stage needs from outside it, as Protocols: the alert store (store.py's
PostgreSQL adapter) and the outbox (runtime.ports.OutboxPort). The tests' fakes implement them
too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from concord.alerting.lifecycle import AlertRecord
from concord.events.models import Alert
from concord.runtime.batch import OutboundRecord


class AlertStorePort(Protocol):
    """Each alert's current state and the history of its revisions."""

    async def load(self, alert_ids: Sequence[str]) -> dict[str, AlertRecord]:
        """The stored alerts among these ids."""

    async def save(
        self,
        changes: Sequence[tuple[AlertRecord, str]],
        history: Sequence[tuple[Alert, str]],
        events: Sequence[OutboundRecord],
    ) -> None:
        """One transaction: each alert's latest state, every revision's history row, and the
        outbox rows of the alerts to publish."""

    async def open_counts(self) -> dict[str, int]:
        """Open (or acknowledged) alerts by severity."""
