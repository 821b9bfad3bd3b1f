"""What the ingestion stage needs from outside it, as Protocols: the adapters (dedupe.py's
PostgreSQL window) and the tests' fakes implement them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol


class SeenVersions(Protocol):
    """The de-duplication window (dedupe.py)."""

    async def unseen(self, record_ids: Sequence[str]) -> set[str]:
        """Which of these record ids were never emitted (within the window)."""

    async def remember(self, records: Sequence[tuple[str, str]]) -> None:
        """(record id, source system) pairs now emitted and acknowledged."""

    async def prune(self, before: datetime) -> int:
        """Forget what was first seen before this instant; return how many were forgotten."""
