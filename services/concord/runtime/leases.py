"""Partition leases in PostgreSQL: fencing for state written by the owner of a partition.

aiokafka tells a worker that it lost a partition only when it next hears from the group
coordinator; a worker paused (a long GC, a stalled network) may still be writing a batch
while the partition's new owner already works. Each assignment raises the partition's epoch
(claim), and each write transaction first reads the epochs of the partitions it writes for,
FOR SHARE (check): a claim waits for a write in flight, and a write after a claim by someone
else raises PartitionLost, so its transaction rolls back.
"""

from __future__ import annotations

from collections.abc import Collection

import asyncpg

from concord.runtime.faults import PartitionLost

_CLAIM = """
INSERT INTO partition_leases (stage, kafka_partition, epoch)
SELECT $1, p, 1 FROM unnest($2::int[]) AS p
ON CONFLICT (stage, kafka_partition) DO UPDATE
    SET epoch = partition_leases.epoch + 1, claimed_at = now()
RETURNING kafka_partition, epoch
"""
_CHECK = """
SELECT kafka_partition, epoch FROM partition_leases
WHERE stage = $1 AND kafka_partition = ANY($2::int[])
FOR SHARE
"""


class PartitionLeases:
    def __init__(self, pool: asyncpg.Pool, stage: str) -> None:
        self.pool = pool
        self.stage = stage
        self.epochs: dict[int, int] = {}

    async def claim(self, partitions: Collection[int]) -> None:
        """This worker was assigned the partitions: fence off their earlier owners."""
        if not partitions:
            return
        rows = await self.pool.fetch(_CLAIM, self.stage, sorted(partitions))
        self.epochs.update({row["kafka_partition"]: row["epoch"] for row in rows})

    def release(self, partitions: Collection[int]) -> None:
        for partition in partitions:
            self.epochs.pop(partition, None)

    async def check(self, conn: asyncpg.Connection, partitions: Collection[int]) -> None:
        """Inside the write's transaction: raise PartitionLost unless this worker still holds
        every one of the partitions."""
        if not partitions:
            return
        rows = await conn.fetch(_CHECK, self.stage, sorted(partitions))
        current = {row["kafka_partition"]: row["epoch"] for row in rows}
        lost = {p for p in partitions if p not in self.epochs or current.get(p) != self.epochs[p]}
        if lost:
            self.release(lost)
            raise PartitionLost(self.stage, lost)
