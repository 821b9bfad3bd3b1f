"""The sre's view and the review service's metrics against the real PostgreSQL, with tokens
signed by a local key: GET /api/v1/ops/summary gives counts that match the planted alerts and
no id of any kind; a role without ops.read gets 403; the refresher's gauges agree with the
summary; a reviewer's acknowledgement and decisions are observed; /metrics carries no id.

The database is the session's: counts are compared before and after planting, at one fixed
time for both, and the tests of this module run one after the other."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from concord.events.models import Alert
from concord.normalization.identity_store import PostgresIdentityStore
from concord.review import metrics
from concord.review.access import Principal, Role
from concord.review.ops import MetricsRefresher, OpsView
from concord.stack.postgres import PostgresInfo
from identity_tools import review_task_of
from review_tools import ReviewApp, local_settings, plant_alerts, review_alert, review_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


@pytest_asyncio.fixture
async def api(
    postgres: PostgresInfo, pool: asyncpg.Pool, tmp_path: Path
) -> AsyncIterator[ReviewApp]:
    now = datetime.now(UTC).replace(microsecond=0)  # the clock of the app's use cases, fixed
    review = review_app(pool, local_settings(tmp_path, dsn=postgres.dsn), clock=lambda: now)
    metrics.add_metrics_route(review.app)  # as the service does
    async with review.client:
        yield review


def _alert(
    token: str, n: int, now: datetime, *, age: timedelta, severity: str, kind: str = "CONFLICT"
) -> Alert:
    """Opened `age` before `now`; the token in every id."""
    return review_alert(
        token, n, opened_at=now - age, severity=severity, kind=kind, token_in_ids=True
    )


Group = tuple[str, str, str, str]  # kind, severity, status, age bucket


def _groups(summary: dict[str, Any]) -> dict[Group, int]:
    return {
        (g["kind"], g["severity"], g["status"], g["age_bucket"]): g["count"]
        for g in summary["open_alerts"]
    }


def _delta(before: dict[Group, int], after: dict[Group, int]) -> dict[Group, int]:
    return {
        group: after.get(group, 0) - before.get(group, 0)
        for group in before.keys() | after.keys()
        if after.get(group, 0) != before.get(group, 0)
    }


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_sre_gets_counts_that_match_the_planted_alerts_and_no_id(
    api: ReviewApp, pool: asyncpg.Pool
) -> None:
    token = uuid.uuid4().hex[:8]
    sre, reviewer = api.as_role(Role.SRE), api.as_role(Role.REVIEWER, user="rev-ops")
    run = uuid.uuid4().hex[:8]
    task_id, provisional, candidate, known, _ = await review_task_of(
        PostgresIdentityStore(pool), run
    )

    first = await api.client.get("/api/v1/ops/summary", headers=sre)
    assert first.status_code == 200, first.text
    before = first.json()

    alerts = [
        _alert(token, 0, api.clock(), age=timedelta(minutes=30), severity="HIGH"),
        _alert(token, 1, api.clock(), age=timedelta(hours=2), severity="CRITICAL"),
        _alert(token, 2, api.clock(), age=timedelta(hours=30), severity="HIGH", kind="STALE"),
        _alert(token, 3, api.clock(), age=timedelta(days=10), severity="LOW"),
        _alert(token, 4, api.clock(), age=timedelta(days=10), severity="LOW"),
        _alert(token, 5, api.clock(), age=timedelta(hours=6), severity="MEDIUM"),
        _alert(token, 6, api.clock(), age=timedelta(hours=6), severity="MEDIUM"),
    ]
    resolved = _alert(token, 7, api.clock(), age=timedelta(hours=2), severity="CRITICAL")
    resolved = resolved.model_copy(update={"status": "RESOLVED", "resolved_at": api.clock()})
    await plant_alerts(pool, [*alerts, resolved])

    base = f"/api/v1/alerts/{alerts[1].alert_id}"
    assert (await api.client.post(f"{base}/acknowledge", headers=reviewer)).status_code == 200
    corrected = await api.client.post(
        f"/api/v1/alerts/{alerts[5].alert_id}/resolve",
        headers=reviewer,
        json={"decision": "correct", "value": f"Zyx{token}^Anne"},
    )
    assert corrected.status_code == 200, corrected.text
    dismissed = await api.client.post(
        f"/api/v1/alerts/{alerts[6].alert_id}/dismiss",
        headers=reviewer,
        json={"reason": "SAME_MEANING"},
    )
    assert dismissed.status_code == 200, dismissed.text

    response = await api.client.get("/api/v1/ops/summary", headers=sre)
    assert response.status_code == 200
    after = response.json()

    # A decided alert stays open until the conflicts stage applies the decision.
    assert _delta(_groups(before), _groups(after)) == {
        ("CONFLICT", "HIGH", "OPEN", "lt_1h"): 1,
        ("CONFLICT", "CRITICAL", "ACKNOWLEDGED", "1h_4h"): 1,
        ("STALE", "HIGH", "OPEN", "1d_7d"): 1,
        ("CONFLICT", "LOW", "OPEN", "gt_7d"): 2,
        ("CONFLICT", "MEDIUM", "OPEN", "4h_24h"): 2,
    }
    assert after["open_alerts_total"] - before["open_alerts_total"] == 7
    assert after["open_alerts_total"] == sum(_groups(after).values())
    decisions = {
        kind: after["decisions_last_24h"][kind] - before["decisions_last_24h"][kind]
        for kind in metrics.DECISION_KINDS
    }
    assert decisions == {"accepted": 0, "chosen": 0, "corrected": 1, "dismissed": 1}
    assert after["corrections_last_24h"] - before["corrections_last_24h"] == 1
    open_tasks = await pool.fetchval(
        "SELECT count(*) FROM identity_review_tasks WHERE status = 'OPEN'"
    )
    assert after["identity_tasks_open"] == open_tasks >= 1

    # Counts only: no alert, task or enterprise id, name or source identifier.
    for planted in (
        token, task_id, provisional, candidate, known.family, "MRN-", "Zyx", "rev-ops",
        *(a.alert_id for a in alerts), *(a.patient_id for a in alerts),
    ):  # fmt: skip
        assert planted not in response.text, planted
    admin = await api.client.get("/api/v1/ops/summary", headers=api.as_role(Role.ADMIN))
    assert admin.status_code == 200


@pytest.mark.parametrize("role", [Role.REVIEWER, Role.CLINICIAN, Role.AUDITOR])
async def test_a_role_without_ops_read_gets_403(api: ReviewApp, role: Role) -> None:
    response = await api.client.get("/api/v1/ops/summary", headers=api.as_role(role))
    assert response.status_code == 403
    assert f"role '{role}' lacks permission 'ops.read'" in response.json()["detail"]
    assert (await api.client.get("/api/v1/ops/summary")).status_code == 401


async def test_the_refreshed_gauges_agree_with_the_summary(
    api: ReviewApp, pool: asyncpg.Pool
) -> None:
    token = uuid.uuid4().hex[:8]
    await plant_alerts(
        pool,
        [
            _alert(token, 0, api.clock(), age=timedelta(days=2), severity="CRITICAL"),
            _alert(token, 1, api.clock(), age=timedelta(minutes=5), severity="HIGH", kind="STALE"),
        ],
    )
    await MetricsRefresher(pool, clock=api.clock).refresh()
    # At the same time: no alert crosses a bucket's bound between the two.
    sre = Principal(subject="ops-test", role=Role.SRE, issuer="test")
    summary = await OpsView(pool, clock=api.clock).summary(sre)
    gauges: dict[Group, int] = {}
    for family in metrics.ALERTS_OPEN.collect():
        for s in family.samples:
            if s.value:
                labels = s.labels
                group = (labels["kind"], labels["severity"], labels["status"], labels["age_bucket"])
                gauges[group] = int(s.value)
    assert gauges == {
        (g.kind, g.severity, g.status, g.age_bucket): g.count for g in summary.open_alerts
    }
    assert gauges[("CONFLICT", "CRITICAL", "OPEN", "1d_7d")] >= 1
    assert gauges[("STALE", "HIGH", "OPEN", "lt_1h")] >= 1
    assert sample("concord_review_identity_tasks", state="open") == summary.identity_tasks_open
    for family_name in metrics.FAMILIES:
        assert (
            sample("concord_review_refresh_timestamp_seconds", family=family_name)
            == api.clock().timestamp()
        )


async def test_a_reviewers_acknowledgement_and_decision_are_observed_and_metrics_carry_no_id(
    api: ReviewApp, pool: asyncpg.Pool
) -> None:
    token = uuid.uuid4().hex[:8]
    alert = _alert(token, 0, api.clock(), age=timedelta(hours=2), severity="CRITICAL")
    await plant_alerts(pool, [alert])
    reviewer = api.as_role(Role.REVIEWER, user="rev-ops")
    acks = sample("concord_review_acknowledge_seconds_count", severity="CRITICAL")
    ack_sum = sample("concord_review_acknowledge_seconds_sum", severity="CRITICAL")
    resolves = sample("concord_review_resolve_seconds_count", severity="CRITICAL")
    accepted = sample("concord_review_decisions_total", decision="accepted")
    corrections = sample("concord_review_corrections_total")

    base = f"/api/v1/alerts/{alert.alert_id}"
    assert (await api.client.post(f"{base}/acknowledge", headers=reviewer)).status_code == 200
    again = await api.client.post(f"{base}/acknowledge", headers=reviewer)
    assert again.json() == {"changed": False}  # observed once
    accept = await api.client.post(f"{base}/resolve", headers=reviewer, json={"decision": "accept"})
    assert accept.status_code == 200, accept.text
    racing = await api.client.post(f"{base}/dismiss", headers=reviewer, json={"reason": "OTHER"})
    assert racing.status_code == 409  # a decision on its way: refused, not counted

    assert sample("concord_review_acknowledge_seconds_count", severity="CRITICAL") == acks + 1
    assert sample("concord_review_acknowledge_seconds_sum", severity="CRITICAL") == ack_sum + 7200
    assert sample("concord_review_resolve_seconds_count", severity="CRITICAL") == resolves + 1
    assert sample("concord_review_decisions_total", decision="accepted") == accepted + 1
    assert sample("concord_review_corrections_total") == corrections  # the proposal stood

    scraped = await api.client.get("/metrics")
    assert scraped.status_code == 200
    assert "concord_review_acknowledge_seconds_bucket" in scraped.text
    for planted in (token, alert.alert_id, alert.patient_id, "rev-ops", "Zyx", "MRN-"):
        assert planted not in scraped.text, planted
    assert "/metrics" not in (await api.client.get("/openapi.json")).json()["paths"]
