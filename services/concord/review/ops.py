"""The operational view (the sre and admin roles, permission ops.read): counts only, with no
alert, task, patient or user id at all, and the refresher that computes the review service's
gauges (concord.review.metrics) from the same statements.

One statement per gauge family, each a GROUP BY over the open alerts (index alerts_status_opened)
or the identity review tasks. The refresher survives a database outage: a failed family keeps
its last values, counts the failure (concord_review_refresh_failures_total) and logs the error's
type only (asyncpg's messages can quote values)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg
from pydantic import BaseModel, ConfigDict

from concord.events.models import AlertKind, Severity
from concord.review import metrics
from concord.review.access import Permission, Principal, require

log = logging.getLogger("concord.review.ops")

REFRESH_SECONDS = 15.0  # how often the review service refreshes its gauges
STATEMENT_TIMEOUT_SECONDS = 10.0
DECISIONS_WINDOW = timedelta(hours=24)

AgeBucket = Literal["lt_1h", "1h_4h", "4h_24h", "1d_7d", "gt_7d"]  # metrics.AGE_BUCKETS

# The alerts waiting for a decision, by kind, severity, status and age bucket ($1: now). The
# CASE is metrics.AGE_BUCKETS (tests/unit/test_review_metrics.py keeps them in step).
OPEN_ALERTS = """
SELECT kind, severity, status,
       CASE WHEN $1::timestamptz - opened_at < interval '1 hour' THEN 'lt_1h'
            WHEN $1::timestamptz - opened_at < interval '4 hours' THEN '1h_4h'
            WHEN $1::timestamptz - opened_at < interval '24 hours' THEN '4h_24h'
            WHEN $1::timestamptz - opened_at < interval '7 days' THEN '1d_7d'
            ELSE 'gt_7d' END AS age_bucket,
       count(*) AS n
FROM alerts
WHERE status IN ('OPEN', 'ACKNOWLEDGED')
GROUP BY 1, 2, 3, 4
"""

IDENTITY_TASKS = """
SELECT status, decision, count(*) AS n FROM identity_review_tasks GROUP BY status, decision
"""

# Decisions since $1 by kind (metrics.decision_kind: a chosen value one of the alert's sources
# sent, or a correction none of them did), and how many overruled the policy's proposal.
DECISIONS = """
SELECT CASE WHEN d.decision = 'DISMISSED' THEN 'dismissed'
            WHEN d.decision = 'ACCEPTED_PROPOSAL' THEN 'accepted'
            WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(a.assertions) e
                         WHERE e->>'value' = d.chosen_value) THEN 'chosen'
            ELSE 'corrected' END AS kind,
       count(*) AS n,
       count(*) FILTER (WHERE d.overrules) AS overruled
FROM alert_decisions d JOIN alerts a USING (alert_id)
WHERE d.decided_at >= $1
GROUP BY 1
"""


class Counts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OpenAlertCount(Counts):
    kind: AlertKind
    severity: Severity
    status: Literal["OPEN", "ACKNOWLEDGED"]
    age_bucket: AgeBucket
    count: int


class OpsSummary(Counts):
    """Counts only: no alert, task, patient or user id."""

    at: datetime
    open_alerts: tuple[OpenAlertCount, ...]  # the groups that have any, largest age last
    open_alerts_total: int
    decisions_last_24h: dict[str, int]  # accepted, chosen, corrected, dismissed (0 included)
    corrections_last_24h: int  # decisions that overruled the policy's proposal
    identity_tasks_open: int


async def open_alerts(pool: asyncpg.Pool, now: datetime) -> list[OpenAlertCount]:
    rows = await pool.fetch(OPEN_ALERTS, now, timeout=STATEMENT_TIMEOUT_SECONDS)
    order = {name: i for i, name in enumerate(metrics.AGE_BUCKET_NAMES)}
    counts = [
        OpenAlertCount(
            kind=row["kind"],
            severity=row["severity"],
            status=row["status"],
            age_bucket=row["age_bucket"],
            count=row["n"],
        )
        for row in rows
    ]
    return sorted(counts, key=lambda c: (order[c.age_bucket], c.kind, c.severity, c.status))


async def identity_tasks(pool: asyncpg.Pool) -> dict[str, int]:
    """Tasks by state (metrics.IDENTITY_STATES), every state present."""
    rows = await pool.fetch(IDENTITY_TASKS, timeout=STATEMENT_TIMEOUT_SECONDS)
    states = dict.fromkeys(metrics.IDENTITY_STATES, 0)
    for row in rows:
        state = _identity_state(row["status"], row["decision"])
        if state is not None:
            states[state] += row["n"]
    return states


def _identity_state(status: str, decision: str | None) -> str | None:
    if status == "OPEN":
        return "open"
    if status == "DECIDED" and decision == "LINKED":
        return "linked"
    if status == "DECIDED" and decision == "KEPT_APART":
        return "kept_apart"
    return None


async def decisions_since(pool: asyncpg.Pool, since: datetime) -> tuple[dict[str, int], int]:
    """(decisions by kind, every kind present; how many overruled the proposal)."""
    rows = await pool.fetch(DECISIONS, since, timeout=STATEMENT_TIMEOUT_SECONDS)
    kinds = dict.fromkeys(metrics.DECISION_KINDS, 0)
    overruled = 0
    for row in rows:
        kinds[row["kind"]] += row["n"]
        overruled += row["overruled"]
    return kinds, overruled


class OpsView:
    """GET /api/v1/ops/summary: the use case."""

    def __init__(
        self, pool: asyncpg.Pool, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.pool = pool
        self.clock = clock

    async def summary(self, principal: Principal) -> OpsSummary:
        require(principal, Permission.OPS_READ)
        now = self.clock()
        alerts = await open_alerts(self.pool, now)
        decisions, overruled = await decisions_since(self.pool, now - DECISIONS_WINDOW)
        tasks = await identity_tasks(self.pool)
        return OpsSummary(
            at=now,
            open_alerts=tuple(alerts),
            open_alerts_total=sum(c.count for c in alerts),
            decisions_last_24h=decisions,
            corrections_last_24h=overruled,
            identity_tasks_open=tasks["open"],
        )


class MetricsRefresher:
    """Sets the review service's gauges from PostgreSQL; `refresh()` on a timer."""

    def __init__(
        self, pool: asyncpg.Pool, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.pool = pool
        self.clock = clock

    async def refresh(self) -> None:
        """Each family on its own: one failing leaves the other's refresh standing."""
        await self._family("alerts_open", self._alerts_open)
        await self._family("identity_tasks", self._identity_tasks)

    async def _family(self, family: str, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except Exception as error:  # the gauges keep their last values
            metrics.REFRESH_FAILURES.labels(family).inc()
            log.warning("refreshing the %s gauges failed (%s)", family, type(error).__name__)
        else:
            metrics.REFRESHED_AT.labels(family).set(self.clock().timestamp())

    async def _alerts_open(self) -> None:
        found: dict[tuple[str, str, str, str], int] = {
            (c.kind, c.severity, c.status, c.age_bucket): c.count
            for c in await open_alerts(self.pool, self.clock())
        }
        # Every combination, so that a group that emptied reads 0, not its last count.
        for kind in metrics.KINDS:
            for severity in metrics.SEVERITIES:
                for status in metrics.OPEN_STATUSES:
                    for bucket in metrics.AGE_BUCKET_NAMES:
                        metrics.ALERTS_OPEN.labels(kind, severity, status, bucket).set(
                            found.get((kind, severity, status, bucket), 0)
                        )

    async def _identity_tasks(self) -> None:
        for state, count in (await identity_tasks(self.pool)).items():
            metrics.IDENTITY_TASKS.labels(state).set(count)
