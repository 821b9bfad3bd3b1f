"""`concord publish`: EHR files onto the raw topics (publisher.py does the work)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from concord.bulk_export import plan
from concord.cli.options import client_settings, kafka_client_options, state_dir_option
from concord.cli.reachability import connections
from concord.publisher import publish_command


@click.command()
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
