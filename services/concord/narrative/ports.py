"""What the narrative stage needs from outside it, as Protocols: the PostgreSQL adapters
(review_tasks.py; normalization's record_facts.py for the memory of what each document
asserted) and the tests' fakes implement them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from concord.narrative.reading import Candidate
from concord.normalization.ports import RecordFacts

__all__ = ["RecordFacts", "TextReviews"]


class TextReviews(Protocol):
    """Text review tasks: findings not sure enough to be facts (review_tasks.py)."""

    async def add(self, candidates: Sequence[Candidate]) -> None:
        """Keep each candidate as an open task; one already kept (a redelivered document)
        stays as it is."""

    async def reachable(self) -> None:
        """Return once the store answers; raise what it raises when it does not."""
