"""The admin role's work: the principals that have used the API, and refusing one before its
token expires (a lost laptop, a person who left); and the alert subscriptions that consumers
follow (`concord alerts follow --subscription NAME`).

Accounts are the identity provider's: Concord learns a principal from its first verified
token and keeps who it was and when it was last seen. Disabling takes effect at once on this
process and within REFRESH_SECONDS on the others."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints

from concord.events.models import AlertKind, AttributeClass, Severity
from concord.review.access import Permission, Principal, ReviewAccessError, require
from concord.review.alerts import NO_CONTROL, NO_NUL
from concord.review.audit import AuditRecord
from concord.review.handlers import AuditPort, NotFound

REFRESH_SECONDS = 5.0  # how stale another process's view of the disabled principals may be
SEEN_EVERY_SECONDS = 60.0  # a principal's last_seen is written at most this often

SubscriptionName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
# PostgreSQL's text cannot hold NUL; ids and names hold no control character at all.
Text = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=500, pattern=NO_NUL),
]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=500, pattern=NO_CONTROL),
]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class OwnAccount(ReviewAccessError):
    """409: an administrator asked to disable their own account (no one could enable it)."""

    status_code = 409

    def __init__(self) -> None:
        super().__init__("an administrator cannot disable their own account")


class Disabled(ReviewAccessError):
    """403: an administrator disabled this principal in Concord."""

    status_code = 403

    def __init__(self) -> None:
        super().__init__(
            "this account is disabled in Concord: ask a Concord administrator to enable it"
        )


class PrincipalView(Model):
    issuer: str
    subject: str
    role: str
    display_name: str | None
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    disabled_at: AwareDatetime | None
    disabled_by: str | None


class PrincipalRef(Model):
    issuer: Name
    subject: Name


class SubscriptionFilter(Model):
    """Which alerts a subscription follows; an empty field: any."""

    kind: tuple[AlertKind, ...] = ()
    attribute_class: tuple[AttributeClass, ...] = ()
    severity: tuple[Severity, ...] = ()
    source: tuple[
        Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_CONTROL)], ...
    ] = ()


class SubscriptionRequest(Model):
    description: Text
    filter: SubscriptionFilter


class Subscription(Model):
    name: str
    description: str
    filter: SubscriptionFilter
    created_by: str
    created_at: AwareDatetime
    updated_at: AwareDatetime


def follows(subscription_filter: SubscriptionFilter, alert: Any) -> bool:
    """Whether an alert (concord.events.models.Alert) is one the subscription follows."""
    f = subscription_filter
    sources = {a.source_system for a in alert.assertions}
    return (
        (not f.kind or alert.kind in f.kind)
        and (not f.attribute_class or alert.attribute_class in f.attribute_class)
        and (not f.severity or alert.severity in f.severity)
        and (not f.source or bool(sources & set(f.source)))
    )


class PrincipalRegistry:
    """Records principals as they call, and refuses the disabled ones."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.monotonic = monotonic
        self._disabled: set[tuple[str, str]] = set()
        self._refreshed = float("-inf")
        self._seen: dict[tuple[str, str], float] = {}

    async def admit(self, principal: Principal) -> None:
        """Raise Disabled for a disabled principal; note the others' sighting."""
        now = self.monotonic()
        if now - self._refreshed >= REFRESH_SECONDS:
            rows = await self.pool.fetch(
                "SELECT issuer, subject FROM review_principals WHERE disabled_at IS NOT NULL"
            )
            self._disabled = {(r["issuer"], r["subject"]) for r in rows}
            self._refreshed = now
        key = (principal.issuer, principal.subject)
        if key in self._disabled:
            raise Disabled()
        if now - self._seen.get(key, float("-inf")) >= SEEN_EVERY_SECONDS:
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[key] = now
            await self.pool.execute(
                """
                INSERT INTO review_principals (issuer, subject, role, display_name, first_seen,
                                               last_seen)
                VALUES ($1, $2, $3, $4, $5, $5)
                ON CONFLICT (issuer, subject) DO UPDATE SET role = excluded.role,
                    display_name = excluded.display_name, last_seen = excluded.last_seen
                """,
                principal.issuer,
                principal.subject,
                principal.role.value,
                principal.display_name,
                self.clock(),
            )

    def forget(self, key: tuple[str, str], *, disabled: bool) -> None:
        """This process's view, at once, after a change made here."""
        if disabled:
            self._disabled.add(key)
        else:
            self._disabled.discard(key)


class Administration:
    def __init__(
        self,
        pool: asyncpg.Pool,
        registry: PrincipalRegistry,
        audit: AuditPort,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.pool = pool
        self.registry = registry
        self.audit = audit
        self.clock = clock

    async def principals(self, principal: Principal) -> list[PrincipalView]:
        require(principal, Permission.ADMIN_MANAGE)
        rows = await self.pool.fetch(
            "SELECT * FROM review_principals ORDER BY last_seen DESC LIMIT 1000"
        )
        return [PrincipalView(**dict(r)) for r in rows]

    async def set_disabled(
        self, principal: Principal, ref: PrincipalRef, *, disabled: bool
    ) -> bool:
        """Disable (or enable again) a principal; False when it already was."""
        require(principal, Permission.ADMIN_MANAGE)
        if disabled and (ref.issuer, ref.subject) == (principal.issuer, principal.subject):
            raise OwnAccount()
        async with self.pool.acquire() as conn, conn.transaction():
            changed = await conn.fetchval(
                """
                UPDATE review_principals
                SET disabled_at = CASE WHEN $3::boolean THEN $4::timestamptz END,
                    disabled_by = CASE WHEN $3::boolean THEN $5::text END
                WHERE issuer = $1 AND subject = $2 AND (disabled_at IS NULL) = $3::boolean
                RETURNING true
                """,
                ref.issuer,
                ref.subject,
                disabled,
                self.clock(),
                principal.key,
            )
            if changed is None:
                known = await conn.fetchval(
                    "SELECT true FROM review_principals WHERE issuer = $1 AND subject = $2",
                    ref.issuer,
                    ref.subject,
                )
                if not known:
                    raise NotFound("no principal with that issuer and subject has used the API")
                return False
            action = "admin.principal.disable" if disabled else "admin.principal.enable"
            await self._audit(conn, principal, action, "principal", f"{ref.issuer} {ref.subject}")
        self.registry.forget((ref.issuer, ref.subject), disabled=disabled)
        return True

    async def subscriptions(self, principal: Principal) -> list[Subscription]:
        require(principal, Permission.ADMIN_MANAGE)
        rows = await self.pool.fetch("SELECT * FROM alert_subscriptions ORDER BY name")
        return [_subscription(r) for r in rows]

    async def put_subscription(
        self, principal: Principal, name: str, request: SubscriptionRequest
    ) -> Subscription:
        require(principal, Permission.ADMIN_MANAGE)
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """
                INSERT INTO alert_subscriptions (name, description, filter, created_by,
                                                 created_at, updated_at)
                VALUES ($1, $2, $3::jsonb, $4, $5, $5)
                ON CONFLICT (name) DO UPDATE SET description = excluded.description,
                    filter = excluded.filter, updated_at = excluded.updated_at
                RETURNING *
                """,
                name,
                request.description,
                orjson.dumps(request.filter.model_dump(mode="json")).decode(),
                principal.key,
                now,
            )
            await self._audit(conn, principal, "admin.subscription.put", "subscription", name)
        return _subscription(row)

    async def delete_subscription(self, principal: Principal, name: str) -> None:
        require(principal, Permission.ADMIN_MANAGE)
        async with self.pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(
                "DELETE FROM alert_subscriptions WHERE name = $1 RETURNING true", name
            )
            if not deleted:
                raise NotFound(f"no subscription {name}")
            await self._audit(conn, principal, "admin.subscription.delete", "subscription", name)

    async def _audit(
        self,
        conn: asyncpg.Connection,
        principal: Principal,
        action: str,
        object_type: str,
        object_id: str,
    ) -> None:
        record = AuditRecord(
            actor=principal.key,
            role=principal.role.value,
            action=action,
            object_type=object_type,
            object_id=object_id[:256],
        )
        await self.audit.append(conn, record)


def _subscription(row: asyncpg.Record) -> Subscription:
    return Subscription(
        name=row["name"],
        description=row["description"],
        filter=SubscriptionFilter.model_validate(orjson.loads(row["filter"])),
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def load_subscription(pool: asyncpg.Pool, name: str) -> SubscriptionFilter | None:
    """A subscription's filter (for `concord alerts follow --subscription`), or None."""
    value = await pool.fetchval("SELECT filter FROM alert_subscriptions WHERE name = $1", name)
    return None if value is None else SubscriptionFilter.model_validate(orjson.loads(value))
