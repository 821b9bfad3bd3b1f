"""`concord demo`: the whole pipeline on the local stack, with the sample population.

Brings the stack up in its own state folder (a fresh database each time, so the sample's
disagreements are new), publishes each source's file, prints alerts as they fire, checks
them against the answer key, publishes the updates (which resolve some alerts and open one),
checks again, and keeps following until Ctrl-C, when it takes the stack down.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from concord.alerting.render import alert_line
from concord.demo.sample import AnswerKey, ExpectedAlert, load_answer_key, sample_dir
from concord.events.models import Alert
from concord.publisher import publish_files
from concord.runtime.reading import follow_alerts
from concord.stack.stack import running_processes, start_stack, stop_stack

AlertKey = tuple[str, str]  # (patient_id, attribute)


@dataclass
class AlertBoard:
    """The latest revision of every alert seen on concord.alerts."""

    latest: dict[str, Alert] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    latencies: list[float] = field(default_factory=list)

    def see(self, alert: Alert) -> bool:
        known = self.latest.get(alert.alert_id)
        if known is not None and known.revision >= alert.revision:
            return False
        self.latest[alert.alert_id] = alert
        # From ingestion's receipt of the newest raw event behind the alert to the alert stored.
        received = max(a.provenance.received_time for a in alert.assertions)
        self.latencies.append((alert.updated_at - received).total_seconds())
        self.changed.set()
        return True

    def latency_summary(self) -> str:
        if len(self.latencies) < 2:
            return "too few alerts for a latency summary"
        ms = sorted(x * 1000 for x in self.latencies)
        cuts = statistics.quantiles(ms, n=100, method="inclusive")
        return (
            f"latency from ingestion receipt to alert stored, {len(ms)} alert revisions: "
            f"p50 {cuts[49]:.0f} ms, p95 {cuts[94]:.0f} ms, max {ms[-1]:.0f} ms"
        )

    def open_keys(self) -> set[AlertKey]:
        return {(a.patient_id, a.attribute) for a in self.latest.values() if a.status == "OPEN"}


@dataclass(frozen=True)
class Check:
    expected: set[AlertKey]
    got: set[AlertKey]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.expected == self.got

    def describe(self, phase: str) -> str:
        if self.ok:
            return (
                f"CHECK {phase}: all {len(self.expected)} expected alerts open after "
                f"{self.seconds:.1f}s, and none where the sources agree"
            )
        missing = sorted(self.expected - self.got)
        extra = sorted(self.got - self.expected)
        return f"CHECK {phase} FAILED after {self.seconds:.1f}s: missing {missing}, extra {extra}"


def _keys(alerts: list[ExpectedAlert]) -> set[AlertKey]:
    return {(a.patient_id, a.attribute) for a in alerts}


async def _wait_for(
    board: AlertBoard, expected: set[AlertKey], since: float, limit: float
) -> Check:
    deadline = since + limit
    while board.open_keys() != expected and time.monotonic() < deadline:
        board.changed.clear()
        try:
            await asyncio.wait_for(
                board.changed.wait(), timeout=max(0.01, deadline - time.monotonic())
            )
        except TimeoutError:
            break
    # Settle briefly: an unexpected extra alert would arrive right behind the expected ones.
    await asyncio.sleep(1.0)
    return Check(expected, board.open_keys(), time.monotonic() - since)


async def _publish_updates(bootstrap: str, key: AnswerKey, directory: Path) -> int:
    lines = (directory / key.updates[0].file).read_bytes().splitlines() if key.updates else []
    for update in key.updates:
        path = directory / f".update-{update.line}.json"
        path.write_bytes(lines[update.line - 1])
        try:
            await publish_files(bootstrap, update.source, [path])
        finally:
            path.unlink()
    return len(key.updates)


async def run_demo(
    state_dir: Path,
    *,
    follow_until_interrupted: bool = True,
    check_timeout: float = 30.0,
    echo: Callable[[str], None] = print,
) -> list[Check]:
    if running_processes(state_dir):
        raise RuntimeError(f"a stack is already running in {state_dir}: `concord stack down`")
    # The demo's own folder: start from an empty database so every planted disagreement is new.
    shutil.rmtree(state_dir, ignore_errors=True)
    key = load_answer_key()
    # SIGTERM and SIGHUP end the demo like Ctrl-C: the stack must come down with it.
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if main_task is not None:
            loop.add_signal_handler(sig, main_task.cancel)
    info = await start_stack(state_dir, progress=echo)
    board = AlertBoard()
    stop = asyncio.Event()

    def on_alert(alert: Alert) -> None:
        if board.see(alert):
            echo(alert_line(alert))

    follower = asyncio.create_task(
        follow_alerts(info.bootstrap_servers, on_alert, from_beginning=True, stop=stop)
    )
    checks: list[Check] = []
    try:
        directory = sample_dir()
        started = time.monotonic()
        for source, file in key.sources.items():
            count = await publish_files(info.bootstrap_servers, source, [directory / file])
            echo(f"published {count} Patients from {source}")
        checks.append(
            await _wait_for(board, _keys(key.expected_after_initial_load), started, check_timeout)
        )
        echo(checks[-1].describe("initial load"))
        started = time.monotonic()
        echo(f"publishing {await _publish_updates(info.bootstrap_servers, key, directory)} updates")
        after = key.expected_after_updates
        checks.append(
            await _wait_for(
                board, _keys(after.still_open) | _keys(after.opened), started, check_timeout
            )
        )
        echo(checks[-1].describe("after updates"))
        echo(board.latency_summary())
        if info.review_url is not None:
            echo(
                f"the review API is at {info.review_url}/api/v1 (OpenAPI document: "
                f"{info.review_url}/openapi.json); a token for it: concord token issue "
                f"--user you --role reviewer --state-dir {state_dir}"
            )
        if follow_until_interrupted:
            echo("following alerts; Ctrl-C stops the demo and the stack")
            await asyncio.Event().wait()
    finally:
        stop.set()
        await asyncio.gather(follower, return_exceptions=True)
        echo("stopping the stack")
        await asyncio.to_thread(stop_stack, state_dir)
    return checks
