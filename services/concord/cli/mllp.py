"""`concord mllp send`: HL7 v2 files over MLLP to the ingestion worker's listener."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path

import click

from concord.cli.options import client_settings, state_dir_option


@click.group()
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
@click.option(
    "--tls-certfile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Client certificate (PEM) for a listener that requires one (mutual TLS); its names "
    "decide the source the messages are recorded as.",
)
@click.option(
    "--tls-keyfile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Private key of --tls-certfile, unless the certificate file holds it.",
)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds per ACK.")
@state_dir_option
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def mllp_send(
    host: str | None,
    port: int | None,
    tls_cafile: Path | None,
    tls_certfile: Path | None,
    tls_keyfile: Path | None,
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
    if (tls_certfile or tls_keyfile) and not tls_cafile:
        raise click.UsageError("--tls-certfile/--tls-keyfile need --tls-cafile (TLS)")
    try:
        sent = [
            (path, n, m)
            for path in paths
            for n, m in enumerate(split_messages(path.read_bytes()), 1)
        ]
    except ValueError as exc:  # text before the first MSH
        raise click.UsageError(str(exc)) from None
    context = ssl.create_default_context(cafile=tls_cafile) if tls_cafile else None
    if context is not None and tls_certfile is not None:
        context.load_cert_chain(tls_certfile, tls_keyfile)
    elif tls_keyfile is not None:
        raise click.UsageError("--tls-keyfile needs --tls-certfile")
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
