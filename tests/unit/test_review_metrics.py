"""The review service's metrics: bounded labels with no PHI, what a reviewer's acknowledgement
and decision observe, the refresher's gauges (every group, zeros included) and how it rides out
a database outage, and /metrics."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from concord.review import metrics, ops
from concord.review.access import Forbidden, Principal, Role
from concord.review.alerts import (
    DISMISSAL_REASONS,
    DismissRequest,
    ResolveRequest,
    overrules,
    resolution_for,
)
from review_tools import review_alert

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
TOKEN = "wvut"  # review_alert(TOKEN): the hospital says NAME_A (the proposal), the lab NAME_B
NAME_A, NAME_B, NEW = "Zyxwvut^Ana", "Zyxwvut^Anna", "Zyxwvut^Anne"  # PHI
PHI_LIKE = re.compile(r"patient|name|mrn|birth|dob|ssn|phone|address|email|user|id$", re.I)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def review_metrics() -> list[MetricWrapperBase]:
    return [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]


# --- labels ----------------------------------------------------------------------------------


def test_labels_are_bounded_names_that_carry_no_phi() -> None:
    allowed = {"kind", "severity", "status", "age_bucket", "decision", "reason", "state", "family"}
    for metric in review_metrics():
        names = set(metric._labelnames)
        assert names <= allowed, (metric, names)
        assert not any(PHI_LIKE.search(n) for n in names), metric


def test_every_exported_label_value_is_from_a_fixed_list() -> None:
    known = {
        "kind": set(metrics.KINDS),
        "severity": set(metrics.SEVERITIES),
        "status": set(metrics.OPEN_STATUSES),
        "age_bucket": set(metrics.AGE_BUCKET_NAMES),
        "decision": set(metrics.DECISION_KINDS) | set(metrics.IDENTITY_DECISIONS_MADE),
        "reason": set(DISMISSAL_REASONS) | {metrics.UNKNOWN_REASON},
        "state": set(metrics.IDENTITY_STATES),
        "family": set(metrics.FAMILIES),
    }
    seen = 0
    for metric in review_metrics():
        for family in metric.collect():
            for s in family.samples:
                for label, value in s.labels.items():
                    if label != "le":
                        assert value in known[label], (s.name, label, value)
                        seen += 1
    assert seen  # the series exist from the start (initialised at 0)


def test_a_dismissal_reason_off_the_list_is_not_a_label_value() -> None:
    alert = review_alert(TOKEN, opened_at=T0)
    resolution = resolution_for(alert, DismissRequest(reason="SAME_MEANING"), by="r", at=T0)
    odd = resolution.model_copy(update={"reason_code": "E-42 Zyxwvut"})
    before = sample("concord_review_dismissals_total", reason=metrics.UNKNOWN_REASON)
    metrics.decided(alert, odd, overrules=False)
    assert sample("concord_review_dismissals_total", reason=metrics.UNKNOWN_REASON) == before + 1
    assert sample("concord_review_dismissals_total", reason="E-42 Zyxwvut") == 0


# --- age buckets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "bucket"),
    [
        (timedelta(0), "lt_1h"),
        (timedelta(minutes=59, seconds=59), "lt_1h"),
        (timedelta(hours=1), "1h_4h"),
        (timedelta(hours=3, minutes=59), "1h_4h"),
        (timedelta(hours=4), "4h_24h"),
        (timedelta(hours=23, minutes=59), "4h_24h"),
        (timedelta(hours=24), "1d_7d"),
        (timedelta(days=6, hours=23), "1d_7d"),
        (timedelta(days=7), "gt_7d"),
        (timedelta(days=400), "gt_7d"),
    ],
)
def test_age_buckets(age: timedelta, bucket: str) -> None:
    assert metrics.age_bucket(age) == bucket


def test_the_sql_buckets_are_the_python_ones() -> None:
    assert get_args(ops.AgeBucket) == metrics.AGE_BUCKET_NAMES
    units = {"hour": 3600, "hours": 3600, "days": 86400}
    found = [
        (name, timedelta(seconds=int(n) * units[unit]))
        for n, unit, name in re.findall(r"< interval '(\d+) (\w+)' THEN '(\w+)'", ops.OPEN_ALERTS)
    ]
    [last] = re.findall(r"ELSE '(\w+)' END AS age_bucket", ops.OPEN_ALERTS)
    assert [*found, (last, None)] == list(metrics.AGE_BUCKETS)


# --- observed when a reviewer acts -----------------------------------------------------------


def test_an_acknowledgement_observes_the_time_since_opening_by_severity() -> None:
    count = sample("concord_review_acknowledge_seconds_count", severity="CRITICAL")
    total = sample("concord_review_acknowledge_seconds_sum", severity="CRITICAL")
    under_4h = sample(
        "concord_review_acknowledge_seconds_bucket", severity="CRITICAL", le="14400.0"
    )
    metrics.acknowledged(
        review_alert(TOKEN, severity="CRITICAL", opened_at=T0), T0 + timedelta(hours=2)
    )
    assert sample("concord_review_acknowledge_seconds_count", severity="CRITICAL") == count + 1
    assert sample("concord_review_acknowledge_seconds_sum", severity="CRITICAL") == total + 7200
    assert (
        sample("concord_review_acknowledge_seconds_bucket", severity="CRITICAL", le="14400.0")
        == under_4h + 1
    )


@pytest.mark.parametrize(
    ("request_", "kind", "corrects"),
    [
        (ResolveRequest(decision="accept"), "accepted", False),
        (ResolveRequest(decision="choose", value=NAME_A), "chosen", False),
        (ResolveRequest(decision="choose", value=NAME_B), "chosen", True),
        (ResolveRequest(decision="correct", value=NEW), "corrected", True),
        (DismissRequest(reason="TEST_RECORD"), "dismissed", False),
    ],
)
def test_a_decision_counts_its_kind_correction_and_reason(
    request_: ResolveRequest | DismissRequest, kind: str, corrects: bool
) -> None:
    alert = review_alert(TOKEN, severity="MEDIUM", opened_at=T0 - timedelta(days=2))
    resolution = resolution_for(alert, request_, by="rev-1", at=T0)
    assert metrics.decision_kind(alert, resolution) == kind
    before: dict[str, Any] = {
        "kinds": {k: sample("concord_review_decisions_total", decision=k) for k in
                  metrics.DECISION_KINDS},
        "corrections": sample("concord_review_corrections_total"),
        "test_records": sample("concord_review_dismissals_total", reason="TEST_RECORD"),
        "resolve": sample("concord_review_resolve_seconds_count", severity="MEDIUM"),
        "resolve_sum": sample("concord_review_resolve_seconds_sum", severity="MEDIUM"),
    }  # fmt: skip
    metrics.decided(alert, resolution, overrules=overrules(alert, resolution))
    for k in metrics.DECISION_KINDS:
        expected = before["kinds"][k] + (1 if k == kind else 0)
        assert sample("concord_review_decisions_total", decision=k) == expected
    assert sample("concord_review_corrections_total") == before["corrections"] + corrects
    assert sample("concord_review_dismissals_total", reason="TEST_RECORD") == before[
        "test_records"
    ] + (kind == "dismissed")
    assert (
        sample("concord_review_resolve_seconds_count", severity="MEDIUM") == before["resolve"] + 1
    )
    assert (
        sample("concord_review_resolve_seconds_sum", severity="MEDIUM")
        == before["resolve_sum"] + 2 * 86400
    )


def test_identity_decisions_by_decision() -> None:
    linked = sample("concord_review_identity_decisions_total", decision="linked")
    apart = sample("concord_review_identity_decisions_total", decision="kept_apart")
    metrics.identity_decided("LINKED")
    metrics.identity_decided("KEPT_APART")
    metrics.identity_decided("KEPT_APART")
    assert sample("concord_review_identity_decisions_total", decision="linked") == linked + 1
    assert sample("concord_review_identity_decisions_total", decision="kept_apart") == apart + 2


# --- the refresher ---------------------------------------------------------------------------


class FakePool:
    """Answers the refresher's two statements from `alerts` and `tasks`; fails while `down`."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.tasks: list[dict[str, Any]] = []
        self.down: dict[str, Exception] = {}
        self.statements: list[str] = []

    async def fetch(self, statement: str, *args: object, **options: object) -> list[dict[str, Any]]:
        self.statements.append(statement)
        family = "alerts_open" if statement == ops.OPEN_ALERTS else "identity_tasks"
        if family in self.down:
            raise self.down[family]
        return self.alerts if family == "alerts_open" else self.tasks


def _open(kind: str, severity: str, status: str, bucket: str, n: int) -> dict[str, Any]:
    return {"kind": kind, "severity": severity, "status": status, "age_bucket": bucket, "n": n}


def gauge(kind: str, severity: str, status: str, bucket: str) -> float | None:
    return REGISTRY.get_sample_value(
        "concord_review_alerts_open",
        {"kind": kind, "severity": severity, "status": status, "age_bucket": bucket},
    )


@pytest.mark.asyncio
async def test_the_refresher_sets_every_group_with_one_statement_per_family() -> None:
    pool = FakePool()
    pool.alerts = [
        _open("CONFLICT", "HIGH", "OPEN", "1d_7d", 3),
        _open("STALE", "LOW", "ACKNOWLEDGED", "lt_1h", 2),
    ]
    pool.tasks = [
        {"status": "OPEN", "decision": None, "n": 4},
        {"status": "DECIDED", "decision": "LINKED", "n": 5},
        {"status": "DECIDED", "decision": "KEPT_APART", "n": 1},
    ]
    refresher = ops.MetricsRefresher(pool, clock=lambda: T0)  # type: ignore[arg-type]
    await refresher.refresh()
    assert sorted(pool.statements) == sorted([ops.OPEN_ALERTS, ops.IDENTITY_TASKS])
    assert gauge("CONFLICT", "HIGH", "OPEN", "1d_7d") == 3
    assert gauge("STALE", "LOW", "ACKNOWLEDGED", "lt_1h") == 2
    assert gauge("CONFLICT", "CRITICAL", "OPEN", "gt_7d") == 0  # every group, zeros included
    series = [
        s
        for f in metrics.ALERTS_OPEN.collect()
        for s in f.samples
    ]  # fmt: skip
    assert len(series) == 2 * 4 * 2 * 5
    states = {s: sample("concord_review_identity_tasks", state=s) for s in metrics.IDENTITY_STATES}
    assert states == {"open": 4, "linked": 5, "kept_apart": 1}
    for family in metrics.FAMILIES:
        assert sample("concord_review_refresh_timestamp_seconds", family=family) == T0.timestamp()

    # a group that empties reads 0 at the next refresh, not its last count
    pool.alerts = [_open("CONFLICT", "HIGH", "OPEN", "gt_7d", 3)]
    await refresher.refresh()
    assert gauge("CONFLICT", "HIGH", "OPEN", "1d_7d") == 0
    assert gauge("CONFLICT", "HIGH", "OPEN", "gt_7d") == 3


@pytest.mark.asyncio
async def test_the_refresher_rides_out_a_database_outage(caplog: pytest.LogCaptureFixture) -> None:
    pool = FakePool()
    pool.alerts = [_open("CONFLICT", "CRITICAL", "OPEN", "4h_24h", 7)]
    pool.tasks = [{"status": "OPEN", "decision": None, "n": 9}]
    now = [T0]
    refresher = ops.MetricsRefresher(pool, clock=lambda: now[0])  # type: ignore[arg-type]
    await refresher.refresh()
    failures = {f: sample("concord_review_refresh_failures_total", family=f) for f in
                metrics.FAMILIES}  # fmt: skip

    # the database goes away for the alerts' statement only; what it says may quote values
    pool.down["alerts_open"] = ConnectionRefusedError(f"no route for {NAME_A}")
    pool.alerts = []
    pool.tasks = [{"status": "OPEN", "decision": None, "n": 2}]
    now[0] = T0 + timedelta(minutes=1)
    with caplog.at_level(logging.WARNING, logger="concord.review.ops"):
        await refresher.refresh()
    assert gauge("CONFLICT", "CRITICAL", "OPEN", "4h_24h") == 7  # kept
    assert sample("concord_review_refresh_failures_total", family="alerts_open") == (
        failures["alerts_open"] + 1
    )
    assert sample("concord_review_refresh_timestamp_seconds", family="alerts_open") == (
        T0.timestamp()
    )
    # the other family refreshed all the same
    assert sample("concord_review_identity_tasks", state="open") == 2
    assert (
        sample("concord_review_refresh_failures_total", family="identity_tasks")
        == (failures["identity_tasks"])
    )
    assert sample("concord_review_refresh_timestamp_seconds", family="identity_tasks") == (
        now[0].timestamp()
    )
    assert "ConnectionRefusedError" in caplog.text
    assert NAME_A not in caplog.text

    # back: the next refresh catches up
    del pool.down["alerts_open"]
    await refresher.refresh()
    assert gauge("CONFLICT", "CRITICAL", "OPEN", "4h_24h") == 0


# --- the sre's view and /metrics -------------------------------------------------------------


class UntouchablePool:
    async def fetch(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("read the database before checking the permission")


@pytest.mark.asyncio
@pytest.mark.parametrize("role", [r for r in Role if r not in (Role.SRE, Role.ADMIN)])
async def test_only_ops_read_gets_the_summary(role: Role) -> None:
    view = ops.OpsView(UntouchablePool())  # type: ignore[arg-type]
    with pytest.raises(Forbidden, match=r"ops\.read"):
        await view.summary(Principal(subject="u", role=role, issuer="test"))


def test_the_summary_has_no_field_for_an_id() -> None:
    def fields(model: Any) -> set[str]:
        names = set(model.model_fields)
        for info in model.model_fields.values():
            for arg in get_args(info.annotation):
                if hasattr(arg, "model_fields"):
                    names |= fields(arg)
        return names

    names = fields(ops.OpsSummary)
    assert "open_alerts" in names and "age_bucket" in names
    assert not [n for n in names if PHI_LIKE.search(n)], names


@pytest.mark.asyncio
async def test_metrics_are_served_outside_the_openapi_document() -> None:
    app = FastAPI()
    metrics.add_metrics_route(app)
    metrics.DECISIONS.labels("accepted").inc(0)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://review") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'concord_review_decisions_total{decision="accepted"}' in response.text
    assert "concord_review_alerts_open" in response.text
    assert "/metrics" not in app.openapi()["paths"]
