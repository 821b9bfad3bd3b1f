"""The audit trail against the real PostgreSQL and broker: appends under concurrency, the
append-only triggers, the review service's role, the tamper test (`concord audit verify` names
the row an attacker with superuser rights edited, deleted, inserted or moved), a trail cut short
after an anchor, and the command line's decisions audited.

Each test gets a database of its own on the session's server (the trail is one per database),
and the anchors it publishes on the shared broker are keyed by its trail's id.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from click.testing import CliRunner, Result

from concord.cli import main
from concord.normalization.identity.demographics import from_fhir_patient
from concord.normalization.identity.resolution import IdentityRequest
from concord.normalization.identity_store import PostgresIdentityStore
from concord.review.audit import AuditRecord, ChainVerifier
from concord.review.audit_store import (
    NotInTransaction,
    PostgresAuditTrail,
    publish_anchor,
    read_anchors,
)
from concord.runtime.db import apply_migrations, migration_files
from concord.stack.broker import BrokerInfo
from concord.stack.postgres import PostgresInfo, create_database, drop_database

pytestmark = pytest.mark.integration


def _record(i: int, *, actor: str = "https://idp.example/ r1") -> AuditRecord:
    return AuditRecord(
        actor=actor,
        role="reviewer",
        purpose="HOPERAT",
        action="alert.read" if i % 2 else "alert.acknowledge",
        object_type="alert",
        object_id=f"A{i}",
        detail={"revision": i},
    )


@pytest.fixture
def database(postgres: PostgresInfo) -> Iterator[str]:
    """A fresh, migrated database on the session's server: its DSN."""
    name = f"concord_audit_{uuid.uuid4().hex[:10]}"
    dsn = asyncio.run(create_database(postgres.dsn, name))
    asyncio.run(apply_migrations(dsn))
    yield dsn
    asyncio.run(drop_database(postgres.dsn, name))


@pytest.fixture
def concord(
    database: str, broker: BrokerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    """`concord ARGS...` through click, with a stack.env naming the test's database and the
    session's broker."""
    for variable in ("CONCORD_DATABASE_URL", "CONCORD_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "stack.env").write_text(
        f"CONCORD_DATABASE_URL={database}\nCONCORD_BOOTSTRAP_SERVERS={broker.bootstrap_servers}\n"
    )

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, [*args, "--state-dir", str(tmp_path)])

    return run


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)


async def _append(dsn: str, n: int) -> list[str]:
    """n rows through append(), each in a transaction of its own; their hashes."""
    trail = PostgresAuditTrail()
    conn = await _connect(dsn)
    try:
        hashes = []
        for i in range(1, n + 1):
            async with conn.transaction():
                hashes.append((await trail.append(conn, _record(i))).hash)
        return hashes
    finally:
        await conn.close()


async def _as_attacker(dsn: str, *statements: str, how: str = "replica") -> None:
    """What a superuser can do: switch the triggers off, change the table, switch them on."""
    conn = await _connect(dsn)
    try:
        async with conn.transaction():
            if how == "replica":
                await conn.execute("SET LOCAL session_replication_role = replica")
            else:
                await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
            for statement in statements:
                await conn.execute(statement)
            if how != "replica":
                await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
    finally:
        await conn.close()


async def _entries(dsn: str) -> list[tuple[int, str]]:
    conn = await _connect(dsn)
    try:
        return [
            (r["seq"], r["hash"])
            for r in await conn.fetch("SELECT seq, hash FROM audit_log ORDER BY seq")
        ]
    finally:
        await conn.close()


# --- appending -----------------------------------------------------------------------------------


def test_concurrent_appends_make_one_linear_chain(database: str) -> None:
    async def run() -> tuple[int, str]:
        pool = await asyncpg.create_pool(database, min_size=8, max_size=8)
        assert pool is not None
        trail = PostgresAuditTrail()
        started = asyncio.Event()

        async def request(i: int) -> bool:
            await started.wait()
            async with pool.acquire() as conn:
                try:
                    async with conn.transaction():
                        await conn.execute("SELECT pg_sleep(0.001 * ($1 % 5))", i)
                        await trail.append(conn, _record(i))
                        if i % 7 == 0:
                            raise RuntimeError("the request failed after its append")
                except RuntimeError:
                    return False
            return True

        try:
            tasks = [asyncio.create_task(request(i)) for i in range(1, 61)]
            started.set()
            committed = sum(await asyncio.gather(*tasks))
            verifier = ChainVerifier(await trail.trail_id(pool))
            async for page in trail.pages(pool, page_size=7):
                verifier.feed(page)
            verdict = verifier.finish()
            return committed, verdict.line()
        finally:
            await pool.close()

    committed, line = asyncio.run(run())
    assert committed == 60 - 60 // 7
    assert line == (
        f"audit trail intact: {committed} rows, head seq={committed}, latest anchor seq=none"
    )
    assert [seq for seq, _ in asyncio.run(_entries(database))] == list(range(1, committed + 1))


def test_append_outside_a_transaction_is_refused(database: str) -> None:
    async def run() -> None:
        conn = await _connect(database)
        try:
            with pytest.raises(NotInTransaction):
                await PostgresAuditTrail().append(conn, _record(1))
            assert await conn.fetchval("SELECT count(*) FROM audit_log") == 0
        finally:
            await conn.close()

    asyncio.run(run())


def test_the_migration_runs_again_without_harm(database: str) -> None:
    [(_, sql)] = [(name, sql) for name, sql in migration_files() if name.startswith("0015_")]

    async def run() -> tuple[str, str, int]:
        conn = await _connect(database)
        try:
            before = str(await conn.fetchval("SELECT trail_id FROM audit_trail"))
            await conn.execute(sql)
            after = str(await conn.fetchval("SELECT trail_id FROM audit_trail"))
            roles = await conn.fetchval(
                "SELECT count(*) FROM pg_roles WHERE rolname = 'concord_review' AND NOT rolcanlogin"
            )
            return before, after, roles
        finally:
            await conn.close()

    before, after, roles = asyncio.run(run())
    assert before == after
    assert roles == 1


# --- append-only ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 3",
        "TRUNCATE audit_log",
        "UPDATE audit_trail SET trail_id = gen_random_uuid()",
        "DELETE FROM audit_trail",
        "TRUNCATE audit_trail",
    ],
)
def test_the_triggers_refuse_changes_even_from_the_owner(database: str, statement: str) -> None:
    hashes = asyncio.run(_append(database, 3))

    async def run() -> None:
        conn = await _connect(database)
        try:
            assert await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="append-only"):
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())
    assert [h for _, h in sorted(asyncio.run(_entries(database)))] == hashes


def test_the_review_role_appends_and_reads_but_cannot_change(database: str) -> None:
    async def run() -> None:
        conn = await _connect(database)
        try:
            await conn.execute("SET ROLE concord_review")
            trail = PostgresAuditTrail()
            async with conn.transaction():
                first = await trail.append(conn, _record(1))
            async with conn.transaction():
                second = await trail.append(conn, _record(2))
            assert (first.seq, second.seq, second.prev_hash) == (1, 2, first.hash)
            assert [e.hash for e in await trail.entries(conn)] == [first.hash, second.hash]
            for statement in (
                "UPDATE audit_log SET actor = 'mallory' WHERE seq = 1",
                "DELETE FROM audit_log WHERE seq = 2",
                "TRUNCATE audit_log",
                "UPDATE audit_trail SET trail_id = gen_random_uuid()",
                "ALTER TABLE audit_log DISABLE TRIGGER USER",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
            await conn.execute("RESET ROLE")
            assert await conn.fetchval("SELECT count(*) FROM audit_log") == 2
        finally:
            await conn.close()

    asyncio.run(run())


# --- the tamper test ---------------------------------------------------------------------------

ROWS = 10
# What an attacker does to row 4 of 10, and the line verify must print.
TAMPERING = {
    "edit": (
        ["UPDATE audit_log SET actor = 'mallory' WHERE seq = 4"],
        "audit trail broken at seq=4: edited (its hash does not match its content)",
    ),
    "edit-detail": (
        ["""UPDATE audit_log SET detail = '{"revision": 40}' WHERE seq = 4"""],
        "audit trail broken at seq=4: edited (its hash does not match its content)",
    ),
    "delete": (
        ["DELETE FROM audit_log WHERE seq = 4"],
        "audit trail broken at seq=4: deleted (seq=4 is missing: seq=5 follows seq=3)",
    ),
    "delete-and-renumber": (
        [
            "DELETE FROM audit_log WHERE seq = 4",
            "UPDATE audit_log SET seq = seq + 1000000 WHERE seq > 4",
            "UPDATE audit_log SET seq = seq - 1000001 WHERE seq > 1000000",
        ],
        "audit trail broken at seq=4: deleted (the row written as seq=4 is missing; the rows "
        "after were renumbered)",
    ),
    "insert": (
        [
            "UPDATE audit_log SET seq = seq + 1000000 WHERE seq >= 4",
            "UPDATE audit_log SET seq = seq - 999999 WHERE seq > 1000000",
            "INSERT INTO audit_log SELECT 4, at, 'mallory', role, purpose, action, object_type, "
            "'A404', detail, hash, repeat('0', 64) FROM audit_log WHERE seq = 3",
        ],
        "audit trail broken at seq=4: inserted (it is not part of the chain: seq=5 links to seq=3)",
    ),
    "reorder": (
        [
            "UPDATE audit_log SET seq = 1000000 WHERE seq = 4",
            "UPDATE audit_log SET seq = 4 WHERE seq = 5",
            "UPDATE audit_log SET seq = 5 WHERE seq = 1000000",
        ],
        "audit trail broken at seq=4: reordered (it holds the row written as seq=5; the row "
        "written as seq=4 is at seq=5)",
    ),
}


@pytest.mark.parametrize("how", ["replica", "disable-trigger"])
@pytest.mark.parametrize("tampering", sorted(TAMPERING))
def test_verify_names_the_row_an_attacker_touched(
    database: str, concord: Callable[..., Result], tampering: str, how: str
) -> None:
    asyncio.run(_append(database, ROWS))
    anchored = concord("audit", "anchor")
    assert anchored.exit_code == 0, anchored.output
    assert f"audit anchor seq={ROWS} hash=" in anchored.output
    intact = concord("audit", "verify")
    assert intact.exit_code == 0, intact.output
    assert intact.output == (
        f"audit trail intact: {ROWS} rows, head seq={ROWS}, latest anchor seq={ROWS}\n"
    )

    statements, expected = TAMPERING[tampering]
    asyncio.run(_as_attacker(database, *statements, how=how))

    broken = concord("audit", "verify")
    assert broken.exit_code == 1, broken.output
    assert broken.output == expected + "\n"
    # Without the broker too: the chain alone names the same row.
    alone = concord("audit", "verify", "--without-anchors")
    assert (alone.exit_code, alone.output) == (1, expected + "\n")
    # The triggers are back on.
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError):
        asyncio.run(_as_attacker_without_rights(database))


async def _as_attacker_without_rights(dsn: str) -> None:
    conn = await _connect(dsn)
    try:
        await conn.execute("DELETE FROM audit_log WHERE seq = 1")
    finally:
        await conn.close()


def test_a_tail_cut_off_after_an_anchor_is_named(
    database: str,
    broker: BrokerInfo,
    concord: Callable[..., Result],
    caplog: pytest.LogCaptureFixture,
) -> None:
    hashes = asyncio.run(_append(database, 6))

    async def anchor() -> tuple[int, str, list[tuple[int, str]]]:
        pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
        assert pool is not None
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap_servers, acks="all", enable_idempotence=False
        )
        await producer.start()
        try:
            published = await publish_anchor(pool, producer)
            assert published is not None
            trail_id = await PostgresAuditTrail().trail_id(pool)
            anchors, unreadable = await read_anchors(broker.bootstrap_servers, trail_id)
            assert unreadable == 0
            return published.seq, published.hash, [(a.seq, a.hash) for a in anchors]
        finally:
            await producer.stop()
            await pool.close()

    with caplog.at_level(logging.INFO, logger="concord.review.audit_store"):
        seq, head_hash, on_topic = asyncio.run(anchor())
    assert (seq, head_hash) == (6, hashes[-1])
    assert on_topic == [(6, hashes[-1])]
    assert f"audit anchor seq=6 hash={hashes[-1]}" in caplog.messages

    asyncio.run(_append(database, 2))  # rows after the anchor are fine
    assert concord("audit", "verify").output == (
        "audit trail intact: 8 rows, head seq=8, latest anchor seq=6\n"
    )

    asyncio.run(_as_attacker(database, "DELETE FROM audit_log WHERE seq >= 5"))
    cut = concord("audit", "verify")
    assert cut.exit_code == 1
    assert cut.output.startswith("audit trail broken at seq=5: truncated (the anchor of 20"), (
        cut.output
    )
    assert cut.output.endswith("names seq=6, the trail ends at seq=4)\n")
    # The chain alone cannot tell: what is left is consistent.
    assert concord("audit", "verify", "--without-anchors").exit_code == 0


def test_an_empty_trail_is_intact_and_has_nothing_to_anchor(concord: Callable[..., Result]) -> None:
    assert concord("audit", "anchor").output == "the audit trail is empty: nothing to anchor\n"
    verified = concord("audit", "verify")
    assert (verified.exit_code, verified.output) == (
        0,
        "audit trail intact: 0 rows, head seq=none, latest anchor seq=none\n",
    )


# --- the command line's decisions and `audit list` ------------------------------------------


async def _merge(dsn: str, run: str) -> tuple[str, str]:
    """Patient/1 merged into Patient/2 by an A40-like record: (absorbed, survivor)."""
    source = f"audit{run}"
    described = from_fhir_patient(
        {"resourceType": "Patient", "id": "1", "name": [{"family": f"Audit{run}"}],
         "birthDate": "1970-01-01"},
        source,
    )  # fmt: skip
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        store = PostgresIdentityStore(pool)
        [old] = await store.resolve_batch(
            [IdentityRequest(source=source, local_ids=("Patient/1",), demographics=described)]
        )
        [merge] = await store.resolve_batch(
            [IdentityRequest(source=source, local_ids=("Patient/2",), absorbs=("Patient/1",))]
        )
        return old.enterprise_id, merge.enterprise_id
    finally:
        await pool.close()


async def _merge_undone(dsn: str, absorbed: str) -> bool:
    conn = await _connect(dsn)
    try:
        return bool(
            await conn.fetchval(
                "SELECT unmerged_at IS NOT NULL FROM identity_merges "
                "WHERE absorbed_enterprise_id = $1",
                absorbed,
            )
        )
    finally:
        await conn.close()


def _listed(result: Result) -> list[dict[str, object]]:
    assert result.exit_code == 0, result.output
    return [orjson.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def test_an_unmerge_is_audited_with_it_and_a_refused_one_is_not(
    database: str, concord: Callable[..., Result]
) -> None:
    absorbed, survivor = asyncio.run(_merge(database, uuid.uuid4().hex[:6]))
    done = concord("identity", "unmerge", absorbed, "--reason", "two people", "--by", "qa")
    assert done.exit_code == 0, done.output
    [row] = _listed(concord("audit", "list", "--json"))
    assert {k: row[k] for k in ("seq", "actor", "role", "purpose", "action")} == {
        "seq": 1, "actor": "qa", "role": "cli", "purpose": None, "action": "cli.identity.unmerge",
    }  # fmt: skip
    assert (row["object_type"], row["object_id"]) == ("patient", absorbed)
    assert row["detail"] == {"survivor": survivor, "links_restored": 1, "views_restored": 1}
    assert "two people" not in str(row)  # the reason is free text: not in the trail

    again = concord("identity", "unmerge", absorbed, "--reason", "x", "--by", "qa")
    assert again.exit_code == 1
    assert len(_listed(concord("audit", "list", "--json"))) == 1
    assert concord("audit", "verify").exit_code == 0


def test_an_unmerge_whose_audit_row_fails_is_not_made(
    database: str, concord: Callable[..., Result]
) -> None:
    absorbed, _ = asyncio.run(_merge(database, uuid.uuid4().hex[:6]))
    # The append fails (the trail's id is gone): the unmerge goes back with it.
    asyncio.run(_as_attacker(database, "DELETE FROM audit_trail"))
    failed = concord("identity", "unmerge", absorbed, "--reason", "x", "--by", "qa")
    assert failed.exit_code != 0
    assert not asyncio.run(_merge_undone(database, absorbed))


def test_a_resolution_is_audited_once_published(
    database: str, concord: Callable[..., Result]
) -> None:
    alert_id = f"alert-{uuid.uuid4().hex[:8]}"

    async def store_alert() -> None:
        conn = await _connect(database)
        now = datetime.now(UTC)
        try:
            await conn.execute(
                "INSERT INTO alerts (alert_id, revision, conflict_revision, kind, status, "
                "patient_id, attribute, attribute_class, severity, assertions, opened_at, "
                "updated_at) VALUES ($1, 1, 1, 'CONFLICT', 'OPEN', 'EP-AUDIT', 'allergy:x', "
                "'allergy', 'HIGH', '[]', $2, $2)",
                alert_id,
                now,
            )
        finally:
            await conn.close()

    asyncio.run(store_alert())
    resolved = concord(
        "alerts", "resolve", alert_id, "--decision", "choose", "--value", "penicillin",
        "--by", "r7",
    )  # fmt: skip
    assert resolved.exit_code == 0, resolved.output
    resolution_id = resolved.output.split()[1]
    [row] = _listed(concord("audit", "list", "--object", f"alert:{alert_id}", "--json"))
    assert (row["actor"], row["role"], row["action"]) == ("r7", "cli", "cli.alert.resolve")
    assert row["detail"] == {"decision": "CHOSE_VALUE", "resolution_id": resolution_id}
    assert "penicillin" not in str(row)  # the value chosen is PHI: not in the trail

    text = concord("audit", "list", "--actor", "r7")
    assert text.exit_code == 0
    [line] = [line for line in text.output.splitlines() if "cli.alert.resolve" in line]
    assert line.startswith("1 20") and f" r7 (cli) cli.alert.resolve alert:{alert_id} " in line
    assert _listed(concord("audit", "list", "--actor", "nobody", "--json")) == []
    bad = concord("audit", "list", "--object", "alert")
    assert bad.exit_code == 2 and "TYPE:ID" in bad.output


def test_a_decision_the_trail_cannot_hold_is_not_made(
    database: str, concord: Callable[..., Result]
) -> None:
    absorbed, _ = asyncio.run(_merge(database, uuid.uuid4().hex[:6]))
    refused = concord("identity", "unmerge", absorbed, "--reason", "x", "--by", "qa\nforged")
    assert refused.exit_code == 2
    assert "the audit trail cannot record this decision (actor" in refused.output
    assert not asyncio.run(_merge_undone(database, absorbed))
