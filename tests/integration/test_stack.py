"""The local stack against real servers: broker and PostgreSQL fixtures, process escalation,
and `start_stack` / `concord stack status|down` with a stand-in worker."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from click.testing import CliRunner

from concord.cli.stack import stack as stack_cli
from concord.stack.broker import BrokerInfo
from concord.stack.postgres import PostgresInfo
from concord.stack.processes import ProcessDied, ProcessRecord, is_alive, spawn, stop_process
from concord.stack.stack import (
    ALL_SERVICES,
    StackError,
    add_worker,
    load_stack_env,
    load_state,
    remove_worker,
    restart_worker,
    start_stack,
    worker_service,
)
from concord.topics import ALL_TOPICS, RAW_FHIR

pytestmark = pytest.mark.integration

# A stand-in worker: answers /health like the real one, reports its CONCORD_* environment on
# /env, and keeps a child process so that `down` must clean up a whole process group.
STAND_IN_WORKER = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            env = {k: v for k, v in os.environ.items() if k.startswith("CONCORD_")}
            env["child_pid"] = str(child.pid)
            body = json.dumps(env).encode() if self.path == "/env" else b"ok"
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    host, port = os.environ["CONCORD_WEB_HOST"], int(os.environ["CONCORD_WEB_PORT"])
    HTTPServer((host, port), Handler).serve_forever()
    """
)

# Ignores SIGTERM (as a hung Faust worker would), and has two children: one in its process
# group, one that left it with setsid. All three must be gone after stop_process.
STUBBORN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
    in_group = subprocess.Popen(sleeper)
    own_session = subprocess.Popen(sleeper, start_new_session=True)
    print("READY", in_group.pid, own_session.pid, flush=True)
    time.sleep(300)
    """
)


@pytest.mark.asyncio
async def test_broker_round_trip_with_header(broker: BrokerInfo) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        meta = await producer.send_and_wait(
            RAW_FHIR, b'{"resourceType": "Patient"}', key=b"p1", headers=[("source", b"ehr-a")]
        )
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=20
    )
    await consumer.start()
    try:
        partition = TopicPartition(RAW_FHIR, meta.partition)
        consumer.assign([partition])
        consumer.seek(partition, meta.offset)
        record = await asyncio.wait_for(consumer.getone(), timeout=10)
    finally:
        await consumer.stop()
    assert record.key == b"p1"
    assert record.value == b'{"resourceType": "Patient"}'
    assert list(record.headers) == [("source", b"ehr-a")]


@pytest.mark.asyncio
async def test_every_topic_exists_with_its_partition_count(broker: BrokerInfo) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics([spec.name for spec in ALL_TOPICS])
    finally:
        await admin.close()
    found = {topic["topic"]: len(topic["partitions"]) for topic in described}
    assert found == {spec.name: spec.partitions for spec in ALL_TOPICS}


@pytest.mark.asyncio
async def test_postgres_is_migrated(postgres: PostgresInfo) -> None:
    conn = await asyncpg.connect(postgres.dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('alerts') IS NOT NULL")
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 1
    finally:
        await conn.close()


def test_stop_escalates_to_sigkill_and_leaves_no_orphans(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    record = spawn("stubborn", "worker", [sys.executable, "-c", STUBBORN], log)
    child_pids = _wait_for_ready_line(log)

    started = time.monotonic()
    result = stop_process(record)  # a worker: SIGTERM, 5 s grace, then SIGKILL
    elapsed = time.monotonic() - started

    assert result.outcome == "killed"
    assert 4.5 < elapsed < 10
    assert not is_alive(record)
    for pid in child_pids:
        assert not _running(pid), f"child {pid} survived"


def test_stack_up_status_down(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    stand_in = tmp_path / "stand_in_worker.py"
    stand_in.write_text(STAND_IN_WORKER)
    lines: list[str] = []

    info = asyncio.run(
        start_stack(
            state_dir, worker_command=[sys.executable, str(stand_in)], progress=lines.append
        )
    )
    assert set(info.workers) == set(ALL_SERVICES)
    assert any(line.startswith("broker ready on ") for line in lines)
    assert any(line.startswith("postgres ready") for line in lines)
    assert any(line.startswith("worker conflicts ready (pid ") for line in lines)

    env = load_stack_env(state_dir)
    assert env == {
        "CONCORD_BOOTSTRAP_SERVERS": info.bootstrap_servers,
        "CONCORD_DATABASE_URL": info.database_url,
        "CONCORD_MLLP_HOST": "127.0.0.1",
        "CONCORD_MLLP_PORT": str(info.mllp_port),
    }
    assert all(f"{key}={value}" in lines for key, value in env.items())
    seen = json.loads(_get(f"http://127.0.0.1:{info.workers['conflicts'].port}/env"))
    assert seen["CONCORD_BOOTSTRAP_SERVERS"] == info.bootstrap_servers
    assert seen["CONCORD_DATABASE_URL"] == info.database_url
    assert seen["CONCORD_WEB_PORT"] == str(info.workers["conflicts"].port)
    assert seen["CONCORD_WEB_HOST"] == "127.0.0.1"
    # Faust's data directories go under the state dir, not the caller's working directory.
    assert seen["CONCORD_DATA_DIR"] == str(state_dir / "workers")
    assert "CONCORD_MLLP_ENABLED" not in seen  # only the ingestion worker listens
    ingestion = json.loads(_get(f"http://127.0.0.1:{info.workers['ingestion'].port}/env"))
    assert ingestion["CONCORD_MLLP_ENABLED"] == "true"
    assert ingestion["CONCORD_MLLP_PORT"] == str(info.mllp_port)
    grandchildren = [
        int(json.loads(_get(f"http://127.0.0.1:{record.port}/env"))["child_pid"])
        for record in info.workers.values()
    ]

    runner = CliRunner()
    try:
        # A second `up` is refused while the stack runs.
        with pytest.raises(StackError, match="already running"):
            asyncio.run(start_stack(state_dir, progress=lines.append))
        refused = runner.invoke(stack_cli, ["up", "--state-dir", str(state_dir)])
        assert refused.exit_code == 1
        assert "already running" in refused.output

        status = runner.invoke(stack_cli, ["status", "--state-dir", str(state_dir)])
        assert status.exit_code == 0, status.output
        assert "conflicts" in status.output

        # A crashed worker shows in status; restart_worker brings it back on the same port.
        stop_process(info.workers["normalization"], sig=signal.SIGKILL)
        status = runner.invoke(stack_cli, ["status", "--state-dir", str(state_dir)])
        assert status.exit_code == 1
        restarted = asyncio.run(restart_worker(state_dir, "normalization"))
        assert restarted.port == info.workers["normalization"].port
        assert restarted.pid != info.workers["normalization"].pid
        status = runner.invoke(stack_cli, ["status", "--state-dir", str(state_dir)])
        assert status.exit_code == 0, status.output
    finally:
        started = time.monotonic()
        down = runner.invoke(stack_cli, ["down", "--state-dir", str(state_dir)])
        elapsed = time.monotonic() - started

    assert down.exit_code == 0, down.output
    assert elapsed < 10, f"`stack down` took {elapsed:.1f}s"  # a product requirement
    records = [*info.processes, restarted]
    for pid in [r.pid for r in records] + grandchildren:
        assert not _running(pid), f"pid {pid} survived `stack down`"
    assert not (state_dir / "stack.json").exists()
    assert load_stack_env(state_dir) == {}
    status = runner.invoke(stack_cli, ["status", "--state-dir", str(state_dir)])
    assert status.exit_code == 1


def test_stack_runs_replicas_and_adds_and_removes_workers(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    stand_in = tmp_path / "stand_in_worker.py"
    stand_in.write_text(STAND_IN_WORKER)
    command = [sys.executable, str(stand_in)]

    info = asyncio.run(
        start_stack(
            state_dir,
            workers=["ingestion", "conflicts"],
            worker_command=command,
            progress=lambda line: None,
            replicas={"conflicts": 2},
        )
    )
    runner = CliRunner()
    added: list[ProcessRecord] = []
    try:
        assert set(info.workers) == {"ingestion", "conflicts", "conflicts-2"}
        second = info.workers["conflicts-2"]
        # The same service (and so consumer group), its own port, log and Faust data dir.
        assert second.argv == [*command, "conflicts"]
        assert worker_service(second) == "conflicts"
        assert second.port != info.workers["conflicts"].port
        assert second.log_path.endswith("conflicts-2.log")
        seen = json.loads(_get(f"http://127.0.0.1:{second.port}/env"))
        assert seen["CONCORD_DATA_DIR"] == str(state_dir / "workers" / "conflicts-2")

        # A third conflicts worker joins, a second ingestion worker too (without the MLLP
        # listener, which the first keeps); both are recorded for status and down.
        added.append(asyncio.run(add_worker(state_dir, "conflicts")))
        added.append(asyncio.run(add_worker(state_dir, "ingestion")))
        assert [r.name for r in added] == ["conflicts-3", "ingestion-2"]
        assert added[1].argv == [*command, "ingestion"]
        env = json.loads(_get(f"http://127.0.0.1:{added[1].port}/env"))
        assert "CONCORD_MLLP_ENABLED" not in env
        status = runner.invoke(stack_cli, ["status", "--state-dir", str(state_dir)])
        assert status.exit_code == 0, status.output
        assert "conflicts-3" in status.output and "ingestion-2" in status.output

        # One leaves: stopped and forgotten; its name is free again.
        result = remove_worker(state_dir, "conflicts-2")
        assert result.outcome == "stopped"
        assert not is_alive(second)
        recorded = load_state(state_dir)
        assert recorded is not None
        assert set(recorded.workers) == {"ingestion", "ingestion-2", "conflicts", "conflicts-3"}
        status = runner.invoke(stack_cli, ["status", "--state-dir", str(state_dir)])
        assert status.exit_code == 0, status.output
        with pytest.raises(StackError, match="no worker 'conflicts-2'"):
            remove_worker(state_dir, "conflicts-2")

        # A restarted replica runs its service again.
        restarted = asyncio.run(restart_worker(state_dir, "conflicts-3"))
        assert restarted.argv == [*command, "conflicts"]
        assert worker_service(restarted) == "conflicts"
        added.append(restarted)
    finally:
        down = runner.invoke(stack_cli, ["down", "--state-dir", str(state_dir)])
    assert down.exit_code == 0, down.output
    assert "conflicts-3" in down.output and "ingestion-2" in down.output
    for record in [*info.processes, *added]:
        assert not is_alive(record), f"{record.name} survived `stack down`"


def _wait_for_ready_line(log: Path) -> list[int]:
    """The pids the stubborn process prints once its SIGTERM handler is in place."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("READY "):
                return [int(pid) for pid in line.split()[1:]]
        time.sleep(0.05)
    raise AssertionError(f"stubborn process never got ready:\n{log.read_text()}")


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback http
        return str(response.read().decode())


def test_a_worker_that_dies_fails_up_with_its_log_and_leaves_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    crashing = [sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"]
    lines: list[str] = []

    with pytest.raises(ProcessDied, match=r"worker conflicts exited(.|\n)*boom: bad config"):
        asyncio.run(
            start_stack(
                state_dir, workers=["conflicts"], worker_command=crashing, progress=lines.append
            )
        )

    # broker and postgres (unless CONCORD_DATABASE_URL names one) were up and are stopped again.
    pids = [int(line.rsplit("(pid ", 1)[1].rstrip(")")) for line in lines if "(pid " in line]
    assert pids
    assert not any(_running(pid) for pid in pids)
    assert not (state_dir / "stack.json").exists()
    assert load_stack_env(state_dir) == {}
