"""The review API against the real PostgreSQL, with tokens signed by a local key: what each
role may do (a matrix over every endpoint), a reviewer working an alert from list to decision
with every PHI read and change in the audit trail, and the errors a caller gets.

Each test plants its own alerts (its patients' ids and names carry the test's token) and reads
back only those."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from concord.events import codec
from concord.events.models import MERGE_ATTRIBUTE, Alert
from concord.normalization.identity_store import PostgresIdentityStore
from concord.review.access import PURPOSE_OF_USE_HEADER, Role
from concord.review.audit_store import PostgresAuditTrail
from concord.stack.postgres import PostgresInfo
from concord.topics import RESOLUTIONS
from identity_tools import review_task_of
from review_tools import ReviewApp, local_settings, plant_alerts, review_alert, review_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]
READ = {PURPOSE_OF_USE_HEADER: "HOPERAT"}


@dataclass
class Planted:
    token: str
    alerts: list[Alert]

    @property
    def phi(self) -> list[str]:
        """The planted names and source identifiers: PHI no list, and no sre, may see."""
        return [f"Zyx{self.token}", f"MRN-{self.token}"]


@pytest_asyncio.fixture
async def api(
    postgres: PostgresInfo, pool: asyncpg.Pool, tmp_path: Path
) -> AsyncIterator[ReviewApp]:
    review = review_app(pool, local_settings(tmp_path, dsn=postgres.dsn))
    async with review.client:
        yield review


@pytest_asyncio.fixture
async def planted(pool: asyncpg.Pool) -> Planted:
    token = uuid.uuid4().hex[:8]
    alerts = [review_alert(token, n, severity="HIGH" if n % 2 else "LOW") for n in range(5)]
    await plant_alerts(pool, alerts)
    return Planted(token, alerts)


def _ours(page: dict[str, Any], planted: Planted) -> list[str]:
    return [
        a["alert_id"] for a in page["alerts"] if a["patient_id"].startswith(f"E-{planted.token}")
    ]


# --- the role x endpoint matrix ------------------------------------------------------------


def _endpoints(alert_id: str) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(name, method, path, json body) of every endpoint, on a planted alert."""
    base = f"/api/v1/alerts/{alert_id}"
    return [
        ("list", "GET", "/api/v1/alerts?limit=200", None),
        ("detail", "GET", base, None),
        ("reasons", "GET", "/api/v1/catalogues/dismissal-reasons", None),
        ("purposes", "GET", "/api/v1/catalogues/purposes-of-use", None),
        ("acknowledge", "POST", f"{base}/acknowledge", None),
        ("assign", "POST", f"{base}/assign", {"assignee": "rev-2"}),
        ("comment", "POST", f"{base}/comments", {"body": "checked with the lab"}),
        ("dismiss", "POST", f"{base}/dismiss", {"reason": "SAME_MEANING"}),
        ("identity list", "GET", "/api/v1/identity/reviews?include_decided=true", None),
        ("audit", "GET", f"/api/v1/audit?object_type=alert&object_id={alert_id}", None),
        ("audit verify", "GET", "/api/v1/audit/verify", None),
        ("ops summary", "GET", "/api/v1/ops/summary", None),
        ("principals", "GET", "/api/v1/admin/principals", None),
        ("subscriptions", "GET", "/api/v1/admin/subscriptions", None),
    ]


ALLOWED: dict[Role, set[str]] = {
    Role.REVIEWER: {
        "list", "detail", "reasons", "purposes", "acknowledge", "assign", "comment", "dismiss",
        "identity list",
    },
    Role.CLINICIAN: {"list", "detail", "reasons", "purposes", "identity list"},
    Role.AUDITOR: {"list", "reasons", "purposes", "identity list", "audit", "audit verify"},
    Role.SRE: {"reasons", "purposes", "ops summary"},
    Role.ADMIN: {"reasons", "purposes", "ops summary", "principals", "subscriptions"},
}  # fmt: skip


@pytest.mark.parametrize("role", list(Role))
async def test_each_role_gets_exactly_what_it_may(
    api: ReviewApp, planted: Planted, role: Role
) -> None:
    headers = {**api.as_role(role), **READ}
    seen: dict[str, int] = {}
    for name, method, path, body in _endpoints(planted.alerts[0].alert_id):
        response = await api.client.request(method, path, headers=headers, json=body)
        seen[name] = response.status_code
        if response.status_code == 403:
            assert f"role '{role}' lacks permission" in response.json()["detail"]
        if role is not Role.REVIEWER and role is not Role.CLINICIAN:
            for phi in planted.phi:
                assert phi not in response.text, f"{role} got PHI from {name}"
    assert {name for name, status in seen.items() if status == 200} == ALLOWED[role]
    assert {name for name, status in seen.items() if status != 200} == {
        name for name, *_ in _endpoints("x")
    } - ALLOWED[role]
    assert set(seen.values()) <= {200, 403}


async def test_lists_carry_no_phi_whoever_reads_them(api: ReviewApp, planted: Planted) -> None:
    for role in (Role.REVIEWER, Role.CLINICIAN, Role.AUDITOR):
        response = await api.client.get(
            "/api/v1/alerts", params={"limit": 200}, headers=api.as_role(role)
        )
        assert response.status_code == 200
        for phi in planted.phi:
            assert phi not in response.text


# --- a reviewer at work ----------------------------------------------------------------------


async def test_filters_and_cursor_pages_walk_the_whole_list_once(
    api: ReviewApp, planted: Planted
) -> None:
    headers = api.as_role(Role.REVIEWER)
    params: dict[str, Any] = {"severity": "HIGH", "source": "lab", "limit": 1}
    seen: list[str] = []
    while True:
        page = (await api.client.get("/api/v1/alerts", params=params, headers=headers)).json()
        seen += page["alerts"] and [a["alert_id"] for a in page["alerts"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    high = {a.alert_id for a in planted.alerts if a.severity == "HIGH"}
    assert high <= set(seen) and len(seen) == len(set(seen))
    old = await api.client.get(
        "/api/v1/alerts",
        params={"min_age_hours": 4.5, "limit": 200, "class": "DEMOGRAPHICS"},
        headers=headers,
    )
    assert set(_ours(old.json(), planted)) == {planted.alerts[4].alert_id}
    mixed = await api.client.get(
        "/api/v1/alerts",
        params={"cursor": params.get("cursor", "x"), "severity": "LOW"},
        headers=headers,
    )
    assert mixed.status_code == 422 and "cursor" in mixed.json()["detail"]


async def test_a_reviewer_reads_acknowledges_and_resolves_an_alert_with_an_audit_trail(
    api: ReviewApp, planted: Planted, pool: asyncpg.Pool
) -> None:
    alert = planted.alerts[1]
    path = f"/api/v1/alerts/{alert.alert_id}"
    reviewer = api.as_role(Role.REVIEWER, user="rev-1")

    no_purpose = await api.client.get(path, headers=reviewer)
    assert no_purpose.status_code == 422 and PURPOSE_OF_USE_HEADER in no_purpose.json()["detail"]
    detail = (await api.client.get(path, headers={**reviewer, **READ})).json()
    assert [(v["source_system"], v["value"]) for v in detail["values"]] == [
        ("hospital", alert.assertions[0].value),
        ("lab", alert.assertions[1].value),
    ]
    hospital = detail["values"][0]["provenance"]
    assert hospital["source_record_id"] == f"MRN-{planted.token}-1"
    assert (hospital["topic"], hospital["offset"]) == ("ehr.raw.fhir", 0)
    assert detail["proposed_value"] == alert.proposed_value

    ack = await api.client.post(f"{path}/acknowledge", headers=reviewer)
    assert ack.json() == {"changed": True}
    again = await api.client.post(f"{path}/acknowledge", headers=reviewer)
    assert again.json() == {"changed": False}
    listed = await api.client.get(
        "/api/v1/alerts", params={"status": "ACKNOWLEDGED", "limit": 200}, headers=reviewer
    )
    assert alert.alert_id in _ours(listed.json(), planted)

    chosen = alert.assertions[1].value
    decided = await api.client.post(
        f"{path}/resolve",
        headers=reviewer,
        json={"decision": "choose", "value": chosen, "comment": "the lab re-checked"},
    )
    assert decided.status_code == 200
    [(_, value, key, _)] = [s for s in api.producer.sent if s[0] == RESOLUTIONS]
    sent = codec.CONFLICT_RESOLUTION.decode(value)
    assert (sent.conflict_id, sent.decision, sent.chosen_value) == (
        alert.alert_id, "CHOSE_VALUE", chosen,
    )  # fmt: skip
    assert sent.resolution_id == decided.json()["resolution_id"]
    assert key == alert.patient_id.encode()
    # Until the conflicts stage has acted on it, a second decision would race the first.
    racing = await api.client.post(
        f"{path}/dismiss", headers=reviewer, json={"reason": "SAME_MEANING"}
    )
    assert racing.status_code == 409 and "on its way" in racing.json()["detail"]

    after = (await api.client.get(path, headers={**reviewer, **READ})).json()
    assert [d["overrules"] for d in after["decisions"]] == [True]
    assert [c["body"] for c in after["comments"]] == ["the lab re-checked"]

    newest_first = await PostgresAuditTrail().find(
        pool, object_type="alert", object_id=alert.alert_id
    )
    trail = newest_first[::-1]
    # The refused and the repeated calls changed nothing, and left no row.
    assert [e.action for e in trail] == [
        "alert.read", "alert.acknowledge", "alert.resolve", "alert.read",
    ]  # fmt: skip
    assert trail[2].detail["decision"] == "CHOSE_VALUE"
    assert trail[2].detail["overrules_proposal"] is True
    assert {e.purpose for e in trail if e.action == "alert.read"} == {"HOPERAT"}
    assert {e.role for e in trail} == {"reviewer"}
    for entry in trail:
        assert not any(phi in entry.model_dump_json() for phi in planted.phi)


# --- errors -----------------------------------------------------------------------------------


async def test_errors_say_what_to_fix(api: ReviewApp, planted: Planted) -> None:
    path = f"/api/v1/alerts/{planted.alerts[0].alert_id}"
    missing = await api.client.get("/api/v1/alerts")
    assert missing.status_code == 401 and "Bearer" in missing.headers["WWW-Authenticate"]
    forged = await api.client.get("/api/v1/alerts", headers={"Authorization": "Bearer x.y.z"})
    assert forged.status_code == 401
    reviewer = api.as_role(Role.REVIEWER)
    unknown = await api.client.get("/api/v1/alerts/nope", headers={**reviewer, **READ})
    assert unknown.status_code == 404 and unknown.json()["detail"] == "no alert nope"
    secret = f"Zyx{planted.token}-typed-into-the-wrong-field"
    bad = await api.client.post(
        f"{path}/resolve", headers=reviewer, json={"decision": "guess", "value": secret}
    )
    assert bad.status_code == 422 and "decision" in bad.json()["detail"]
    assert secret not in bad.text
    extra = await api.client.post(
        f"{path}/assign", headers=reviewer, json={"assignee": "a", "patient": secret}
    )
    assert extra.status_code == 422 and "patient" in extra.json()["detail"]
    assert secret not in extra.text


async def test_a_principal_over_its_rate_limit_is_told_when_to_come_back(
    postgres: PostgresInfo, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    api = review_app(pool, local_settings(tmp_path, dsn=postgres.dsn, rate_limit=3))
    headers, other = api.as_role(Role.REVIEWER, "busy"), api.as_role(Role.REVIEWER, "calm")
    async with api.client as client:
        statuses = [
            (await client.get("/api/v1/catalogues/dismissal-reasons", headers=headers)).status_code
            for _ in range(4)
        ]
        refused = await client.get("/api/v1/catalogues/dismissal-reasons", headers=headers)
        calm = await client.get("/api/v1/catalogues/dismissal-reasons", headers=other)
    assert statuses == [200, 200, 200, 429]
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert calm.status_code == 200


# --- identity review tasks ------------------------------------------------------------------


async def test_a_reviewer_reads_and_links_an_identity_task_and_the_merge_is_published(
    api: ReviewApp, pool: asyncpg.Pool
) -> None:
    run = uuid.uuid4().hex[:8]
    task_id, provisional, candidate, known, maybe = await review_task_of(
        PostgresIdentityStore(pool), run
    )
    reviewer = api.as_role(Role.REVIEWER, user="rev-9")
    listed = await api.client.get(
        "/api/v1/identity/reviews", params={"limit": 200}, headers=reviewer
    )
    [entry] = [t for t in listed.json() if t["task_id"] == task_id]
    assert (entry["provisional_enterprise_id"], entry["candidate_enterprise_id"]) == (
        provisional, candidate,
    )  # fmt: skip
    for phi in (known.family.lower(), maybe.birth, known.phone.replace("-", "")):
        assert phi not in listed.text.lower()

    path = f"/api/v1/identity/reviews/{task_id}"
    assert (await api.client.get(path, headers=reviewer)).status_code == 422
    clinician = api.as_role(Role.CLINICIAN)
    detail = await api.client.get(path, headers={**clinician, **READ})
    # Normalized, as the index holds them.
    assert detail.status_code == 200 and maybe.family.lower() in detail.text
    assert (await api.client.post(f"{path}/link", headers=clinician)).status_code == 403

    linked = await api.client.post(f"{path}/link", headers=reviewer)
    assert linked.status_code == 200, linked.text
    assert linked.json()["changed"] and linked.json()["survivor"] == candidate
    merges = [
        codec.CLINICAL_FACT.decode(value)
        for topic, value, *_ in api.producer.sent
        if topic != RESOLUTIONS
    ]
    assert [(m.attribute, m.patient_id, m.value) for m in merges if m.value == provisional] == [
        (MERGE_ATTRIBUTE, candidate, provisional)
    ]
    again = await api.client.post(f"{path}/link", headers=reviewer)
    assert again.json()["changed"] is False
    apart = await api.client.post(f"{path}/keep-apart", headers=reviewer)
    assert apart.status_code == 409
    missing = await api.client.post("/api/v1/identity/reviews/nope/link", headers=reviewer)
    assert missing.status_code == 404

    trail = await PostgresAuditTrail().find(pool, object_type="identity_review", object_id=task_id)
    assert [(e.action, e.role, e.purpose) for e in trail[::-1]] == [
        ("identity.read", "clinician", "HOPERAT"),
        ("identity.link", "reviewer", None),
    ]


async def test_an_administrator_disables_a_principal_and_its_next_call_is_refused(
    api: ReviewApp,
) -> None:
    user = f"leaver-{uuid.uuid4().hex[:8]}"
    leaver, admin = api.as_role(Role.REVIEWER, user=user), api.as_role(Role.ADMIN, user="adm")
    reasons = "/api/v1/catalogues/dismissal-reasons"
    assert (await api.client.get(reasons, headers=leaver)).status_code == 200
    seen = (await api.client.get("/api/v1/admin/principals", headers=admin)).json()
    [known] = [p for p in seen if p["subject"] == user]
    ref = {"issuer": known["issuer"], "subject": user}
    disabled = await api.client.post("/api/v1/admin/principals/disable", headers=admin, json=ref)
    assert disabled.json() == {"changed": True}
    refused = await api.client.get(reasons, headers=leaver)
    assert refused.status_code == 403 and "disabled in Concord" in refused.json()["detail"]
    enabled = await api.client.post("/api/v1/admin/principals/enable", headers=admin, json=ref)
    assert enabled.json() == {"changed": True}
    assert (await api.client.get(reasons, headers=leaver)).status_code == 200
    own = {"issuer": known["issuer"], "subject": "adm"}
    mine = await api.client.post("/api/v1/admin/principals/disable", headers=admin, json=own)
    # A well-formed request the state refuses: 409, as schemathesis expects of one.
    assert mine.status_code == 409 and "own account" in mine.json()["detail"]


async def test_text_postgresql_cannot_hold_is_refused_by_the_admin_views_not_a_500(
    api: ReviewApp,
) -> None:
    """Found by schemathesis: a NUL in a subscription's description or source, or in a
    principal's issuer or subject, reached PostgreSQL (500)."""
    admin = api.as_role(Role.ADMIN, user="adm-nul")
    path = "/api/v1/admin/subscriptions/nul-test"
    for body in (
        {"description": "a\x00b", "filter": {}},
        {"description": "ok", "filter": {"source": ["la\x00b"]}},
    ):
        sent = await api.client.put(path, headers=admin, json=body)
        assert sent.status_code == 422, sent.text
    for ref in ({"issuer": "i\x00", "subject": "s"}, {"issuer": "i", "subject": "s\x00"}):
        sent = await api.client.post("/api/v1/admin/principals/disable", headers=admin, json=ref)
        assert sent.status_code == 422, sent.text
