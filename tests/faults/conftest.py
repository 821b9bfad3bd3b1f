"""The fault suite's stack: broker, PostgreSQL and the four workers as separate processes, one
stack per module, under the built-in policy except that result disagreements are held for
HOLD instead of 30 s (a fault leaves some held, and the tests stay short), and with a consumer
session timeout of 3 s instead of 6 s (a group join takes about half of it on the local
broker, and a restarted worker joins two groups, so it is back sooner).

The settings stay in the environment for the module: a worker a test restarts reads them.
Each test gets the stack ready: a worker that died (a failed test's) is started again, a
stopped PostgreSQL too, and every worker answers /health with 200. Tests tell their records
apart by their own patient ids. At the module's end the workers are killed (they hold nothing
that a graceful stop would save here), then broker and PostgreSQL stop.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from fault_tools import HOLD

from concord.stack.processes import health_ok, is_alive, stop_processes
from concord.stack.stack import (
    StackInfo,
    load_state,
    restart_worker,
    start_postgres_again,
    start_stack,
    stop_stack,
)


@pytest.fixture(scope="module")
def fault_stack_options() -> dict[str, Any]:
    """More arguments of start_stack for the module's stack; a module overrides this (the
    broker outage test puts a proxy in front of the broker)."""
    return {}


@pytest.fixture(scope="module")
def _module_fault_stack(
    tmp_path_factory: pytest.TempPathFactory, fault_stack_options: dict[str, Any]
) -> Iterator[Path]:
    built_in = (resources.files("concord.conflicts") / "default_policy.yaml").read_text()
    assert built_in.count("suppress_for: PT30S") == 1
    state_dir = tmp_path_factory.mktemp("stack")
    policy = state_dir / "policy.yaml"
    policy.write_text(built_in.replace("suppress_for: PT30S", f"suppress_for: {HOLD}"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONCORD_POLICY_PATH", str(policy))
        env.setenv("CONCORD_SESSION_TIMEOUT_MS", "3000")
        env.setenv("CONCORD_HEARTBEAT_INTERVAL_MS", "1000")
        asyncio.run(
            start_stack(state_dir, progress=lambda line: None, review=False, **fault_stack_options)
        )
        try:
            yield state_dir
        finally:
            info = load_state(state_dir)
            if info is not None:
                stop_processes(list(info.workers.values()), sig=signal.SIGKILL)
            stop_stack(state_dir)


@pytest.fixture
def fault_stack(_module_fault_stack: Path) -> StackInfo:
    """The module's stack, as recorded now, every process running and every worker healthy."""
    state_dir = _module_fault_stack
    info = load_state(state_dir)
    assert info is not None and info.broker is not None
    assert is_alive(info.broker), "the broker died (and its topics with it): no restart"
    if info.postgres is not None and not is_alive(info.postgres):
        asyncio.run(start_postgres_again(state_dir))
    for name, worker in info.workers.items():
        if not is_alive(worker):
            asyncio.run(restart_worker(state_dir, name, kill=True))
    info = load_state(state_dir)
    assert info is not None
    deadline = time.monotonic() + 60
    for worker in info.workers.values():
        assert worker.port is not None
        while not health_ok(worker.port):
            assert time.monotonic() < deadline, f"{worker.name} not ready: {worker.log_path}"
            time.sleep(0.25)
    return info
