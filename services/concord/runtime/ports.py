"""The port a stage takes from the runtime: the transactional outbox (runtime/outbox.py is its
PostgreSQL adapter). A stage depends on this Protocol, so a test hands it a fake."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from concord.runtime.batch import Outbound, OutboundRecord, Producer

# Outbox rows older than this are taken to be left behind (by a worker that died, or by a pass
# that failed after its commit) and published by the stages' timers; a batch's own rows are
# acknowledged and deleted within seconds.
LEFT_BEHIND_SECONDS = 60.0


class OutboxPort(Protocol):
    def publish_written(self, out: Outbound, records: Sequence[OutboundRecord]) -> None:
        """After the store's commit: hand the records it wrote to the outbox to the batch."""

    async def acknowledge(self) -> None:
        """The broker acknowledged what publish_written handed over: forget it."""

    async def drain(self, producer: Producer, *, older_than: float = 0.0) -> int:
        """Publish what was committed but not acknowledged (by an earlier owner, or left
        behind longer than `older_than` seconds); how many."""
