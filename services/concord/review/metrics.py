"""The review service's Prometheus metrics: module-level constants with bounded labels only.

Labels are kind, severity, status, age_bucket, decision, reason, state and family: each from a
fixed list below (or the event models' Literals), never an id, a user, a value or anything else
that could carry PHI. The gauges are computed from PostgreSQL by the refresher
(`concord.review.ops.MetricsRefresher`); the histograms and counters are observed by the use
cases when a reviewer acts (handlers.py, identity.py), after the change is committed.

Served at /metrics of the review service (`add_metrics_route`), which Prometheus scrapes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final, Literal, get_args

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from concord.events.models import Alert, AlertKind, ConflictResolution, Severity
from concord.review.alerts import DISMISSAL_REASONS

# --- the bounded label values ----------------------------------------------------------------

KINDS: Final = get_args(AlertKind)
SEVERITIES: Final = get_args(Severity)
OPEN_STATUSES: Final = ("OPEN", "ACKNOWLEDGED")  # an alert still waiting for a decision
# How long an alert has been open (since opened_at): each bucket up to its bound, the last
# one without. ops.py's SQL computes the same buckets (a test checks they agree).
AGE_BUCKETS: Final[tuple[tuple[str, timedelta | None], ...]] = (
    ("lt_1h", timedelta(hours=1)),
    ("1h_4h", timedelta(hours=4)),
    ("4h_24h", timedelta(hours=24)),
    ("1d_7d", timedelta(days=7)),
    ("gt_7d", None),
)
AGE_BUCKET_NAMES: Final = tuple(name for name, _ in AGE_BUCKETS)
DecisionKind = Literal["accepted", "chosen", "corrected", "dismissed"]
DECISION_KINDS: Final = get_args(DecisionKind)
IdentityState = Literal["open", "linked", "kept_apart"]
IDENTITY_STATES: Final = get_args(IdentityState)
IDENTITY_DECISIONS_MADE: Final = ("linked", "kept_apart")
FAMILIES: Final = ("alerts_open", "identity_tasks")  # what the refresher computes
UNKNOWN_REASON: Final = "unknown"  # a dismissal reason off the list (the API refuses those)

# From a minute to a month: reviewers work in hours and days, not seconds.
_REVIEW_BUCKETS = (60, 300, 900, 1800, 3600, 4 * 3600, 8 * 3600, 86400, 3 * 86400, 7 * 86400,
                   30 * 86400)  # fmt: skip

# --- gauges (the refresher) ------------------------------------------------------------------

ALERTS_OPEN = Gauge(
    "concord_review_alerts_open",
    "Alerts waiting for a decision (status OPEN or ACKNOWLEDGED) by kind, severity, status and "
    "how long they have been open (age_bucket: lt_1h, 1h_4h, 4h_24h, 1d_7d, gt_7d), computed "
    "from PostgreSQL by the review service's refresher",
    ["kind", "severity", "status", "age_bucket"],
)
IDENTITY_TASKS = Gauge(
    "concord_review_identity_tasks",
    "Identity review tasks by state: open, linked or kept_apart (computed from PostgreSQL)",
    ["state"],
)
REFRESH_FAILURES = Counter(
    "concord_review_refresh_failures",
    "Refreshes of a gauge family that failed (PostgreSQL away, a timeout): its gauges keep "
    "their last values",
    ["family"],
)
REFRESHED_AT = Gauge(
    "concord_review_refresh_timestamp_seconds",
    "Unix time of the last successful refresh of a gauge family (0: none yet)",
    ["family"],
)

# --- observed when a reviewer acts -----------------------------------------------------------

ACKNOWLEDGE_SECONDS = Histogram(
    "concord_review_acknowledge_seconds",
    "From an alert's opening to its acknowledgement by a reviewer",
    ["severity"],
    buckets=_REVIEW_BUCKETS,
)
RESOLVE_SECONDS = Histogram(
    "concord_review_resolve_seconds",
    "From an alert's opening to a reviewer's decision on it (resolve or dismiss)",
    ["severity"],
    buckets=_REVIEW_BUCKETS,
)
DECISIONS = Counter(
    "concord_review_decisions",
    "Reviewers' decisions on alerts by kind: accepted (the policy's proposal), chosen (a "
    "source's value), corrected (a value no source sent), dismissed",
    ["decision"],
)
CORRECTIONS = Counter(
    "concord_review_corrections",
    "Decisions that overrule the policy's proposal (a value other than the proposed one)",
)
DISMISSALS = Counter(
    "concord_review_dismissals",
    "Dismissals by reason code (GET /api/v1/catalogues/dismissal-reasons)",
    ["reason"],
)
IDENTITY_DECISIONS = Counter(
    "concord_review_identity_decisions",
    "Reviewers' decisions on identity review tasks: linked or kept_apart (repeats not counted)",
    ["decision"],
)


def _initialise() -> None:
    """Every series, at 0: a rate over a counter that has never moved is 0, not absent."""
    for family in FAMILIES:
        REFRESH_FAILURES.labels(family)
        REFRESHED_AT.labels(family)
    for severity in SEVERITIES:
        ACKNOWLEDGE_SECONDS.labels(severity)
        RESOLVE_SECONDS.labels(severity)
    for kind in DECISION_KINDS:
        DECISIONS.labels(kind)
    for reason in DISMISSAL_REASONS:
        DISMISSALS.labels(reason)
    for decision in IDENTITY_DECISIONS_MADE:
        IDENTITY_DECISIONS.labels(decision)


_initialise()


# --- what the use cases call -----------------------------------------------------------------


def age_bucket(age: timedelta) -> str:
    """The age_bucket label of an alert open for `age` (a bucket holds ages below its bound)."""
    for name, bound in AGE_BUCKETS:
        if bound is None or age < bound:
            return name
    raise AssertionError("the last bucket has no bound")  # pragma: no cover


def decision_kind(alert: Alert, resolution: ConflictResolution) -> DecisionKind:
    if resolution.decision == "DISMISSED":
        return "dismissed"
    if resolution.decision == "ACCEPTED_PROPOSAL":
        return "accepted"
    sent = {assertion.value for assertion in alert.assertions}
    return "chosen" if resolution.chosen_value in sent else "corrected"


def _seconds_since(opened_at: datetime, at: datetime) -> float:
    return max(0.0, (at - opened_at).total_seconds())


def acknowledged(alert: Alert, at: datetime) -> None:
    """A reviewer acknowledged the alert at `at` (the first acknowledgement only)."""
    ACKNOWLEDGE_SECONDS.labels(alert.severity).observe(_seconds_since(alert.opened_at, at))


def decided(alert: Alert, resolution: ConflictResolution, *, overrules: bool) -> None:
    """A reviewer's decision on the alert was committed."""
    RESOLVE_SECONDS.labels(alert.severity).observe(
        _seconds_since(alert.opened_at, resolution.resolved_at)
    )
    DECISIONS.labels(decision_kind(alert, resolution)).inc()
    if overrules:
        CORRECTIONS.inc()
    if resolution.decision == "DISMISSED":
        reason = resolution.reason_code
        DISMISSALS.labels(reason if reason in DISMISSAL_REASONS else UNKNOWN_REASON).inc()


def identity_decided(decision: Literal["LINKED", "KEPT_APART"]) -> None:
    """A reviewer decided an identity review task (not a repeat of an earlier decision)."""
    IDENTITY_DECISIONS.labels("linked" if decision == "LINKED" else "kept_apart").inc()


def add_metrics_route(app: FastAPI) -> None:
    """GET /metrics: the process's metrics in Prometheus' text format, outside the OpenAPI
    document. No token: Prometheus scrapes it inside the deployment's network; the reverse
    proxy in front of the API does not forward it (deploy/README.md)."""

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
