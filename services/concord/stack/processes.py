"""Child processes of the local stack: start them in their own process group, stop them for sure.

Every child (broker, PostgreSQL, each worker) is started with ``start_new_session=True``, so its
pid is also its process-group id and one signal reaches it and everything it spawned. A child is
identified by pid *and* psutil's create_time: a pid the kernel has since given to an unrelated
process is never signalled.

Stopping escalates: a polite signal to the group (or to the leader alone, for PostgreSQL, whose
postmaster stops its own children), a grace period, then SIGKILL to the group. A Faust worker once
hung for minutes on SIGTERM; the escalation is what bounds ``concord stack down``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

LOOPBACK = "127.0.0.1"

# How long each kind of process gets between the polite signal and SIGKILL. Workers stop
# first (in parallel), then broker and PostgreSQL (in parallel): 5 + 3 s plus the SIGKILL
# wait stays below the 10 s that `concord stack down` promises.
GRACE_SECONDS: dict[str, float] = {"worker": 5.0, "broker": 2.0, "postgres": 3.0}
# SIGINT is PostgreSQL's "fast shutdown": roll back open transactions and exit.
STOP_SIGNAL: dict[str, signal.Signals] = {"postgres": signal.SIGINT}
# The postmaster shuts its backends down itself; signalling them directly with SIGINT would only
# cancel their queries (and mean something else to the checkpointer), so it gets the signal alone.
SIGNAL_LEADER_ONLY = frozenset({"postgres"})
KILL_WAIT_SECONDS = 1.0
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class ProcessRecord:
    """What `stack.json` remembers of one child: enough to find it again, and only it."""

    name: str
    kind: str  # "broker", "postgres" or "worker"
    pid: int
    create_time: float
    argv: list[str]
    log_path: str
    port: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            pid=int(data["pid"]),
            create_time=float(data["create_time"]),
            argv=[str(arg) for arg in data.get("argv", [])],
            log_path=str(data["log_path"]),
            port=None if data.get("port") is None else int(data["port"]),
            extra={str(k): str(v) for k, v in dict(data.get("extra") or {}).items()},
        )


@dataclass(frozen=True)
class StopResult:
    """How one process ended: 'stopped' (left on the polite signal), 'killed' (needed SIGKILL)
    or 'not running' (already gone, or its pid now belongs to someone else)."""

    name: str
    pid: int
    outcome: str
    seconds: float


class ProcessDied(RuntimeError):
    """A child exited while we waited for it to become ready."""


def absolute(path: str | Path) -> Path:
    """`path` made absolute against the working directory (records must not depend on it)."""
    return Path(os.path.abspath(path))


def free_port(host: str = LOOPBACK) -> int:
    """A port that is free right now on `host`. Another process may take it before our child
    binds it; the child then fails to start and the caller reports its log."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def health_ok(port: int, host: str = LOOPBACK, timeout: float = 1.0) -> bool:
    """Whether ``GET /health`` on a worker's web port answers HTTP 200."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def metric_samples(port: int, host: str = LOOPBACK, timeout: float = 5.0) -> list[Sample]:
    """Every sample a worker's ``GET /metrics`` serves; OSError when it does not answer."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def tail(path: str | Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file ('' if it does not exist): what an error shows."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def spawn(
    name: str,
    kind: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    cwd: Path | None = None,
    user: int | None = None,
    group: int | None = None,
    extra: Mapping[str, str] | None = None,
) -> ProcessRecord:
    """Start `argv` in a new session (its own process group), stdout and stderr appended to
    `log_path` after a header line, and return the record that identifies it later.

    `user`/`group` switch the child's uid/gid (PostgreSQL refuses to run as root)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        command = shlex.join(argv).replace("\n", "\\n")  # one header line, even for `-c` scripts
        header = f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}: {command}\n"
        log.write(header.encode())
        log.flush()
        proc = subprocess.Popen(  # noqa: S603 - argv is built by this package, never a shell
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd,
            user=user,
            group=group,
            start_new_session=True,
        )
    # The Popen object is dropped: the child outlives this process (`concord stack up` returns
    # while it runs), and `stop_process` reaps it if it is still our child.
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        create_time = 0.0  # died at once; is_alive() will say so and the caller shows the log
    return ProcessRecord(
        name=name,
        kind=kind,
        pid=proc.pid,
        create_time=create_time,
        argv=list(argv),
        log_path=str(log_path),
        port=port,
        extra=dict(extra or {}),
    )


def _reap(pid: int) -> None:
    """Collect the exit status if `pid` is our own child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _is_running(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def find_process(record: ProcessRecord) -> psutil.Process | None:
    """The live process `record` describes, or None if it is gone or its pid was recycled."""
    _reap(record.pid)
    try:
        proc = psutil.Process(record.pid)
        same = abs(proc.create_time() - record.create_time) < 0.01
    except psutil.NoSuchProcess:
        return None
    return proc if same and _is_running(proc) else None


def is_alive(record: ProcessRecord) -> bool:
    """Whether the very process `record` describes is still running (zombies count as dead)."""
    return find_process(record) is not None


async def wait_until_ready(
    record: ProcessRecord,
    what: str,
    ready: Callable[[], Awaitable[bool]],
    *,
    startup_timeout: float,
) -> None:
    """Return once `ready()` says so; raise ProcessDied if the process exits, TimeoutError after
    `startup_timeout`, both naming `what` and showing its log tail.

    `ready` is only asked once the TCP port is open, so a client does not log a connection error
    per attempt."""
    deadline = time.monotonic() + startup_timeout
    assert record.port is not None  # noqa: S101 - the services waited for all listen on a port
    while True:
        if not is_alive(record):
            raise ProcessDied(
                f"{what} exited during startup; {record.log_path}:\n{tail(record.log_path)}"
            )
        if port_open(record.port) and await ready():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{what} not ready after {startup_timeout:.0f}s; {record.log_path}:\n"
                f"{tail(record.log_path)}"
            )
        await asyncio.sleep(0.05)


def _group_members(pgid: int) -> list[psutil.Process]:
    """Every live process in process group `pgid`."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and _is_running(proc):
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return members


def _belongings(record: ProcessRecord) -> list[psutil.Process]:
    """The processes that are ours to stop for `record`: its leader (if still the same process),
    the members of its process group and the leader's descendants (a child that called setsid
    has left the group but is still ours).

    When the leader is gone, members of group `record.pid` are still its orphans: Linux does
    not hand out a pid while it is in use as a process-group id. When the pid now names a
    different process, that group is someone else's and is left alone."""
    with contextlib.suppress(psutil.NoSuchProcess):
        if abs(psutil.Process(record.pid).create_time() - record.create_time) >= 0.01:
            return []  # the pid (and so its group) belongs to an unrelated process now
    leader = find_process(record)
    found: dict[int, psutil.Process] = {p.pid: p for p in _group_members(record.pid)}
    if leader is not None:
        found[leader.pid] = leader
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in leader.children(recursive=True):
                found[child.pid] = child
    return [p for p in found.values() if _is_running(p)]


def _signal_all(procs: Iterable[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            proc.send_signal(sig)


def _wait_gone(procs: list[psutil.Process], deadline: float) -> list[psutil.Process]:
    """Poll until every process in `procs` has exited or `deadline` passes; return survivors."""
    alive = procs
    while True:
        for proc in alive:
            _reap(proc.pid)
        alive = [p for p in alive if _is_running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(_POLL_SECONDS)


def stop_processes(
    records: Sequence[ProcessRecord],
    *,
    grace: float | None = None,
    sig: signal.Signals | None = None,
) -> list[StopResult]:
    """Stop several recorded processes in parallel and make sure nothing of theirs is left.

    Each gets its polite signal (SIGTERM to its process group; SIGINT to a PostgreSQL postmaster
    alone), then up to its grace period (per kind, see GRACE_SECONDS, or `grace`), then SIGKILL
    to everything of it still running. `sig` overrides the polite signal (e.g. SIGKILL to
    simulate a crash). Raises RuntimeError if a process survives SIGKILL."""
    started = time.monotonic()
    plans = []
    for record in records:
        procs = _belongings(record)
        leader_alive = any(p.pid == record.pid for p in procs)
        polite = sig or STOP_SIGNAL.get(record.kind, signal.SIGTERM)
        if sig is None and record.kind in SIGNAL_LEADER_ONLY and leader_alive:
            _signal_all([p for p in procs if p.pid == record.pid], polite)
        else:
            _signal_all(procs, polite)
        wait = grace if grace is not None else GRACE_SECONDS.get(record.kind, 5.0)
        plans.append((record, procs, started + wait))

    results = []
    leftovers: list[psutil.Process] = []
    for record, procs, deadline in sorted(plans, key=lambda plan: plan[2]):
        if not procs:
            results.append(StopResult(record.name, record.pid, "not running", 0.0))
            continue
        # Children the leader spawned after our snapshot are caught by a second look.
        survivors = _wait_gone(procs + _belongings(record), deadline)
        outcome = "stopped"
        if survivors:
            outcome = "killed"
            _signal_all(survivors, signal.SIGKILL)
            leftovers += survivors
        results.append(StopResult(record.name, record.pid, outcome, time.monotonic() - started))

    stubborn = _wait_gone(leftovers, time.monotonic() + KILL_WAIT_SECONDS)
    for record in records:
        stubborn += _belongings(record)
    if stubborn:
        pids = sorted({p.pid for p in stubborn})
        raise RuntimeError(f"processes survived SIGKILL: {pids}")
    return results


def stop_process(
    record: ProcessRecord, *, grace: float | None = None, sig: signal.Signals | None = None
) -> StopResult:
    """Stop one recorded process and everything in its process group; see `stop_processes`.

    ``stop_process(worker, sig=signal.SIGKILL)`` is a crash (kill -9) of a single worker."""
    return stop_processes([record], grace=grace, sig=sig)[0]
