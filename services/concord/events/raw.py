"""A raw record as the pure cores see it: the bytes, where they were read, and when."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

Headers = tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True)
class RawEvent:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    # As sent: in order, repeated keys kept, a header's value may be null.
    headers: Headers
    received_time: datetime

    def header(self, key: str) -> bytes | None:
        """The first value of a header, or None when absent or null."""
        return next((value for name, value in self.headers if name == key), None)
