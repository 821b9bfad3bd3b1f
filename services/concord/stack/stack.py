"""The whole local stack: broker, PostgreSQL and the four workers, as separate processes.

`start_stack` starts them in order and records each one in STATE_DIR/stack.json as soon as it
runs (so `stop_stack` can clean up after a half-finished start too), then writes
STATE_DIR/stack.env for the `concord` tools. `stop_stack` stops exactly what is recorded:
workers first (they flush to the broker and PostgreSQL), then broker and PostgreSQL.

A service may run several workers (`start_stack(replicas=...)`, `add_worker`,
`remove_worker`): each is recorded under its own name (``conflicts``, ``conflicts-2``...),
with its service in the record, and they share the service's consumer group.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from concord.config import ENV_FILE
from concord.stack.broker import start_broker
from concord.stack.postgres import start_postgres, start_server_again, use_external_postgres
from concord.stack.processes import (
    LOOPBACK,
    ProcessDied,
    ProcessRecord,
    StopResult,
    absolute,
    free_port,
    health_ok,
    is_alive,
    spawn,
    stop_process,
    stop_processes,
    tail,
)

ALL_SERVICES: tuple[str, ...] = ("ingestion", "normalization", "narrative", "conflicts", "alerting")
# The real worker entry point; the service name is appended.
WORKER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "concord.worker")
MLLP_SERVICE = "ingestion"  # runs the MLLP listener (CONCORD_MLLP_PORT)
# The review service (API and web page): not a stream worker, recorded beside them.
REVIEW_COMMAND: tuple[str, ...] = (sys.executable, "-m", "concord.review")
STATE_FILE = "stack.json"


class StackError(RuntimeError):
    """The stack cannot be started, or is already running: the message says what to do."""


@dataclass
class StackInfo:
    """A running stack: its settings and the records of its processes."""

    state_dir: Path
    bootstrap_servers: str
    database_url: str
    broker: ProcessRecord | None = None
    postgres: ProcessRecord | None = None  # None when CONCORD_DATABASE_URL names the server
    workers: dict[str, ProcessRecord] = field(default_factory=dict)
    mllp_port: int | None = None  # the ingestion worker's MLLP listener
    review: ProcessRecord | None = None  # the review service

    @property
    def processes(self) -> list[ProcessRecord]:
        """Every recorded process, in the order they start in: broker, PostgreSQL, workers,
        the review service."""
        infra = [r for r in (self.broker, self.postgres) if r is not None]
        review = [self.review] if self.review is not None else []
        return infra + list(self.workers.values()) + review

    @property
    def review_url(self) -> str | None:
        if self.review is None or self.review.port is None:
            return None
        return f"http://{LOOPBACK}:{self.review.port}"

    def settings(self) -> dict[str, str]:
        """What stack.env holds: how clients reach the broker, the database and the MLLP
        listener."""
        values = {
            "CONCORD_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "CONCORD_DATABASE_URL": self.database_url,
        }
        if self.mllp_port is not None:
            values["CONCORD_MLLP_HOST"] = LOOPBACK
            values["CONCORD_MLLP_PORT"] = str(self.mllp_port)
        return values

    def worker_settings(self, name: str) -> dict[str, str]:
        """The stack settings, plus the MLLP listener for the ingestion worker."""
        values = self.settings()
        if name == MLLP_SERVICE and self.mllp_port is not None:
            values["CONCORD_MLLP_ENABLED"] = "true"
            # The listener binds loopback (CONCORD_MLLP_HOST above): only this machine's users
            # can send, and `concord mllp send` of any source's files should be recorded as
            # that source, so here, and only on loopback, MSH-3 names it (docs/mllp.md).
            values["CONCORD_MLLP_SOURCE_FROM_MSH"] = "true"
        return values

    def to_json(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "database_url": self.database_url,
            "mllp_port": self.mllp_port,
            "processes": [record.to_json() for record in self.processes],
        }

    @classmethod
    def from_json(cls, state_dir: Path, data: Mapping[str, Any]) -> StackInfo:
        info = cls(Path(state_dir), str(data["bootstrap_servers"]), str(data["database_url"]))
        info.mllp_port = data.get("mllp_port")
        for item in data.get("processes", []):
            record = ProcessRecord.from_json(item)
            if record.kind == "broker":
                info.broker = record
            elif record.kind == "postgres":
                info.postgres = record
            elif record.kind == "review":
                info.review = record
            else:
                info.workers[record.name] = record
        return info


# --- stack.json / stack.env -------------------------------------------------------------------


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_state(info: StackInfo) -> None:
    """Record the stack's processes in STATE_DIR/stack.json."""
    info.state_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(info.state_dir / STATE_FILE, json.dumps(info.to_json(), indent=2) + "\n")


def load_state(state_dir: Path) -> StackInfo | None:
    """The stack recorded in STATE_DIR/stack.json, or None if there is none."""
    path = Path(state_dir) / STATE_FILE
    if not path.exists():
        return None
    return StackInfo.from_json(Path(state_dir), json.loads(path.read_text(encoding="utf-8")))


def write_stack_env(info: StackInfo) -> Path:
    """Write STATE_DIR/stack.env (KEY=value lines) for the `concord` tools."""
    path = info.state_dir / ENV_FILE
    lines = [f"{key}={value}\n" for key, value in info.settings().items()]
    _write_atomically(path, "".join(lines))
    return path


def load_stack_env(state_dir: Path | str) -> dict[str, str]:
    """The settings of the stack in `state_dir` (from stack.env): CONCORD_BOOTSTRAP_SERVERS,
    CONCORD_DATABASE_URL and, with an ingestion worker, CONCORD_MLLP_HOST and CONCORD_MLLP_PORT.
    Empty if no stack has been started there."""
    path = Path(state_dir) / ENV_FILE
    if not path.exists():
        return {}
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


# --- workers ----------------------------------------------------------------------------------


def worker_env(
    settings: Mapping[str, str], port: int, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A worker's environment: ours (or `base`), the stack settings, and its own web port."""
    env = dict(os.environ if base is None else base)
    env.update(settings)
    env["CONCORD_WEB_HOST"] = LOOPBACK
    env["CONCORD_WEB_PORT"] = str(port)
    return env


def start_worker(
    name: str,
    settings: Mapping[str, str],
    state_dir: Path,
    *,
    port: int | None = None,
    command: Sequence[str] = WORKER_COMMAND,
    service: str | None = None,
) -> ProcessRecord:
    """Start worker `name`, a worker of `service` (default: `name`), as
    ``[*command, service]`` with the stack `settings` (CONCORD_BOOTSTRAP_SERVERS,
    CONCORD_DATABASE_URL) and its own web port; log to STATE_DIR/logs/<name>.log. Does not
    wait: see `wait_worker_ready`."""
    service = service or name
    port = port or free_port()
    log_path = Path(state_dir) / "logs" / f"{name}.log"
    env = worker_env(settings, port)
    # Faust's data directory, which would otherwise land in the caller's working directory;
    # a further worker of a service gets one of its own.
    data_dir = absolute(state_dir) / "workers"
    if name != service:
        data_dir /= name
    data_dir.mkdir(parents=True, exist_ok=True)
    env["CONCORD_DATA_DIR"] = str(data_dir)
    extra = {"service": service}
    return spawn(name, "worker", [*command, service], log_path, env=env, port=port, extra=extra)


def worker_service(record: ProcessRecord) -> str:
    """The service a recorded worker runs (its name, for the first worker of a service)."""
    return record.extra.get("service", record.name)


def replica_names(service: str, count: int) -> list[str]:
    """The record names of `count` workers of `service`: the service's own name, then
    ``<service>-2``, ``<service>-3``..."""
    return [service] + [f"{service}-{n}" for n in range(2, count + 1)]


async def wait_worker_ready(record: ProcessRecord, *, startup_timeout: float = 60.0) -> None:
    """Return once the worker's ``GET /health`` answers 200. Raises ProcessDied if it exits,
    TimeoutError after `startup_timeout`; both messages name the worker and show its log tail."""
    assert record.port is not None  # noqa: S101 - start_worker always gives one
    deadline = time.monotonic() + startup_timeout
    while True:
        if not is_alive(record):
            raise ProcessDied(
                f"worker {record.name} exited during startup; last lines of "
                f"{record.log_path}:\n{tail(record.log_path)}"
            )
        if await asyncio.to_thread(health_ok, record.port):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"worker {record.name} not ready after {startup_timeout:.0f}s (no 200 from "
                f"http://{LOOPBACK}:{record.port}/health); last lines of "
                f"{record.log_path}:\n{tail(record.log_path)}"
            )
        await asyncio.sleep(0.1)


async def _start_workers(
    info: StackInfo,
    workers: Sequence[str],
    command: Sequence[str],
    startup_timeout: float,
    progress: Callable[[str], None],
    replicas: Mapping[str, int],
) -> None:
    """Start all workers at once (recording each), then wait until every one is healthy."""
    if MLLP_SERVICE in workers:
        info.mllp_port = free_port()
    for service in workers:
        for name in replica_names(service, replicas.get(service, 1)):
            # Only the worker named MLLP_SERVICE gets the MLLP listener (one port).
            settings = info.worker_settings(name)
            info.workers[name] = start_worker(
                name, settings, info.state_dir, command=command, service=service
            )
            save_state(info)

    async def ready(record: ProcessRecord) -> None:
        await wait_worker_ready(record, startup_timeout=startup_timeout)
        progress(f"worker {record.name} ready (pid {record.pid}, http://{LOOPBACK}:{record.port})")

    async with asyncio.TaskGroup() as group:
        for record in info.workers.values():
            group.create_task(ready(record))


async def _start_review(
    info: StackInfo, startup_timeout: float, progress: Callable[[str], None]
) -> None:
    """Start the review service on a free loopback port, trusting tokens signed with the
    stack's local key (created here if the state directory has none)."""
    from concord.review.auth import LOCAL_KEY_FILE, LocalSigningKey

    key_path = info.state_dir / LOCAL_KEY_FILE
    LocalSigningKey.load_or_create(key_path)
    port = free_port()
    env = dict(os.environ)
    env.update(info.settings())
    env.update(
        CONCORD_REVIEW_HOST=LOOPBACK,
        CONCORD_REVIEW_PORT=str(port),
        CONCORD_LOCAL_KEY_PATH=str(key_path),
    )
    log_path = info.state_dir / "logs" / "review.log"
    info.review = spawn("review", "review", REVIEW_COMMAND, log_path, env=env, port=port)
    save_state(info)
    await wait_worker_ready(info.review, startup_timeout=startup_timeout)
    progress(f"review service ready (pid {info.review.pid}, {info.review_url})")


# --- the stack --------------------------------------------------------------------------------


def check_replicas(replicas: Mapping[str, int], workers: Sequence[str]) -> None:
    """Raise StackError unless each count is at least 1 and names a service being started."""
    for service, count in replicas.items():
        if service not in workers:
            started = ", ".join(workers) or "none"
            raise StackError(f"replicas of {service!r}: not a worker started here ({started})")
        if count < 1:
            raise StackError(f"replicas of {service!r}: {count}; at least 1")


def running_processes(state_dir: Path) -> list[ProcessRecord]:
    """The recorded processes of the stack in `state_dir` that are still running."""
    info = load_state(state_dir)
    return [] if info is None else [r for r in info.processes if is_alive(r)]


async def start_stack(
    state_dir: Path,
    *,
    workers: Sequence[str] = ALL_SERVICES,
    progress: Callable[[str], None] = print,
    startup_timeout: float = 60.0,
    worker_command: Sequence[str] = WORKER_COMMAND,
    replicas: Mapping[str, int] | None = None,
    broker_port: int | None = None,
    advertised_broker_port: int | None = None,
    review: bool = True,
) -> StackInfo:
    """Start broker (all topics created), PostgreSQL (migrated) and `workers`, each a separate
    process in its own process group, and return once every worker's /health answers 200.

    `replicas` runs several workers of a service (``{"conflicts": 2}``; one by default): they
    join the service's consumer group and share its partitions. The first is named by the
    service, the others ``<service>-2``...; see `add_worker` and `remove_worker`.

    PostgreSQL: the server named by CONCORD_DATABASE_URL when that is set (only migrated),
    otherwise an embedded one under STATE_DIR/pgdata. Writes STATE_DIR/stack.json and
    STATE_DIR/stack.env. `worker_command` is the command each service name is appended to
    (tests pass a stand-in). Raises StackError if a stack recorded in `state_dir` still runs;
    on any failure stops whatever it started before re-raising.

    `broker_port` and `advertised_broker_port` put a proxy between the broker and every
    client (start_broker): the broker listens on the first and names the second, where the
    proxy listens, as its address; the stack's bootstrap address is the proxy's.

    `review` starts the review service too (API and web page, docs/review.md), with a local
    signing key for `concord token issue` kept in STATE_DIR."""
    state_dir = absolute(state_dir)
    replicas = dict(replicas or {})
    check_replicas(replicas, workers)
    alive = running_processes(state_dir)
    if alive:
        pids = ", ".join(f"{r.name} {r.pid}" for r in alive)
        raise StackError(
            f"a stack is already running from {state_dir} ({pids}); "
            f"stop it first with `concord stack down --state-dir {state_dir}`"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / ENV_FILE).unlink(missing_ok=True)
    started = time.monotonic()
    info = StackInfo(state_dir, bootstrap_servers="", database_url="")
    try:
        broker = await start_broker(
            state_dir,
            port=broker_port,
            advertised_port=advertised_broker_port,
            startup_timeout=min(startup_timeout, 20.0),
        )
        info.broker, info.bootstrap_servers = broker.record, broker.bootstrap_servers
        save_state(info)
        progress(f"broker ready on {broker.bootstrap_servers} (pid {broker.record.pid})")

        external = os.environ.get("CONCORD_DATABASE_URL")
        if external:
            postgres = await use_external_postgres(external)
            progress("postgres ready (CONCORD_DATABASE_URL from the environment, migrated)")
        else:
            postgres = await start_postgres(state_dir, startup_timeout=min(startup_timeout, 30.0))
            assert postgres.record is not None  # noqa: S101 - we started it
            progress(f"postgres ready at {postgres.dsn} (pid {postgres.record.pid})")
        info.postgres, info.database_url = postgres.record, postgres.dsn
        save_state(info)

        await _start_workers(info, workers, worker_command, startup_timeout, progress, replicas)
        if review:
            await _start_review(info, startup_timeout, progress)
    except BaseException as error:
        _stop_info(info)
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        if isinstance(error, ExceptionGroup):  # from the workers' TaskGroup
            if len(error.exceptions) == 1:
                raise error.exceptions[0] from None  # show the failed worker's own message
            raise StackError("\n\n".join(str(e) for e in error.exceptions)) from error
        raise
    write_stack_env(info)
    elapsed = time.monotonic() - started
    progress(f"stack up in {elapsed:.1f}s; settings (also in {state_dir / ENV_FILE}):")
    for key, value in info.settings().items():
        progress(f"{key}={value}")
    return info


def _stop_info(info: StackInfo) -> list[StopResult]:
    """The review service and the workers first (in parallel), then broker and PostgreSQL
    (in parallel)."""
    review = [info.review] if info.review is not None else []
    results = stop_processes([*review, *info.workers.values()])
    results += stop_processes([r for r in (info.broker, info.postgres) if r is not None])
    return results


def stop_stack(state_dir: Path) -> list[StopResult]:
    """Stop every process recorded in STATE_DIR/stack.json (and anything left in their process
    groups), then remove stack.json and stack.env. Takes under 10 s even when a worker ignores
    SIGTERM (5 s grace, then SIGKILL). Blocking: from async code run it in a thread.
    Returns one StopResult per process; [] if nothing is recorded."""
    state_dir = absolute(state_dir)
    info = load_state(state_dir)
    if info is None:
        return []
    results = _stop_info(info)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    (state_dir / ENV_FILE).unlink(missing_ok=True)
    return results


async def restart_worker(
    state_dir: Path, name: str, *, kill: bool = True, startup_timeout: float = 60.0
) -> ProcessRecord:
    """Stop worker `name` of the recorded stack (kill -9 when `kill`, else a normal stop),
    start it again with the same command and web port, wait until healthy and record it.

    For crash-recovery tests: the rest of the stack keeps running."""
    state_dir = absolute(state_dir)
    info = load_state(state_dir)
    if info is None or name not in info.workers:
        raise StackError(f"no worker {name!r} recorded in {state_dir}")
    old = info.workers[name]
    stop_process(old, sig=signal.SIGKILL if kill else None)
    command = old.argv[:-1]  # the service name was appended
    info.workers[name] = start_worker(name, info.worker_settings(name), state_dir,
                                      port=old.port, command=command,
                                      service=worker_service(old))  # fmt: skip
    save_state(info)
    await wait_worker_ready(info.workers[name], startup_timeout=startup_timeout)
    return info.workers[name]


async def add_worker(
    state_dir: Path,
    service: str,
    *,
    startup_timeout: float = 60.0,
    command: Sequence[str] | None = None,
) -> ProcessRecord:
    """Start one more worker of `service` in the recorded stack, under the first free name of
    `replica_names` (``<service>-2`` beside the first), with its own web port and log
    (STATE_DIR/logs/<name>.log); record it, and return once its /health answers 200 (it has
    joined the service's consumer group and been given its share of the partitions, possibly
    none: a topic has concord.topics.PARTITIONS).

    The command is that of a recorded worker of the service (else `command`, else the real
    worker); `concord stack down` and `status` handle it like the others. Several may be
    added at once in one event loop (stack.json is read and written before the first await),
    but not beside a change from another thread or process."""
    state_dir = absolute(state_dir)
    info = load_state(state_dir)
    if info is None:
        raise StackError(f"no stack recorded in {state_dir}")
    siblings = [r for r in info.workers.values() if worker_service(r) == service]
    if command is None:
        command = siblings[0].argv[:-1] if siblings else WORKER_COMMAND
    count = 1
    while (name := replica_names(service, count)[-1]) in info.workers:
        count += 1
    info.workers[name] = start_worker(name, info.worker_settings(name), state_dir,
                                      command=command, service=service)  # fmt: skip
    save_state(info)
    await wait_worker_ready(info.workers[name], startup_timeout=startup_timeout)
    return info.workers[name]


def remove_worker(state_dir: Path, name: str, *, sig: signal.Signals | None = None) -> StopResult:
    """Stop worker `name` of the recorded stack and forget it: see `remove_workers`."""
    return remove_workers(state_dir, [name], sig=sig)[0]


def remove_workers(
    state_dir: Path, names: Sequence[str], *, sig: signal.Signals | None = None
) -> list[StopResult]:
    """Stop the recorded workers `names` in parallel (SIGTERM with escalation, as `down` does,
    or `sig`) and forget them: their partitions go to the other workers of their services at
    the next rebalance. Blocking: from async code run it in a thread."""
    state_dir = absolute(state_dir)
    info = load_state(state_dir)
    unknown = [name for name in names if info is None or name not in info.workers]
    if info is None or unknown:
        raise StackError(f"no worker {', '.join(map(repr, unknown))} recorded in {state_dir}")
    results = stop_processes([info.workers[name] for name in names], sig=sig)
    # Read again: the stop took seconds, and the caller may have recorded more meanwhile.
    info = load_state(state_dir) or info
    for name in names:
        info.workers.pop(name, None)
    save_state(info)
    return results


def _recorded_postgres(state_dir: Path) -> tuple[StackInfo, ProcessRecord]:
    info = load_state(absolute(state_dir))
    if info is None or info.postgres is None:
        raise StackError(f"no PostgreSQL of the stack's own recorded in {state_dir}")
    return info, info.postgres


def stop_postgres(state_dir: Path) -> StopResult:
    """Stop the stack's PostgreSQL (a fast shutdown), leaving the workers and the broker
    running and the server recorded: a database outage, for fault tests, which
    `start_postgres_again` ends. Blocking: from async code run it in a thread."""
    _, record = _recorded_postgres(state_dir)
    return stop_process(record)


async def start_postgres_again(state_dir: Path, *, startup_timeout: float = 30.0) -> ProcessRecord:
    """Start the stack's stopped PostgreSQL again on the same data directory and port (so the
    workers' DSN stays valid), wait until it accepts connections and record it."""
    info, record = _recorded_postgres(state_dir)
    info.postgres = await start_server_again(record, startup_timeout=startup_timeout)
    save_state(info)
    return info.postgres


@dataclass(frozen=True)
class ProcessStatus:
    """One line of `concord stack status`. `healthy` is None for processes without /health."""

    name: str
    pid: int
    alive: bool
    healthy: bool | None

    @property
    def ok(self) -> bool:
        return self.alive and self.healthy is not False


def stack_status(state_dir: Path) -> list[ProcessStatus]:
    """Each recorded process: alive or not and, for workers and the review service, whether
    /health answers 200."""
    info = load_state(Path(state_dir))
    if info is None:
        return []
    statuses = []
    for record in info.processes:
        alive = is_alive(record)
        healthy = None
        if record.kind in ("worker", "review") and record.port is not None:
            healthy = alive and health_ok(record.port)
        statuses.append(ProcessStatus(record.name, record.pid, alive, healthy))
    return statuses
