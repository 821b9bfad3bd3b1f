"""What the ingestion stage needs from outside it, as Protocols: the adapters (dedupe.py's
PostgreSQL window) and the tests' fakes implement them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

# The record id of a version remembered before contents were (migration 0014): whatever content
# comes under its key counts as a repeat of it.
ANY_CONTENT = ""


class SeenVersions(Protocol):
    """The de-duplication window (dedupe.py): which versions were emitted, under which record
    ids (one per content the version came with)."""

    async def emitted(self, version_keys: Sequence[str]) -> dict[str, set[str]]:
        """For each of these version keys emitted within the window, the record ids it was
        emitted under (ANY_CONTENT for a version remembered without them)."""

    async def remember(self, records: Sequence[tuple[str, str, str]]) -> None:
        """(version key, record id, source system) of records now emitted and acknowledged."""

    async def prune(self, before: datetime, limit: int) -> int:
        """Forget at most `limit` of what was first seen before this instant, in one short
        statement; return how many were forgotten (fewer than `limit`: none is left)."""
