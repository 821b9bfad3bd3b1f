"""`concord warnings list`: the element-level problems records were accepted with.

Ingestion accepts a record whose fault lies in one element and says so in the record itself
(`IngestedRecord.warnings`; the rule per reason code is in docs/deadletters.md). A record that
carries warnings also carries the header `concord-warnings`, so listing decodes only those
records of concord.ingested. As with `concord deadletter list`, nothing here prints a key, a
payload or a record's own id in its source: a line says which rule, where in the raw event, and
where that event was.

Kafka I/O is one async function, selection and formatting are pure functions (tested without
a broker), and the click command glues them together.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import click
import orjson
from aiokafka.structs import ConsumerRecord

from concord.cli.deadletters import OnTopic, reason_option
from concord.cli.options import client_settings, kafka_client_options, state_dir_option
from concord.cli.reachability import connections
from concord.events import codec
from concord.events.models import IngestedRecord, IngestionWarning
from concord.ingestion.common import WARNINGS_HEADER
from concord.runtime.reading import read_topic
from concord.topics import INGESTED


@click.group(name="warnings")
def warnings_group() -> None:
    """List the warnings records were accepted with (an element left out or kept and flagged)."""


@dataclass(frozen=True)
class StoredWarning(OnTopic):
    """One warning, with the record that carries it and that record's place on
    concord.ingested."""

    record: IngestedRecord
    warning: IngestionWarning


@dataclass(frozen=True)
class Warnings:
    found: list[StoredWarning]
    # Records marked as carrying warnings that this version cannot decode: (partition, offset).
    undecodable: list[tuple[int, int]]


def has_warnings(record: ConsumerRecord) -> bool:
    return any(key == WARNINGS_HEADER for key, _ in record.headers or ())


def decode_warnings(records: Iterable[tuple[int, int, bytes | None]]) -> Warnings:
    """(partition, offset, value) of concord.ingested records, as their warnings; a record
    that cannot be decoded skips only itself."""
    found: list[StoredWarning] = []
    undecodable: list[tuple[int, int]] = []
    for partition, offset, value in records:
        try:
            record = codec.INGESTED_RECORD.decode(value)
        except codec.CodecError:
            undecodable.append((partition, offset))
            continue
        found += [StoredWarning(partition, offset, record, w) for w in record.warnings]
    return Warnings(found, sorted(undecodable))


@dataclass(frozen=True)
class WarningSelection:
    """Every filter given must match (any of its values); no filter matches everything."""

    reasons: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()
    topics: frozenset[str] = frozenset()

    def matches(self, stored: StoredWarning) -> bool:
        provenance = stored.record.provenance
        return (
            (not self.reasons or stored.warning.reason_code in self.reasons)
            and (not self.sources or provenance.source_system in self.sources)
            and (not self.topics or provenance.raw_topic in self.topics)
        )


def select_warnings(
    warnings: Iterable[StoredWarning], selection: WarningSelection
) -> list[StoredWarning]:
    """The matching warnings in topic order, each record's in the order it carries them."""
    chosen = [stored for stored in warnings if selection.matches(stored)]
    return sorted(chosen, key=lambda stored: (stored.partition, stored.offset))


def _origin(record: IngestedRecord) -> str:
    provenance = record.provenance
    return f"{provenance.raw_topic}[{provenance.raw_partition}]@{provenance.raw_offset}"


def warning_line(stored: StoredWarning) -> str:
    """One line for people: never the key, the payload or the source's record id."""
    record, warning = stored.record, stored.warning
    return "  ".join(
        [
            stored.position,
            record.provenance.received_time.astimezone(UTC).isoformat(timespec="seconds"),
            warning.reason_code,
            f"at={warning.location or '-'}",
            f"from={_origin(record)}",
            f"source={record.provenance.source_system}",
            f"type={record.resource_type}",
        ]
    )


def warning_json(stored: StoredWarning) -> dict[str, Any]:
    """The warning as JSON: the line's fields, the message (rules and fields, no values) and
    Concord's record id."""
    record, warning = stored.record, stored.warning
    provenance = record.provenance
    return {
        "record": stored.position,
        "partition": stored.partition,
        "offset": stored.offset,
        "received_at": provenance.received_time.astimezone(UTC).isoformat(),
        "reason_code": warning.reason_code,
        "message": warning.message,
        "location": warning.location,
        "original_topic": provenance.raw_topic,
        "original_partition": provenance.raw_partition,
        "original_offset": provenance.raw_offset,
        "source": provenance.source_system,
        "resource_type": record.resource_type,
        "record_id": record.record_id,
    }


def reason_summary(warnings: Iterable[StoredWarning]) -> list[tuple[str, int]]:
    """(reason code, count), most frequent first."""
    counts = Counter(stored.warning.reason_code for stored in warnings)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


async def read_warnings(kafka: str | dict[str, Any], *, idle_seconds: float = 1.5) -> Warnings:
    """The warnings on concord.ingested from its start; only records marked as carrying
    warnings are kept in memory and decoded."""
    records = await read_topic(kafka, INGESTED, idle_seconds=idle_seconds, keep=has_warnings)
    return decode_warnings((r.partition, r.offset, r.value) for r in records)


@warnings_group.command("list")
@reason_option
@click.option(
    "--source",
    "sources",
    multiple=True,
    metavar="SYSTEM",
    help="Only records from this sending system (repeatable).",
)
@click.option(
    "--topic",
    "topics",
    multiple=True,
    metavar="TOPIC",
    help="Only records read from this raw topic (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@state_dir_option
def list_command(
    reasons: tuple[str, ...],
    sources: tuple[str, ...],
    topics: tuple[str, ...],
    as_json: bool,
    state_dir: Path,
) -> None:
    """Print the warnings on concord.ingested, one per line; a count per reason code follows
    on stderr."""
    settings = client_settings(state_dir)
    with connections(settings, state_dir, broker=True):
        read = asyncio.run(read_warnings(kafka_client_options(settings)))
    if read.undecodable:
        click.echo(
            f"warning: {len(read.undecodable)} records on {INGESTED} marked with warnings "
            "cannot be decoded by this version, skipped",
            err=True,
        )
    selection = WarningSelection(frozenset(reasons), frozenset(sources), frozenset(topics))
    chosen = select_warnings(read.found, selection)
    for stored in chosen:
        click.echo(orjson.dumps(warning_json(stored)).decode() if as_json else warning_line(stored))
    click.echo(f"{len(chosen)} of {len(read.found)} warnings on {INGESTED}", err=True)
    for code, count in reason_summary(chosen):
        click.echo(f"  {code:<30} {count}", err=True)
