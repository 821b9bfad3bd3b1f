"""The broker's connections cut for 30 s while records are in flight, then restored: the
workers ride it out (none dies, none is restarted), resume by themselves, and nothing is lost
and no alert is raised twice.

Tansu keeps its data in memory, so restarting it is not the fault: a TCP proxy
(tcp_proxy.py) sits between the broker and every client instead. The module's stack is started
behind it (start_stack's broker_port and advertised_broker_port): the broker listens on one
port and advertises the proxy's, so every connection, a worker's or the test's own, goes
through the proxy, since a Kafka client connects where the metadata tells it to. Cutting closes
every open connection (a reset) and refuses new ones for CUT_SECONDS.

Since the test's own clients are cut too, nothing is sent during the cut: the first chunks go
before it (some alerts stored), two more just before it (in flight when it comes), the rest
after the restore. Each worker's /health and /health/live are watched meanwhile (they are
served by the worker, not through the broker). Measured: what the workers reported during the
cut, how long after the restore they were ready again, the first new alert came and every
expected alert was stored (the backlog drained).

aiokafka retries inside its clients (a fetch that fails is logged and getmany returns
nothing; a produce is retried until its request timeout, 40 s), so no error reaches the batch
loop within a 30 s cut: the loop asks the broker for metadata while idle, and each worker must
answer 503 with "stalled" at least once during the cut.

aiokafka logs every failed reconnect (every ~50 ms: 150-190 lines a second per worker before
the limit); the worker lets one line of a kind through per INTERVAL_SECONDS
(concord.runtime.log_limits), so each kind of aiokafka line appears at most
floor(cut / INTERVAL_SECONDS) + 1 times in a worker's log during the cut.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import http.client
import math
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiokafka
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fault_tools import Workload, health
from tcp_proxy import TcpProxy

from concord.runtime.log_limits import INTERVAL_SECONDS
from concord.stack.processes import LOOPBACK, free_port
from concord.stack.stack import StackInfo

pytestmark = [pytest.mark.faults]

PATIENTS, CHUNK = 40, 4  # 10 chunks of 40 FHIR records
BEFORE, AT_CUT = 3, 2  # chunks sent before the cut, then just before it; the rest after
CUT_SECONDS = 30.0


@pytest.fixture(scope="module")
def broker_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(target_port=free_port()).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def fault_stack_options(broker_proxy: TcpProxy) -> dict[str, Any]:
    """The module's stack behind the proxy: the broker listens on the proxy's target port
    and advertises the proxy's."""
    return {"broker_port": broker_proxy.target_port, "advertised_broker_port": broker_proxy.port}


def _live(port: int) -> int:
    """A worker's GET /health/live status (0 when it does not answer)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=1.0)
    try:
        conn.request("GET", "/health/live")
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


class _Watch:
    """Each worker's /health and /health/live during the cut: the statuses answered, the
    "stalled" kinds given, and when it first answered 503 with one."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.ready: dict[str, Counter[int]] = {name: Counter() for name in ports}
        self.live: dict[str, Counter[int]] = {name: Counter() for name in ports}
        self.kinds: dict[str, set[str]] = {name: set() for name in ports}
        self.first_stalled: dict[str, float] = {}

    async def poll(self, since: float) -> None:
        for name, port in self.ports.items():
            status, body = await asyncio.to_thread(health, port)
            self.ready[name][status] += 1
            self.live[name][await asyncio.to_thread(_live, port)] += 1
            if status == 503 and body.get("stalled"):
                self.kinds[name].add(str(body["stalled"]))
                self.first_stalled.setdefault(name, round(time.monotonic() - since, 2))

    def summary(self) -> dict[str, Any]:
        return {
            "health_during_cut": {n: dict(c) for n, c in self.ready.items()},
            "live_during_cut": {n: dict(c) for n, c in self.live.items()},
            "stalled_kinds": {n: sorted(k) for n, k in self.kinds.items()},
            "first_stalled_after_cut_seconds": self.first_stalled,
        }


_LOG_LINE = re.compile(r"\[[^]]*\] \[\d+\] \[([A-Z]+)\] (.*)")
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[a-zA-Z%]")
_SUPPRESSED = re.compile(r" \[\d+ similar lines? suppressed in [\d.]+ s\]$")


def _aiokafka_templates() -> list[tuple[str, re.Pattern[str]]]:
    """aiokafka's log message templates (the literal first argument of its log calls), each
    with a pattern matching its lines: a worker's log lines do not name their logger."""
    templates = {}
    for path in Path(aiokafka.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"debug", "info", "warning", "error", "exception"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                text = node.args[0].value
                pattern = ".*?".join(map(re.escape, _PLACEHOLDER.split(text)))
                templates[text] = re.compile(pattern, re.DOTALL)
    return sorted(templates.items())


def _log_sizes(stack: StackInfo) -> dict[str, int]:
    return {name: Path(w.log_path).stat().st_size for name, w in stack.workers.items()}


def _aiokafka_lines(text: str, templates: list[tuple[str, re.Pattern[str]]]) -> Counter[str]:
    """The aiokafka lines in a stretch of a worker's log, counted by level and template."""
    kinds: Counter[str] = Counter()
    for line in text.splitlines():
        if (parsed := _LOG_LINE.fullmatch(line.rstrip())) is None:
            continue
        level, message = parsed.groups()
        message = _SUPPRESSED.sub("", message)
        for template, pattern in templates:
            if pattern.fullmatch(message):
                kinds[f"{level} {template}"] += 1
                break
    return kinds


async def _broker_unreachable(bootstrap: str) -> bool:
    """Whether a Kafka client cannot reach the broker now (it should not, while cut)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await producer.start()
    except (KafkaError, OSError):
        return True
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
    return False


@pytest.mark.asyncio
async def test_workers_ride_out_cut_broker_connections_losing_nothing(
    fault_stack: StackInfo, broker_proxy: TcpProxy, tmp_path: Path
) -> None:
    stack, proxy = fault_stack, broker_proxy
    run = Workload(stack)
    # Every client, the workers included, reaches the broker through the proxy.
    assert stack.bootstrap_servers == proxy.address
    assert stack.broker is not None and stack.broker.port == proxy.target_port
    assert proxy.accepted > 0 and not proxy.is_cut
    bootstrap = run.bootstrap
    chunks = run.chunks(PATIENTS, CHUNK)
    watch = _Watch(run.ports)
    figures: dict[str, Any] = {}
    with run.rss:
        # Under load: the pipeline is raising alerts, and more records are on their way
        # through it when the connections go.
        sent = await run.under_load(chunks[:BEFORE])
        for chunk in chunks[BEFORE : BEFORE + AT_CUT]:
            sent += await run.send(chunk)
        figures["connections_dropped"] = await asyncio.to_thread(proxy.cut)
        cut = time.monotonic()
        logs_at_cut = _log_sizes(stack)
        try:
            figures["alerts_at_cut"] = at_cut = await run.alert_count()
            while time.monotonic() - cut < CUT_SECONDS:
                await watch.poll(cut)
                await asyncio.sleep(0.5)
            assert await _broker_unreachable(bootstrap), "the broker was not cut off"
            figures["alerts_at_restore"] = await run.alert_count()
            logs_at_restore, logged_for = _log_sizes(stack), time.monotonic() - cut
        finally:
            await asyncio.to_thread(proxy.restore)
        back = time.monotonic()
        for chunk in chunks[BEFORE + AT_CUT :]:
            sent += await run.send(chunk)

        expected = run.expected(range(PATIENTS))
        _, ready, stored = await run.recovered(
            expected,
            since=back,
            alerts_before=figures["alerts_at_restore"],
            within=120,
            figures=figures,
            after="restore",
        )

    assert at_cut >= 3 and ready
    # Each worker told its supervisor it could not make progress while the broker was away.
    assert set(watch.first_stalled) == set(watch.ready), watch.summary()
    # Every worker's web server answered throughout, and none of the workers died or was
    # restarted.
    assert all(sum(c.values()) > c[0] for c in watch.ready.values()), watch.summary()
    recorded = run.workers_alive(none_restarted=True)
    for worker in recorded.workers.values():
        text = await asyncio.to_thread(Path(worker.log_path).read_text, errors="replace")
        assert "Traceback" not in text, f"a traceback in {worker.log_path}"
    # aiokafka's lines while the broker was away: each kind (level and template; the logger
    # is not in the line) at most once per INTERVAL_SECONDS, so at most
    # floor(logged_for / INTERVAL_SECONDS) + 1 lines of a kind (4 for a 30-34 s stretch),
    # kinds x that in all; without the limit, 150-190 lines a second.
    templates = await asyncio.to_thread(_aiokafka_templates)
    per_kind = math.floor(logged_for / INTERVAL_SECONDS) + 1
    during_cut: dict[str, Counter[str]] = {}
    for name, worker in recorded.workers.items():
        data = await asyncio.to_thread(Path(worker.log_path).read_bytes)
        stretch = data[logs_at_cut[name] : logs_at_restore[name]].decode(errors="replace")
        during_cut[name] = _aiokafka_lines(stretch, templates)
    figures["aiokafka_lines_during_cut"] = {n: sum(c.values()) for n, c in during_cut.items()}
    figures["aiokafka_kinds_during_cut"] = {n: len(c) for n, c in during_cut.items()}
    for name, kinds in during_cut.items():
        assert max(kinds.values(), default=0) <= per_kind, (name, per_kind, kinds)
        assert sum(kinds.values()) <= len(kinds) * per_kind, (name, per_kind, kinds)

    # No record lost or dead-lettered for the outage, no alert raised twice.
    checked = await run.checked(expected, stored, sent, assertions_of=PATIENTS)
    run.report(
        tmp_path,
        "broker outage",
        checked,
        {"cut_seconds": round(back - cut, 1), **figures, **watch.summary()},
    )


def test_the_proxy_drops_refuses_and_restores_connections() -> None:
    """The proxy alone, in front of an echo server: forwarded, then cut (the open connection
    reset, a new one refused), then restored on the same port."""

    async def scenario() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, LOOPBACK, 0)
        proxy = TcpProxy(target_port=server.sockets[0].getsockname()[1]).start()
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.read(4), 5) == b"ping"
            assert await asyncio.to_thread(proxy.cut) == 1
            with contextlib.suppress(ConnectionResetError):  # reset: no more data
                assert await asyncio.wait_for(reader.read(4), 5) == b""
            writer.close()
            with pytest.raises(OSError):
                await asyncio.open_connection(LOOPBACK, proxy.port)
            await asyncio.to_thread(proxy.restore)
            reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
            writer.write(b"pong")
            assert await asyncio.wait_for(reader.read(4), 5) == b"pong"
            writer.close()
            assert proxy.accepted == 2 and proxy.dropped == 1
        finally:
            await asyncio.to_thread(proxy.close)
            server.close()

    asyncio.run(scenario())
