"""PostgreSQL stopped for 30 s while records stream in, then started again on the same data
directory and port: the workers wait (retrying with capped backoff, the same batch again),
report not ready meanwhile (GET /health answers 503 with the failure's kind under "stalled"),
and resume by themselves; nothing is lost and no alert is raised twice.

The stream: the first chunks before the outage (some alerts stored), more during it (they
queue on the broker: ingestion cannot check its de-duplication window), the last after it.
Measured: when each worker first reported stalled, how long after PostgreSQL was back the
workers were ready again, the first alert came and every expected alert was stored. The
workers run with the default backoff (0.2 s doubling up to 30 s, jittered), so a worker may
wait up to about 30 s more after the database is back.

The stack's stop_postgres and start_postgres_again make the outage; the test checks them too
(same port and data directory, recorded, refused while the server runs).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from fault_tools import (
    Workload,
    fetch,
    health,
    stored_alerts,
)

from concord.stack.processes import is_alive
from concord.stack.stack import (
    StackError,
    StackInfo,
    load_state,
    start_postgres_again,
    stop_postgres,
)

pytestmark = [pytest.mark.faults]

PATIENTS, CHUNK = 40, 4  # 10 chunks of 40 FHIR records
BEFORE, DURING = 3, 5  # chunks sent before the outage and during it; the rest after
DOWN_SECONDS = 30.0


class _Watch:
    """Each worker's /health while the database is away: when it first answered 503 with a
    "stalled" kind, and which kinds it gave."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.first_stalled: dict[str, float] = {}
        self.kinds: dict[str, set[str]] = {name: set() for name in ports}
        self.answers: dict[str, int] = {name: 0 for name in ports}

    async def poll(self, since: float) -> None:
        for name, port in self.ports.items():
            status, body = await asyncio.to_thread(health, port)
            self.answers[name] += status != 0
            if status == 503 and body.get("stalled"):
                self.kinds[name].add(str(body["stalled"]))
                self.first_stalled.setdefault(name, round(time.monotonic() - since, 2))


@pytest.mark.asyncio
async def test_workers_wait_out_a_postgresql_outage_and_resume_losing_nothing(
    fault_stack: StackInfo, tmp_path: Path
) -> None:
    stack = fault_stack
    if stack.postgres is None:
        pytest.skip("CONCORD_DATABASE_URL names a PostgreSQL the stack did not start: not stopped")
    run = Workload(stack)
    chunks = run.chunks(PATIENTS, CHUNK)
    watch = _Watch(run.ports)
    figures: dict[str, Any] = {}
    with run.rss:
        # Under load: the pipeline is raising alerts when the database goes.
        sent = await run.under_load(chunks[:BEFORE])
        at_stop = await run.alert_count()
        before = await stored_alerts(run.dsn, run.prefix)
        result = await asyncio.to_thread(stop_postgres, stack.state_dir)
        stopped = time.monotonic()
        assert result.outcome == "stopped" and not is_alive(stack.postgres)

        # While it is away: more records, and every worker's /health watched.
        pending = list(chunks[BEFORE : BEFORE + DURING])
        next_chunk = stopped
        while time.monotonic() - stopped < DOWN_SECONDS:
            if pending and time.monotonic() >= next_chunk:
                sent += await run.send(pending.pop(0))
                next_chunk += DOWN_SECONDS / (DURING + 1)
            await watch.poll(stopped)
            await asyncio.sleep(0.5)
        for chunk in pending:
            sent += await run.send(chunk)
        assert await _database_unreachable(run.dsn), "the database was not away"

        again = await start_postgres_again(stack.state_dir)
        back = time.monotonic()
        # The same port and data directory (the workers' DSN stays valid), recorded.
        assert again.pid != stack.postgres.pid and again.port == stack.postgres.port
        assert again.extra == stack.postgres.extra
        recorded = load_state(stack.state_dir)
        assert recorded is not None and recorded.postgres == again
        with pytest.raises(RuntimeError, match="still running"):
            await start_postgres_again(stack.state_dir)
        for chunk in chunks[BEFORE + DURING :]:
            sent += await run.send(chunk)

        expected = run.expected(range(PATIENTS))
        first, ready, stored = await run.recovered(
            expected,
            since=back,
            alerts_before=at_stop,
            within=90,
            figures=figures,
            after="back",
        )

    # The alerts stored before the outage are still there: the data directory was kept.
    assert set(stored) >= set(before)
    # Every worker waited, and said so: 503 with what it is retrying.
    assert all(watch.answers.values()), "a worker's /health stopped answering"
    assert set(watch.first_stalled) == set(run.ports), f"not seen stalled: {watch.kinds}"
    assert first > at_stop and ready
    # ... and none of them died or was restarted.
    run.workers_alive(none_restarted=True)

    # No record lost or dead-lettered for the outage, no alert raised twice.
    checked = await run.checked(expected, stored, sent, assertions_of=PATIENTS)
    run.report(
        tmp_path,
        "postgres outage",
        checked,
        {
            "down_seconds": round(back - stopped, 1),
            "alerts_at_stop": at_stop,
            "first_stalled_after_stop_seconds": watch.first_stalled,
            "stalled_kinds": {name: sorted(kinds) for name, kinds in watch.kinds.items()},
            **figures,
        },
    )


async def _database_unreachable(dsn: str) -> bool:
    """Whether the database refuses connections now (it should, while stopped)."""
    try:
        await fetch(dsn, "SELECT 1")
    except OSError:
        return True
    return False


def test_stopping_the_postgres_of_no_stack_says_so(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="no PostgreSQL"):
        stop_postgres(tmp_path)
