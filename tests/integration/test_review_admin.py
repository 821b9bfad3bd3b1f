"""The admin role against the real PostgreSQL: principals recorded as they call and refused
once disabled (on this process at once), subscriptions kept, every change audited; the
subscription filter `concord alerts follow --subscription` applies."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from concord.cli import main
from concord.review.access import Forbidden, Principal, Role
from concord.review.admin import (
    Administration,
    Disabled,
    OwnAccount,
    PrincipalRef,
    PrincipalRegistry,
    SubscriptionFilter,
    SubscriptionRequest,
    follows,
    load_subscription,
)
from concord.review.audit_store import PostgresAuditTrail
from concord.review.handlers import NotFound
from concord.stack.broker import BrokerInfo
from concord.stack.postgres import PostgresInfo
from review_tools import review_alert

pytestmark = pytest.mark.integration


def _principal(role: Role, subject: str) -> Principal:
    return Principal(subject=subject, role=role, issuer="https://idp.example/test")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.asyncio
async def test_a_disabled_principal_is_refused_and_an_enabled_one_admitted_again(
    pool: asyncpg.Pool,
) -> None:
    run = uuid.uuid4().hex[:8]
    admin, user = _principal(Role.ADMIN, f"admin-{run}"), _principal(Role.REVIEWER, f"u-{run}")
    clock = Clock()
    registry = PrincipalRegistry(pool, monotonic=clock)
    other_process = PrincipalRegistry(pool, monotonic=clock)
    administration = Administration(pool, registry, PostgresAuditTrail())
    await registry.admit(user)
    await other_process.admit(user)

    [seen] = [p for p in await administration.principals(admin) if p.subject == user.subject]
    assert (seen.role, seen.disabled_at) == ("reviewer", None)
    ref = PrincipalRef(issuer=user.issuer, subject=user.subject)
    assert await administration.set_disabled(admin, ref, disabled=True) is True
    assert await administration.set_disabled(admin, ref, disabled=True) is False
    with pytest.raises(Disabled, match="disabled in Concord"):
        await registry.admit(user)  # this process: at once
    await other_process.admit(user)  # another process: not before its next refresh
    clock.now += 6
    with pytest.raises(Disabled):
        await other_process.admit(user)

    assert await administration.set_disabled(admin, ref, disabled=False) is True
    await registry.admit(user)
    trail = await PostgresAuditTrail().find(
        pool, object_type="principal", object_id=f"{user.issuer} {user.subject}"
    )
    assert [e.action for e in trail[::-1]] == [
        "admin.principal.disable",
        "admin.principal.enable",
    ]


@pytest.mark.asyncio
async def test_only_an_admin_manages_and_not_their_own_account(pool: asyncpg.Pool) -> None:
    run = uuid.uuid4().hex[:8]
    admin, reviewer = _principal(Role.ADMIN, f"a-{run}"), _principal(Role.REVIEWER, f"r-{run}")
    registry = PrincipalRegistry(pool)
    administration = Administration(pool, registry, PostgresAuditTrail())
    await registry.admit(admin)
    with pytest.raises(Forbidden, match=r"admin\.manage"):
        await administration.principals(reviewer)
    with pytest.raises(OwnAccount, match="own account"):
        own = PrincipalRef(issuer=admin.issuer, subject=admin.subject)
        await administration.set_disabled(admin, own, disabled=True)
    with pytest.raises(NotFound):
        nobody = PrincipalRef(issuer=admin.issuer, subject=f"nobody-{run}")
        await administration.set_disabled(admin, nobody, disabled=True)


@pytest.mark.asyncio
async def test_a_subscription_is_kept_audited_and_filters_alerts(pool: asyncpg.Pool) -> None:
    run = uuid.uuid4().hex[:8]
    admin = _principal(Role.ADMIN, f"a-{run}")
    administration = Administration(pool, PrincipalRegistry(pool), PostgresAuditTrail())
    name = f"lab-critical-{run}"
    wanted = SubscriptionFilter(severity=("HIGH", "CRITICAL"), source=("lab",))
    kept = await administration.put_subscription(
        admin, name, SubscriptionRequest(description="the lab's urgent ones", filter=wanted)
    )
    assert (kept.name, kept.filter, kept.created_by) == (name, wanted, admin.key)
    assert await load_subscription(pool, name) == wanted
    assert name in {s.name for s in await administration.subscriptions(admin)}
    assert follows(wanted, review_alert(run, severity="HIGH", source="lab"))
    assert not follows(wanted, review_alert(run, severity="LOW", source="lab"))
    assert not follows(wanted, review_alert(run, severity="CRITICAL", source="clinic"))
    assert follows(SubscriptionFilter(), review_alert(run, severity="LOW", source="clinic"))

    await administration.delete_subscription(admin, name)
    assert await load_subscription(pool, name) is None
    with pytest.raises(NotFound):
        await administration.delete_subscription(admin, name)
    trail = await PostgresAuditTrail().find(pool, object_type="subscription", object_id=name)
    assert [e.action for e in trail[::-1]] == [
        "admin.subscription.put",
        "admin.subscription.delete",
    ]


def test_following_an_unknown_subscription_says_who_creates_one(
    postgres: PostgresInfo, broker: BrokerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONCORD_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    monkeypatch.setenv("CONCORD_DATABASE_URL", postgres.dsn)
    result = CliRunner().invoke(
        main, ["alerts", "follow", "--subscription", "nope", "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "no subscription nope: an administrator creates it" in result.output
