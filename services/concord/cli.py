"""`concord`: publish EHR files, read alerts, run the local stack and the demo."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
from aiokafka import AIOKafkaConsumer

from concord import topics
from concord.bulk_export import plan
from concord.cli_options import (
    client_settings,
    connections,
    database_dsn,
    kafka_client_options,
    state_dir_option,
)
from concord.config import DEFAULT_STATE_DIR
from concord.events import codec
from concord.events.models import Alert
from concord.publisher import publish_command
from concord.runtime.reading import assign_from_start, client_options


@click.group()
@click.version_option(package_name="concord")
def main() -> None:
    """Concord: tells clinical data teams when two EHR sources disagree about a patient."""


@main.command()
@click.option("--source", required=True, help="The sending system (the 'source' header).")
@click.option(
    "--topic",
    default=None,
    help="Raw topic to publish to. Default: by file (.hl7 → ehr.raw.hl7v2; claim lines → "
    "ehr.raw.claims; other JSON → ehr.raw.fhir).",
)
@state_dir_option
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def publish(source: str, topic: str | None, state_dir: Path, paths: tuple[Path, ...]) -> None:
    """Publish EHR files as raw events: FHIR JSON (a resource, a Bundle, or NDJSON), HL7 v2
    (.hl7, one or many messages), claim lines (JSON or NDJSON), any of them gzipped (.gz),
    and FHIR Bulk Data exports: a folder of Type.NNN.ndjson[.gz] files or its manifest JSON.

    NDJSON is streamed; Patient files go first. Progress is shown on stderr, and at the end
    the events per resource type and per outcome."""
    settings = client_settings(state_dir)
    kafka = kafka_client_options(settings)
    try:
        inputs = plan(paths)  # a manifest that cannot be published is said before connecting
        with connections(settings, state_dir, broker=True):
            summary = publish_command(kafka, source, inputs, topic=topic, stream=sys.stderr)
    except ValueError as exc:  # an unreadable file or export; an .hl7 file with text before MSH
        raise click.UsageError(str(exc)) from None
    for line in summary.lines():
        click.echo(line, err=True)


@main.group()
def mllp() -> None:
    """HL7 v2 over MLLP, to the ingestion worker's listener."""


@mllp.command("send")
@click.option("--host", default=None, help="Listener host. Default: CONCORD_MLLP_HOST/stack.env.")
@click.option(
    "--port", type=int, default=None, help="Listener port. Default: CONCORD_MLLP_PORT/stack.env."
)
@click.option(
    "--tls-cafile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Use TLS, trusting this CA bundle for the listener's certificate.",
)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds per ACK.")
@state_dir_option
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def mllp_send(
    host: str | None,
    port: int | None,
    tls_cafile: Path | None,
    timeout: float,
    state_dir: Path,
    paths: tuple[Path, ...],
) -> None:
    """Send the messages of .hl7 files over one MLLP connection, each after the previous one's
    ACK, and print every ACK. Exits 1 unless every message was accepted (AA)."""
    import ssl

    from concord.hl7v2.er7 import split_messages
    from concord.ingestion.mllp import Ack, MllpError, send_messages

    settings = client_settings(state_dir)
    host = host or settings.mllp_host
    port = port or settings.mllp_port
    if port is None:
        raise click.UsageError("no MLLP port: pass --port, or run `concord stack up` first")
    try:
        sent = [
            (path, n, m)
            for path in paths
            for n, m in enumerate(split_messages(path.read_bytes()), 1)
        ]
    except ValueError as exc:  # text before the first MSH
        raise click.UsageError(str(exc)) from None
    context = ssl.create_default_context(cafile=tls_cafile) if tls_cafile else None
    counts: Counter[str] = Counter()

    def show(ack: Ack) -> None:
        path, number, _ = sent[counts.total()]  # ACKs come back in the order sent
        counts[ack.code] += 1
        where = f" at {ack.location}" if ack.location else ""
        problem = f": {ack.error}{where}" if ack.code != "AA" and ack.error else ""
        click.echo(f"{path.name}#{number} {ack.control_id} {ack.code}{problem}")

    failure = None
    try:
        asyncio.run(
            send_messages(
                host, port, [m for _, _, m in sent], ssl=context, server_hostname=host,
                timeout=timeout, on_ack=show,
            )
        )  # fmt: skip
    except MllpError as exc:
        failure = str(exc)
    summary = ", ".join(f"{count} {code}" for code, count in sorted(counts.items()))
    click.echo(f"{len(sent)} messages sent to {host}:{port}: {summary or 'no ACK'}", err=True)
    if failure:
        raise click.ClickException(failure)
    if set(counts) != {"AA"}:
        sys.exit(1)


@main.group()
def alerts() -> None:
    """Alerts: what is stored (list), what fires (follow), and a reviewer's decision
    (resolve)."""


@alerts.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--status", type=click.Choice(["OPEN", "ACKNOWLEDGED", "RESOLVED", "DISMISSED"]))
@click.option("--limit", type=int, default=1000, show_default=True)
@state_dir_option
def list_alerts(as_json: bool, status: str | None, limit: int, state_dir: Path) -> None:
    """Print the alerts stored in PostgreSQL, oldest first."""
    settings = client_settings(state_dir)
    dsn = database_dsn(settings)
    with connections(settings, state_dir, database=True):
        records = asyncio.run(_fetch_alerts(dsn, status, limit))
    for alert in records:
        _print_alert(alert, as_json)


async def _fetch_alerts(dsn: str, status: str | None, limit: int) -> list[Alert]:
    from concord.alerting.store import list_alerts
    from concord.runtime.db import create_pool

    pool = await create_pool(dsn, 1)
    try:
        return [r.alert for r in await list_alerts(pool, status=status, limit=limit)]
    finally:
        await pool.close()


def _print_alert(alert: Alert, as_json: bool) -> None:
    from concord.alerting.render import alert_json, alert_line

    if as_json:
        click.echo(orjson.dumps(alert_json(alert)).decode())
    else:
        click.echo(alert_line(alert))


@alerts.command("resolve")
@click.argument("alert_id")
@click.option(
    "--decision",
    type=click.Choice(["accept", "choose", "dismiss"]),
    required=True,
    help="accept the policy's proposal, choose another value (--value), or dismiss: not a "
    "real disagreement.",
)
@click.option("--value", "chosen_value", help="The value that should stand (with choose).")
@click.option("--by", required=True, help="Who decides (a user id), for the record.")
@state_dir_option
def resolve_alert(
    alert_id: str, decision: str, chosen_value: str | None, by: str, state_dir: Path
) -> None:
    """Decide an open conflict alert: the decision goes to concord.resolutions, the conflicts
    stage resolves the conflict (it stays resolved until a source says something new) and
    the alert follows."""
    from concord.conflicts.resolutions import NotResolvable, decide

    if (decision == "choose") != (chosen_value is not None):
        raise click.UsageError("--value goes with --decision choose, and only with it")
    settings = client_settings(state_dir)
    dsn = database_dsn(settings)
    kafka = kafka_client_options(settings)
    decisions = {"accept": "ACCEPTED_PROPOSAL", "choose": "CHOSE_VALUE", "dismiss": "DISMISSED"}
    try:
        with connections(settings, state_dir, broker=True, database=True):
            work = decide(
                dsn,
                kafka,
                alert_id,
                decisions[decision],  # type: ignore[arg-type]
                chosen_value=chosen_value,
                by=by,
                at=datetime.now(UTC),
            )
            resolution = asyncio.run(work)
    except NotResolvable as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"decision {resolution.resolution_id} on alert {alert_id} published to {topics.RESOLUTIONS}"
    )


@alerts.command("follow")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--from-beginning", is_flag=True, help="Replay the topic from its start.")
@state_dir_option
def follow_alerts(as_json: bool, from_beginning: bool, state_dir: Path) -> None:
    """Print alerts from concord.alerts as they are published, until Ctrl-C."""
    settings = client_settings(state_dir)
    kafka = kafka_client_options(settings)
    try:
        with connections(settings, state_dir, broker=True):
            asyncio.run(
                follow(
                    kafka,
                    lambda alert: _print_alert(alert, as_json),
                    from_beginning=from_beginning,
                )
            )
    except KeyboardInterrupt:
        pass


async def follow(
    kafka: str | dict[str, Any],
    on_alert: Callable[[Alert], None],
    *,
    from_beginning: bool = False,
    stop: asyncio.Event | None = None,
) -> None:
    """Call on_alert for every alert published (since now, or since the topic's start)."""
    started_ms = int(time.time() * 1000)
    options = client_options(kafka)
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False, fetch_max_wait_ms=50)
    try:
        await consumer.start()  # stopped in finally also when it fails: it leaves a client open
        await assign_from_start(consumer, topics.ALERTS)
        stop = stop or asyncio.Event()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    # Reading from the start and skipping by timestamp: the local broker's
                    # end offsets are unreliable, so seek_to_end could skip or repeat.
                    if from_beginning or record.timestamp >= started_ms:
                        on_alert(codec.ALERT.decode(record.value))
    finally:
        await consumer.stop()


@main.command("topics")
@click.argument("action", type=click.Choice(["create"]))
@state_dir_option
def topics_command(action: str, state_dir: Path) -> None:
    """Create every topic with its partition count (before any worker starts)."""
    from concord.stack.broker import ensure_topics

    settings = client_settings(state_dir)
    options = kafka_client_options(settings)
    with connections(settings, state_dir, broker=True):
        created = asyncio.run(
            ensure_topics(
                settings.bootstrap_servers,
                replication_factor=settings.kafka_replication_factor,
                client_options=options,
            )
        )
    click.echo(f"created {len(created)} topics; {len(topics.ALL_TOPICS)} expected exist")


@main.command("db")
@click.argument("action", type=click.Choice(["migrate"]))
@state_dir_option
def db_command(action: str, state_dir: Path) -> None:
    """Apply the database migrations not yet applied."""
    from concord.runtime.db import apply_migrations

    settings = client_settings(state_dir)
    dsn = database_dsn(settings)
    with connections(settings, state_dir, database=True):
        applied = asyncio.run(apply_migrations(dsn))
    click.echo(f"applied {len(applied)} migrations: {', '.join(applied) or 'none pending'}")


@main.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR / "demo",
    show_default=True,
    help="The demo's own stack folder (emptied at start).",
)
@click.option("--exit-after-check", is_flag=True, help="Stop after the checks (for scripts).")
def demo(state_dir: Path, exit_after_check: bool) -> None:
    """Run the pipeline on the local stack with the sample population; Ctrl-C stops it."""
    from concord.demo.run import run_demo
    from concord.stack.stack import StackError

    try:
        checks = asyncio.run(
            run_demo(state_dir, follow_until_interrupted=not exit_after_check, echo=click.echo)
        )
    except (KeyboardInterrupt, asyncio.CancelledError):
        return
    except (StackError, RuntimeError, TimeoutError) as error:  # the stack did not start
        raise click.ClickException(str(error)) from None
    if not all(check.ok for check in checks):
        sys.exit(1)


def _register_subcommands() -> None:
    from concord.conflicts.evaluate_command import evaluate
    from concord.deadletter_commands import deadletter
    from concord.generate.command import generate
    from concord.identity_commands import identity
    from concord.stack.commands import stack
    from concord.warning_commands import warnings_group

    main.add_command(stack)
    main.add_command(deadletter)
    main.add_command(warnings_group)
    main.add_command(generate)
    main.add_command(evaluate)
    main.add_command(identity)


_register_subcommands()

if __name__ == "__main__":
    sys.exit(main())
