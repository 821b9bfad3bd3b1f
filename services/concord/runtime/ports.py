"""The port a stage takes from the runtime: the transactional outbox (runtime/outbox.py is its
PostgreSQL adapter). A stage depends on this Protocol, so a test hands it a fake."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from concord.runtime.batch import Outbound, OutboundRecord, Producer


class OutboxPort(Protocol):
    def publish_written(self, out: Outbound, records: Sequence[OutboundRecord]) -> None:
        """After the store's commit: hand the records it wrote to the outbox to the batch."""

    async def acknowledge(self) -> None:
        """The broker acknowledged what publish_written handed over: forget it."""

    async def drain(self, producer: Producer) -> int:
        """Publish what an earlier owner committed but did not get acknowledged; how many."""
