"""Sending files' events to the raw topics: `concord publish`, and the demo, `concord evaluate`
and the benchmark through `publish_files`.

Memory stays bounded whatever the size of the input: files are read as they are sent
(publishing.FileReader: NDJSON line by line, gzip streamed), aiokafka holds at most one open
batch per partition, and at most MAX_IN_FLIGHT sends wait for the broker's acknowledgement
before reading goes on. Which files, in which order (FHIR Bulk Data exports, Patient files
first) is bulk_export.py. A summary counts events per resource type and per outcome; a
progress display (ProgressLine) shows events and events/s while it runs.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from concord.bulk_export import InputFile, Inputs, plan
from concord.ingestion.common import SOURCE_HEADER
from concord.publishing import CLAIM_LINE, HL7_MESSAGE, FileReader, RawMessage
from concord.runtime.reading import client_options

MAX_IN_FLIGHT = 10_000  # sends not yet acknowledged before reading waits for the oldest
BATCH_BYTES = 64 * 1024  # per partition; aiokafka's 16 KiB default halves the throughput
PROGRESS_CHECK_EVERY = 256  # events between looks at the clock
PROGRESS_EVERY = 10_000  # events between lines of publish_files' `progress` callback
NOT_A_RESOURCE = "(not a resource)"  # not JSON, or neither a resource nor a claim line


class Progress(Protocol):
    def update(self, events: int, done_bytes: int, current: str) -> None: ...

    def close(self) -> None: ...


@dataclass
class PublishSummary:
    """What a publish did. Every event read is published, malformed ones too (ingestion
    dead-letters them with their bytes); only blank lines are not."""

    source: str
    published: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    not_a_resource: int = 0  # published; ingestion will dead-letter them
    other_type: int = 0  # published; a resourceType that is not the one its file's name says
    blank_lines: int = 0
    count_differs: list[str] = field(default_factory=list)  # manifest count vs lines in file
    not_published: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, message: RawMessage, expected_type: str | None) -> None:
        self.published += 1
        self.by_type[message.kind or NOT_A_RESOURCE] += 1
        if message.kind is None:
            self.not_a_resource += 1
        elif expected_type and message.kind not in (expected_type, CLAIM_LINE, HL7_MESSAGE):
            self.other_type += 1

    def file_done(self, file: InputFile, reader: FileReader, events: int) -> None:
        self.blank_lines += reader.blank_lines
        if file.count is not None and file.count != events:
            self.count_differs.append(
                f"{file.path.name}: the manifest says {file.count}, the file held {events}"
            )

    def lines(self) -> list[str]:
        rate = self.published / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"published {self.published} events from {self.source} in {self.seconds:.1f} s "
            f"({rate:,.0f} events/s), every one acknowledged by the broker"
        ]
        if self.by_type:  # in the order published
            lines.append("by resource type:")
            lines += _table(self.by_type.items())
        lines.append("by outcome:")
        lines += _table(self._outcomes())
        lines += [f"manifest count differs: {line}" for line in self.count_differs]
        lines += [f"not published: {line}" for line in self.not_published]
        return lines

    def _outcomes(self) -> Iterator[tuple[str, int]]:
        yield "published", self.published
        if self.not_a_resource:
            yield "  of which not a resource (ingestion dead-letters them)", self.not_a_resource
        if self.other_type:
            yield "  of which a resourceType other than their file's", self.other_type
        yield "skipped: blank lines", self.blank_lines


def _table(rows: Iterable[tuple[str, int]]) -> list[str]:
    rows = list(rows)
    width = max(len(label) for label, _ in rows)
    return [f"  {label:<{width}}  {n:>9}" for label, n in rows]


class ProgressLine:
    """Progress on a text stream (stderr): on a terminal a bar (share of the bytes read),
    events and events/s, redrawn twice a second; elsewhere a plain line every 10 s."""

    def __init__(
        self,
        stream: TextIO,
        total_bytes: int,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.total_bytes = total_bytes
        self.tty = stream.isatty() if tty is None else tty
        self.interval = 0.5 if self.tty else 10.0
        self.clock = clock
        self.started = clock()
        self.next_at = self.started + self.interval
        self.drawn = False

    def update(self, events: int, done_bytes: int, current: str) -> None:
        now = self.clock()
        if now < self.next_at:
            return
        self.next_at = now + self.interval
        share = min(done_bytes / self.total_bytes, 1.0) if self.total_bytes else 0.0
        rate = events / (now - self.started) if now > self.started else 0.0
        text = f"{share:4.0%}  {events:,} events  {rate:,.0f}/s  {current}"
        if self.tty:
            filled = round(share * 24)
            self.stream.write(f"\r[{'#' * filled}{'.' * (24 - filled)}] {text}\033[K")
            self.drawn = True
        else:
            self.stream.write(f"publishing: {text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.drawn:  # the summary takes the bar's place
            self.stream.write("\r\033[K")
            self.stream.flush()


class _CallbackProgress:
    """publish_files' `progress`: a line every PROGRESS_EVERY events."""

    def __init__(self, callback: Callable[[str], None]) -> None:
        self.callback = callback
        self.next_at = PROGRESS_EVERY

    def update(self, events: int, done_bytes: int, current: str) -> None:
        if events >= self.next_at:
            self.next_at = events - events % PROGRESS_EVERY + PROGRESS_EVERY
            self.callback(f"{events} events sent ({current})")

    def close(self) -> None:
        pass


def publish_command(
    kafka: str | dict[str, Any],
    source: str,
    inputs: Inputs,
    *,
    topic: str | None = None,
    stream: TextIO,
) -> PublishSummary:
    """`concord publish`: the planned files (bulk_export.plan), with progress on `stream`."""
    total = sum(file.path.stat().st_size for file in inputs.files)
    progress = ProgressLine(stream, total)
    try:
        summary = asyncio.run(publish_inputs(kafka, source, inputs.files, topic, progress))
    finally:
        progress.close()
    summary.not_published += inputs.not_published
    return summary


async def publish_files(
    kafka: str | dict[str, Any],
    source: str,
    paths: list[Path],
    *,
    topic: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Publish the files' events; `kafka` is bootstrap servers or KafkaSettings.kafka_options().

    Returns once the broker has acknowledged every event."""
    tracker = _CallbackProgress(progress) if progress else None
    summary = await publish_inputs(kafka, source, plan(paths).files, topic, tracker)
    return summary.published


async def publish_inputs(
    kafka: str | dict[str, Any],
    source: str,
    files: Sequence[InputFile],
    topic: str | None = None,
    progress: Progress | None = None,
) -> PublishSummary:
    """Publish the files in this order; returns once the broker acknowledged every event."""
    summary = PublishSummary(source)
    started = time.monotonic()
    headers = [(SOURCE_HEADER, source.encode())]
    producer = AIOKafkaProducer(
        **client_options(kafka), linger_ms=5, acks="all", max_batch_size=BATCH_BYTES
    )
    await producer.start()
    try:
        in_flight: deque[asyncio.Future[RecordMetadata]] = deque()
        done_bytes = 0
        for file in files:
            reader = FileReader(file.path, source)
            before = summary.published
            for message in _read(reader, summary):
                in_flight.append(
                    await producer.send(
                        topic or message.topic, message.value, key=message.key, headers=headers
                    )
                )
                summary.add(message, file.resource_type)
                while in_flight and (len(in_flight) > MAX_IN_FLIGHT or in_flight[0].done()):
                    await in_flight.popleft()  # raises what the send failed with
                if progress and summary.published % PROGRESS_CHECK_EVERY == 0:
                    progress.update(
                        summary.published, done_bytes + reader.position(), file.path.name
                    )
            done_bytes += reader.size
            summary.file_done(file, reader, summary.published - before)
            if progress:
                progress.update(summary.published, done_bytes, file.path.name)
        await asyncio.gather(*in_flight)
    finally:
        await producer.stop()
    summary.seconds = time.monotonic() - started
    return summary


def _read(reader: FileReader, summary: PublishSummary) -> Iterator[RawMessage]:
    """The reader's events; a file that cannot be read (a broken .gz, text before an HL7
    message) stops the publish with its name and what was published before it."""
    try:
        yield from reader
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise ValueError(
            f"{reader.path}: {exc} ({summary.published} events sent before it)"
        ) from exc
