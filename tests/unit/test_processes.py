"""The parts of the local stack that need no server: records, stack.env, process identity."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from concord.cli.stack import stack as stack_cli
from concord.stack.postgres import with_database
from concord.stack.processes import (
    ProcessRecord,
    free_port,
    is_alive,
    port_open,
    spawn,
    stop_process,
    tail,
)
from concord.stack.stack import (
    ALL_SERVICES,
    StackError,
    StackInfo,
    check_replicas,
    load_stack_env,
    replica_names,
    worker_service,
    write_stack_env,
)


def _record(**changes: object) -> ProcessRecord:
    fields: dict[str, object] = {
        "name": "conflicts",
        "kind": "worker",
        "pid": os.getpid(),
        "create_time": psutil.Process().create_time(),
        "argv": [sys.executable, "-m", "concord.worker", "conflicts"],
        "log_path": "/nonexistent/conflicts.log",
        "port": 6066,
    }
    fields.update(changes)
    return ProcessRecord(**fields)  # type: ignore[arg-type]


def test_record_survives_json() -> None:
    record = _record(extra={"pgdata": "/x"})
    assert ProcessRecord.from_json(record.to_json()) == record


def test_a_recycled_pid_is_neither_alive_nor_signalled() -> None:
    # Our own pid with another create_time: the kernel gave "its" pid to us since.
    stranger = _record(create_time=psutil.Process().create_time() - 1000)
    assert not is_alive(stranger)
    assert stop_process(stranger).outcome == "not running"
    assert is_alive(_record())  # and we are still here


def test_stop_reaps_a_process_that_is_already_gone(tmp_path: Path) -> None:
    record = spawn("quick", "worker", [sys.executable, "-c", "pass"], tmp_path / "quick.log")
    stop_process(record)
    assert not is_alive(record)
    assert "starting quick" in (tmp_path / "quick.log").read_text()


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))
    assert tail(log, 2) == "line 98\nline 99"
    assert tail(tmp_path / "missing.log") == ""


def test_free_port_is_free() -> None:
    assert not port_open(free_port())


def test_stack_env_round_trip(tmp_path: Path) -> None:
    assert load_stack_env(tmp_path) == {}
    info = StackInfo(tmp_path, "127.0.0.1:9092", "postgresql://postgres@127.0.0.1:5432/concord")
    info.workers["alerting"] = _record(name="alerting", port=7000)
    info.mllp_port = 2575
    write_stack_env(info)
    assert load_stack_env(tmp_path) == {
        "CONCORD_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "CONCORD_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/concord",
        "CONCORD_MLLP_HOST": "127.0.0.1",
        "CONCORD_MLLP_PORT": "2575",
    }
    assert "CONCORD_MLLP_ENABLED" not in info.worker_settings("alerting")
    assert info.worker_settings("ingestion")["CONCORD_MLLP_ENABLED"] == "true"
    # The loopback listener, and only the worker's: stack.env (the clients') has no such flag.
    assert info.worker_settings("ingestion")["CONCORD_MLLP_SOURCE_FROM_MSH"] == "true"


def test_stack_info_survives_json(tmp_path: Path) -> None:
    info = StackInfo(
        tmp_path, "b:1", "postgresql://h/db", broker=_record(name="broker", kind="broker")
    )
    info.workers["ingestion"] = _record(name="ingestion")
    info.mllp_port = 12575
    again = StackInfo.from_json(tmp_path, info.to_json())
    assert again == info


def test_with_database_keeps_the_server() -> None:
    dsn = "postgresql://u:p@127.0.0.1:5433/postgres?sslmode=disable"
    assert (
        with_database(dsn, "concord") == "postgresql://u:p@127.0.0.1:5433/concord?sslmode=disable"
    )


def test_replicas_are_named_after_their_service() -> None:
    assert replica_names("conflicts", 1) == ["conflicts"]
    assert replica_names("conflicts", 3) == ["conflicts", "conflicts-2", "conflicts-3"]
    # A record written before replicas existed names its service by its name.
    assert worker_service(_record(name="alerting")) == "alerting"
    assert worker_service(_record(name="conflicts-2", extra={"service": "conflicts"})) == (
        "conflicts"
    )
    # Only the first ingestion worker runs the MLLP listener: one port, one listener.
    info = StackInfo(Path("/x"), "b:1", "postgresql://h/db")
    info.mllp_port = 2575
    assert "CONCORD_MLLP_ENABLED" not in info.worker_settings("ingestion-2")


def test_replicas_are_checked_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="at least 1"):
        check_replicas({"conflicts": 0}, ALL_SERVICES)
    with pytest.raises(StackError, match="not a worker started here"):
        check_replicas({"alerting": 2}, ["conflicts"])
    runner = CliRunner()
    state_dir = tmp_path / "state"
    for bad in ("conflicts", "conflicts=0", "mllp=2", "conflicts=two"):
        result = runner.invoke(stack_cli, ["up", "--state-dir", str(state_dir), "--replicas", bad])
        assert result.exit_code == 2, result.output
        assert "expected SERVICE=N" in result.output
    assert not state_dir.exists()  # refused before anything started


def test_stack_up_passes_the_replicas_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    async def fake_start_stack(state_dir: Path, **options: object) -> None:
        seen.update(options)

    monkeypatch.setattr("concord.cli.stack.start_stack", fake_start_stack)
    args = ["up", "--state-dir", str(tmp_path), "--replicas", "conflicts=2"]
    result = CliRunner().invoke(stack_cli, [*args, "--replicas", "normalization=3"])
    assert result.exit_code == 0, result.output
    assert seen["replicas"] == {"conflicts": 2, "normalization": 3}
