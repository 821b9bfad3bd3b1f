"""Which failures pass and which stay: a transient one (the database or the broker away, a
serialization failure, a timeout) is retried with capped exponential backoff while the worker
reports not ready; any other is taken to be the record's, so the loop isolates it (split the
batch until the record that fails is alone) and dead-letters it."""

from __future__ import annotations

import asyncio
import random

import asyncpg
from aiokafka.errors import KafkaError

# SQLSTATE classes and codes that say "try again", whatever the record: 08 connection
# exceptions, 40001 serialization failure, 40P01 deadlock, 53 insufficient resources,
# 57P01-57P03 the server shutting down or not yet accepting connections, 55P03 lock not
# available, 57014 a statement cancelled by statement_timeout.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53")
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03", "55P03", "57014"})


def is_transient(exc: BaseException) -> bool:
    """True when the same work may well succeed if tried again later."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state.startswith(_TRANSIENT_SQLSTATE_CLASSES) or state in _TRANSIENT_SQLSTATES
    if isinstance(exc, asyncpg.InterfaceError):
        # A connection closed under the query, or a pool closing: not the record's fault.
        return True
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False)) or type(exc).__name__ in {
            "KafkaConnectionError",
            "NodeNotReadyError",
            "RequestTimedOutError",
            "KafkaTimeoutError",
        }
    return isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError)


class PartitionLost(Exception):
    """A write was fenced off: another worker has claimed a partition this one still wrote
    for (it lost the partition in a rebalance it has not heard of yet). Not the record's
    fault, and not to retry: the batch is dropped, uncommitted, for the new owner."""

    def __init__(self, stage: str, partitions: set[int]) -> None:
        self.partitions = partitions
        super().__init__(f"{stage} lost partitions {sorted(partitions)} to another worker")


class Backoff:
    """Capped exponential backoff, jittered so that workers failing together do not retry
    together: about initial, 2·initial, 4·initial, … up to cap seconds, each less up to half."""

    def __init__(self, initial: float = 0.2, cap: float = 30.0) -> None:
        self.initial = initial
        self.cap = cap
        self.attempts = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * 2**self.attempts)
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret

    def reset(self) -> None:
        self.attempts = 0
