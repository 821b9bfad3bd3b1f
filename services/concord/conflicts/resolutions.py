"""A reviewer's decision on an alert, published to concord.resolutions (`concord alerts
resolve`): the conflicts stage resolves the conflict, and the alert follows."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from concord.events import codec
from concord.events.models import ConflictResolution, ResolutionDecision
from concord.runtime.reading import client_options
from concord.topics import RESOLUTIONS


class NotResolvable(ValueError):
    """The alert named cannot be decided (unknown, or no longer open). Names ids only."""


async def decide(
    dsn: str,
    kafka: str | dict[str, Any],
    alert_id: str,
    decision: ResolutionDecision,
    *,
    chosen_value: str | None,
    by: str,
    at: datetime,
) -> ConflictResolution:
    """Publish the decision on the alert's conflict (an alert's id is its conflict's)."""
    from concord.runtime.db import create_pool

    pool = await create_pool(dsn, 1)
    try:
        row = await pool.fetchrow(
            "SELECT patient_id, attribute, status, kind FROM alerts WHERE alert_id = $1", alert_id
        )
    finally:
        await pool.close()
    if row is None:
        raise NotResolvable(f"no alert {alert_id}: `concord alerts list` shows their ids")
    if row["kind"] == "STALE":
        raise NotResolvable(
            f"alert {alert_id} is a stale record: it resolves when its source confirms or "
            "updates what it said"
        )
    if row["status"] in ("RESOLVED", "DISMISSED"):
        raise NotResolvable(f"alert {alert_id} is {row['status'].lower()} already")
    resolution = ConflictResolution(
        resolution_id=hashlib.sha256(
            f"{alert_id}\x1f{by}\x1f{at.isoformat()}".encode()
        ).hexdigest()[:32],
        conflict_id=alert_id,
        patient_id=row["patient_id"],
        attribute=row["attribute"],
        decision=decision,
        chosen_value=chosen_value,
        resolved_by=by,
        resolved_at=at,
    )
    producer = AIOKafkaProducer(**client_options(kafka), acks="all", enable_idempotence=False)
    try:
        await producer.start()
        await producer.send_and_wait(
            RESOLUTIONS,
            codec.CONFLICT_RESOLUTION.encode(resolution),
            key=resolution.patient_id.encode(),
        )
    finally:
        await producer.stop()
    return resolution
