"""The auditor's endpoints (issue 16): the audit trail newest first, filtered and paged by seq,
each read of it audited in turn; and the chain's verification over HTTP, with the anchors read
from the broker, or without them (and saying so) when it cannot be read.

Each test has a database of its own: verify judges the whole trail."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from concord.review.access import Role
from concord.review.audit import AuditRecord
from concord.review.audit_store import PostgresAuditTrail, publish_anchor, read_anchors
from concord.review.audit_view import AnchorReader
from concord.runtime.db import apply_migrations
from concord.stack.broker import BrokerInfo
from concord.stack.postgres import PostgresInfo, create_database, drop_database
from review_tools import ReviewApp, local_settings, review_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]
UNREACHABLE = "127.0.0.1:9"


@pytest_asyncio.fixture
async def own_pool(postgres: PostgresInfo) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh, migrated database of this test's own."""
    name = f"concord_auditapi_{uuid.uuid4().hex[:10]}"
    dsn = await create_database(postgres.dsn, name)
    await apply_migrations(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()
    await drop_database(postgres.dsn, name)


def _api(pool: asyncpg.Pool, tmp_path: Path, anchors: AnchorReader | None) -> ReviewApp:
    api = review_app(pool, local_settings(tmp_path), anchors=anchors)
    view = api.app.state.audit_view  # verify reads the trail in pages of three rows
    view.anchor_timeout, view.page_size = 20.0, 3
    return api


async def _append(pool: asyncpg.Pool, *records: AuditRecord) -> None:
    trail = PostgresAuditTrail()
    for record in records:
        async with pool.acquire() as conn, conn.transaction():
            await trail.append(conn, record)


def _read(actor: str, alert_id: str) -> AuditRecord:
    return AuditRecord(
        actor=actor,
        role="reviewer",
        purpose="HOPERAT",
        action="alert.read",
        object_type="alert",
        object_id=alert_id,
    )


async def _as_attacker(pool: asyncpg.Pool, statement: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(statement)


async def test_an_auditor_pages_the_trail_newest_first_and_each_read_is_audited(
    own_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    api = _api(own_pool, tmp_path, anchors=None)
    await _append(
        own_pool,
        *[_read("idp r1", "A1") for _ in range(5)],
        _read("idp r2", "A1"),
        _read("idp r1", "A2"),
    )
    auditor = api.as_role(Role.AUDITOR, "aud-1")
    async with api.client:
        seqs: list[int] = []
        params: dict[str, Any] = {"object_type": "alert", "object_id": "A1", "limit": 2}
        pages = 0
        while True:
            page = (await api.client.get("/api/v1/audit", params=params, headers=auditor)).json()
            pages += 1
            seqs += [e["seq"] for e in page["entries"]]
            assert {(e["object_id"], e["action"]) for e in page["entries"]} == {
                ("A1", "alert.read")
            }
            if page["next_before_seq"] is None:
                break
            params["before_seq"] = page["next_before_seq"]
        assert seqs == [6, 5, 4, 3, 2, 1] and pages == 3

        by_r2 = await api.client.get("/api/v1/audit", params={"actor": "idp r2"}, headers=auditor)
        assert [(e["seq"], e["purpose"], e["role"]) for e in by_r2.json()["entries"]] == [
            (6, "HOPERAT", "reviewer")
        ]
        own = await api.client.get(
            "/api/v1/audit", params={"action": "audit.read", "limit": 200}, headers=auditor
        )
        # Every read of the trail is in it, newest first: the four above, not this one yet.
        entries = own.json()["entries"]
        assert [e["object_id"] for e in entries] == ["query"] * 4
        assert {(e["role"], e["object_type"]) for e in entries} == {("auditor", "audit_log")}
        assert entries[-1]["detail"] == {
            "object_type": "alert", "object_id": "A1", "rows": 2,
        }  # fmt: skip
        assert entries[0]["detail"] == {"actor": "idp r2", "rows": 1}
        assert [e["seq"] for e in entries] == sorted((e["seq"] for e in entries), reverse=True)

        for wrong in ({"limit": 201}, {"before_seq": 0}, {"actor": "a\nb"}, {"object_id": ""}):
            refused = await api.client.get("/api/v1/audit", params=wrong, headers=auditor)
            assert refused.status_code == 422, wrong
        reviewer = await api.client.get(
            "/api/v1/audit", headers=api.as_role(Role.REVIEWER, "aud-1")
        )
        assert reviewer.status_code == 403 and "audit.read" in reviewer.json()["detail"]


async def test_verify_checks_the_chain_and_the_anchors_and_says_when_it_could_not(
    own_pool: asyncpg.Pool, broker: BrokerInfo, tmp_path: Path
) -> None:
    await _append(own_pool, *[_read("idp r1", f"A{i}") for i in range(6)])
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap_servers, acks="all", enable_idempotence=False
    )
    await producer.start()
    try:
        assert (await publish_anchor(own_pool, producer)) is not None
    finally:
        await producer.stop()
    with_anchors = _api(
        own_pool, tmp_path, lambda trail_id: read_anchors(broker.bootstrap_servers, trail_id)
    )
    auditor = with_anchors.as_role(Role.AUDITOR, "aud-1")
    async with with_anchors.client as client:
        intact = (await client.get("/api/v1/audit/verify", headers=auditor)).json()
        assert intact["intact"] and intact["anchors_checked"]
        assert (intact["rows"], intact["head_seq"], intact["latest_anchor_seq"]) == (6, 6, 6)
        assert intact["line"] == "audit trail intact: 6 rows, head seq=6, latest anchor seq=6"

        # Its own row (seq 7) is after the anchor; cut the tail from seq 5 on.
        await _as_attacker(own_pool, "DELETE FROM audit_log WHERE seq >= 5")
        cut = (await client.get("/api/v1/audit/verify", headers=auditor)).json()
        assert (cut["intact"], cut["broken_seq"], cut["fault"]) == (False, 5, "truncated")
        assert cut["line"].startswith("audit trail broken at seq=5: truncated")

    without = _api(own_pool, tmp_path, lambda trail_id: read_anchors(UNREACHABLE, trail_id))
    async with without.client as client:
        blind = (await client.get("/api/v1/audit/verify", headers=auditor)).json()
        # What is left is consistent: only the anchors could tell, and they could not be read.
        assert (blind["intact"], blind["anchors_checked"], blind["anchors"]) == (True, False, 0)
        assert blind["line"].endswith("(anchors not checked: the broker could not be read)")

        await _as_attacker(own_pool, "UPDATE audit_log SET object_id = 'B9' WHERE seq = 2")
        edited = (await client.get("/api/v1/audit/verify", headers=auditor)).json()
        assert (edited["intact"], edited["broken_seq"], edited["fault"]) == (False, 2, "edited")

    verified = await PostgresAuditTrail().find(own_pool, object_id="verify")
    # The first one's row was cut off with the tail.
    assert [e.detail["intact"] for e in verified[::-1]] == [False, True, False]
    assert {(e.action, e.object_type, e.role) for e in verified} == {
        ("audit.read", "audit_log", "auditor")
    }
