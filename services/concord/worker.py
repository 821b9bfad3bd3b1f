"""`python -m concord.worker SERVICE`: one stream worker, a Faust app around a batch loop.

Faust runs the lifecycle (signals, graceful stop), the web server (/health, /metrics) and a
control-topic agent; the records themselves move through BatchLoop on the app's own aiokafka
clients, in batches (see concord.runtime.batch for why).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import faust
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from concord import composition, topics
from concord.config import (
    ConflictsSettings,
    DatabaseWorkerSettings,
    IngestionSettings,
    SettingsProblem,
    WorkerSettings,
)
from concord.failures import failure_site
from concord.runtime import heap
from concord.runtime.batch import BatchLoop
from concord.runtime.log_limits import limit_repeats

if TYPE_CHECKING:
    from concord.conflicts.policy_watcher import PolicyWatcher

log = logging.getLogger(__name__)

SERVICES = tuple(composition.SERVICES)


async def _no_cleanup() -> None:
    return None


def faust_credentials(settings: WorkerSettings) -> faust.types.auth.CredentialsT | None:
    """The same TLS/SASL settings for Faust's own (control-topic) clients."""
    options = settings.kafka_options()
    if settings.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            mechanism=options["sasl_mechanism"],
            ssl_context=options.get("ssl_context"),
        )
    if settings.kafka_security_protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return None


def policy_watcher(settings: WorkerSettings) -> PolicyWatcher | None:
    """The conflicts worker's policy file, loaded now: an invalid one raises PolicyError
    before anything starts. None for other services and for the built-in policy."""
    if not isinstance(settings, ConflictsSettings):
        return None
    from concord.conflicts.policy import DEFAULT_POLICY
    from concord.conflicts.policy_watcher import PolicyWatcher, show_version

    if settings.policy_path is None:
        show_version(DEFAULT_POLICY.version)
        return None
    return PolicyWatcher(settings.policy_path)


def build_app(service: str, settings: DatabaseWorkerSettings) -> faust.App:
    """The worker's Faust app. Raises PolicyError when the conflicts policy file is invalid."""
    watcher = policy_watcher(settings)
    # Faust makes its data directory but not the folders above it.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"concord-{service}-control",
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings),
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
        topic_partitions=1,
        topic_disable_leader=True,
        store="memory://",
        datadir=settings.data_dir / f"concord-{service}-control-data",
        consumer_auto_offset_reset="latest",
    )
    state: dict[str, Any] = {"loop": None, "stage": None}
    control = app.topic(topics.CONTROL, value_serializer="raw", partitions=1)

    @app.agent(control)
    async def on_control(stream: Any) -> None:
        # Policy reloads and other operator commands arrive here (none are defined yet).
        async for message in stream:
            log.info("control message received (%d bytes); no handler yet", len(message))

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        # Readiness: 503 until partitions are assigned, while a transient failure (the
        # database or broker away) is being retried, and while an idle loop's broker probe
        # gets no answer.
        loop: BatchLoop | None = state["loop"]
        ready = loop is not None and loop.is_ready
        body = {
            "service": service,
            "ready": ready,
            "stalled": loop.not_ready_because if loop else None,
            "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in loop.assigned)
            if loop
            else [],
        }
        return web.json(body, status=200 if ready else 503)

    @app.page("/health/live")
    async def live(web: Any, request: Any) -> Any:
        # Liveness: 503 once the batch loop has not gone round for liveness_timeout_seconds
        # (a wedged await), so a supervisor restarts the worker; waiting out a backoff counts
        # as going round.
        loop: BatchLoop | None = state["loop"]
        idle = time.monotonic() - loop.last_turn if loop else 0.0
        alive = idle < settings.liveness_timeout_seconds
        return web.json(
            {"service": service, "alive": alive, "seconds_since_turn": round(idle, 1)},
            status=200 if alive else 503,
        )

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    if isinstance(settings, IngestionSettings) and settings.mllp_enabled:
        mllp_settings = settings

        @app.task  # type: ignore[untyped-decorator]
        async def run_mllp() -> None:
            await run_mllp_listener(app, mllp_settings)

    @app.task  # type: ignore[untyped-decorator]
    async def run_batch_loop() -> None:
        producer = BatchLoop.make_producer_for(settings)
        await producer.start()
        cleanup: Callable[[], Awaitable[None]] = _no_cleanup
        try:
            stage, cleanup = await composition.build_stage(
                service, settings, producer, policy=watcher.policy if watcher else None
            )
            state["stage"] = stage
            loop = BatchLoop(stage, settings, producer=producer)
            state["loop"] = loop
            heap.settle()
            await loop.run()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.error("the %s batch loop failed (%s); stopping the worker", service,
                      failure_site(exc))  # fmt: skip
            # A stage that cannot go on must not look healthy: end the process, let the
            # supervisor (stack, compose, k8s) restart it from the last committed offsets.
            await app.crash(RuntimeError(f"{service} batch loop failed"))
            raise
        finally:
            await producer.stop()
            await cleanup()

    if watcher is not None and isinstance(settings, ConflictsSettings):
        add_policy_reload(app, watcher, settings.policy_reload_seconds, state)
    return app


def add_policy_reload(
    app: faust.App, watcher: PolicyWatcher, interval: float, state: dict[str, Any]
) -> None:
    """A timer that applies a changed policy file to the running stage (none at interval 0)."""
    if interval <= 0:
        return

    @app.timer(interval=interval)  # type: ignore[untyped-decorator]
    async def reload_policy() -> None:
        from concord.conflicts.policy_watcher import reload_into

        # Until the stage exists, the policy it will be built with is the watcher's.
        if state["stage"] is not None:
            await reload_into(state["stage"], watcher)


async def run_mllp_listener(app: faust.App, settings: IngestionSettings) -> None:
    """The MLLP listener beside the batch loop, on its own producer: an ACK waits only for its
    own record, not for a batch of the loop's."""
    from concord.ingestion.app import ingest_functions
    from concord.ingestion.gateway import KafkaRawHl7Port, MllpGateway
    from concord.ingestion.mllp import MllpServer

    # A few milliseconds of linger let concurrent senders share a produce request.
    producer = AIOKafkaProducer(
        **settings.kafka_options(), acks="all", linger_ms=2, enable_idempotence=False
    )
    ingest = ingest_functions(settings)[topics.RAW_HL7V2]
    gateway = MllpGateway(
        KafkaRawHl7Port(producer),
        ingest,
        source=settings.mllp_source,
        client_sources=settings.mllp_client_sources,
        source_from_msh=settings.mllp_source_from_msh,
        write_timeout_seconds=settings.mllp_write_timeout_seconds,
    )
    server = MllpServer.from_settings(gateway.handle, settings)
    try:
        await producer.start()
        await server.start()
        await server.serve_forever()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        log.error("the MLLP listener failed (%s); stopping the worker", failure_site(exc))
        await app.crash(RuntimeError("MLLP listener failed"))
        raise
    finally:
        # Messages being handled get their ACK; a partial frame is dropped, never acknowledged.
        await server.close(grace_seconds=5.0)
        await producer.stop()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in SERVICES:
        sys.exit(f"usage: python -m concord.worker {{{'|'.join(SERVICES)}}}")
    service = argv[0]
    try:
        settings = composition.settings_for(service)
    except SettingsProblem as problem:
        # One line per bad variable, no traceback; 2, as for a usage error: restarting the
        # worker cannot help until the configuration changes.
        for line in problem.lines:
            print(f"the {service} worker does not start: {line}", file=sys.stderr)
        sys.exit(2)
    from concord.conflicts.policy import PolicyError

    try:
        app = build_app(service, settings)
    except PolicyError as exc:
        sys.exit(f"the {service} worker does not start: its policy file is invalid\n{exc}")
    check_schema_or_exit(service, settings)
    # aiokafka logs every failed reconnect (every ~50 ms while the broker is away); the worker
    # reports an outage itself (/health, metrics), so one line of a kind per 10 s is enough.
    limit_repeats("aiokafka")
    heap.watch_collections()
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()


def check_schema_or_exit(service: str, settings: DatabaseWorkerSettings) -> None:
    """Before Faust starts: wait for PostgreSQL, then refuse (one line, exit 1) a database
    whose migrations are not this release's, unless CONCORD_MIGRATE_ON_START lets the worker
    apply the missing ones. Exit 1, not 2: the fix is the database's, not this worker's
    configuration, and a supervisor retrying later may well find it done."""
    from concord.runtime.startup import StartRefused, check_schema

    def say(line: str) -> None:
        print(f"the {service} worker {line}", file=sys.stderr, flush=True)

    # A loop of its own, never set as current: Faust makes and keeps its own afterwards.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(check_schema(settings, say))
    except StartRefused as refused:
        sys.exit(f"the {service} worker does not start: {refused}")
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        loop.close()


if __name__ == "__main__":
    main()
