"""`concord deadletter list | replay`: read concord.deadletter, and re-submit what was fixed.

The original bytes of a dead letter may be patient data, so nothing here prints them unless
asked for by name (`list --json --with-payload`); lines show where a letter is, why it failed
and where it came from. A replay sends the original key, value and headers back to the
original topic, marked with REPLAY_HEADER. It adds no de-duplication of its own: ingestion's
(`ingested_versions`, per source, record and version) already drops a version that passed
before, and every later stage's ids are deterministic, so replaying twice is harmless.

Kafka I/O is in plain async functions and selection and formatting in pure functions, so
both are tested without click; the click commands only glue them together.
"""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import click
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from concord.cli.options import client_settings, kafka_client_options, state_dir_option
from concord.cli.reachability import connections
from concord.deadletters import REASON_CODES, payload_not_kept
from concord.events import codec
from concord.events.models import DeadLetter
from concord.ingestion.common import SOURCE_HEADER
from concord.runtime.reading import client_options, read_topic
from concord.text import printable
from concord.topics import DEADLETTER

REPLAY_HEADER = "concord-replay-of"

OutgoingHeaders = list[tuple[str, bytes | None]]


@click.group(name="deadletter")
def deadletter() -> None:
    """List what the stages rejected (concord.deadletter) and re-submit it after a fix."""


# --- what was read ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OnTopic:
    """A record's own place on the topic it was read from, which is how commands name it."""

    partition: int
    offset: int

    @property
    def position(self) -> str:
        """PARTITION:OFFSET, as parse_position reads it."""
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True)
class StoredLetter(OnTopic):
    """A dead letter and its own place on concord.deadletter."""

    letter: DeadLetter


@dataclass(frozen=True)
class DeadLetterTopic:
    letters: list[StoredLetter]
    # Records that are not a DeadLetter this version can decode, by (partition, offset).
    undecodable: list[tuple[int, int]] = field(default_factory=list)


def decode_letters(records: Iterable[tuple[int, int, bytes | None]]) -> DeadLetterTopic:
    """(partition, offset, value) of the topic's records, decoded; one bad record skips only
    itself, so a single corrupt record cannot hide every other dead letter."""
    letters: list[StoredLetter] = []
    undecodable: list[tuple[int, int]] = []
    for partition, offset, value in records:
        try:
            letters.append(StoredLetter(partition, offset, codec.DEAD_LETTER.decode(value)))
        except codec.CodecError:
            undecodable.append((partition, offset))
    return DeadLetterTopic(letters, sorted(undecodable))


# --- selection --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command is about: every filter given must match (any of its
    values); a selection with no filter matches everything."""

    reasons: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    topics: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()
    positions: frozenset[tuple[int, int]] = frozenset()

    @property
    def is_empty(self) -> bool:
        return not (self.reasons or self.stages or self.topics or self.sources or self.positions)

    def matches(self, stored: StoredLetter) -> bool:
        letter = stored.letter
        return (
            (not self.reasons or letter.reason_code in self.reasons)
            and (not self.stages or letter.stage in self.stages)
            and (not self.topics or letter.original_topic in self.topics)
            and (not self.sources or source_of(letter) in self.sources)
            and (not self.positions or (stored.partition, stored.offset) in self.positions)
        )


def select(letters: Iterable[StoredLetter], selection: Selection) -> list[StoredLetter]:
    """The matching letters in topic order: per partition by offset, so a replay re-sends one
    key's letters (one partition, as the dead-letter key is the original key) in order."""
    return sorted(
        (s for s in letters if selection.matches(s)), key=lambda s: (s.partition, s.offset)
    )


def missing_positions(letters: Iterable[StoredLetter], selection: Selection) -> list[str]:
    """Positions named explicitly that hold no (decodable) dead letter."""
    present = {(s.partition, s.offset) for s in letters}
    return [f"{p}:{o}" for p, o in sorted(selection.positions - present)]


def check_reason_codes(codes: Iterable[str]) -> tuple[str, ...]:
    """The codes, upper-cased; ValueError names those not in the catalogue."""
    wanted = tuple(code.strip().upper() for code in codes)
    unknown = [code for code in wanted if code not in REASON_CODES]
    if unknown:
        raise ValueError(
            f"unknown reason code {', '.join(unknown)}; known codes (docs/deadletters.md): "
            + ", ".join(sorted(REASON_CODES))
        )
    return wanted


def parse_position(text: str) -> tuple[int, int]:
    """A position on concord.deadletter as `list` prints it: PARTITION:OFFSET."""
    partition, sep, offset = text.strip().partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"{text!r} is not PARTITION:OFFSET (for example 2:17)")
    return int(partition), int(offset)


# --- formatting -------------------------------------------------------------------------------


def _header(letter: DeadLetter, key: str) -> bytes | None:
    return next((h.value for h in letter.original_headers if h.key == key), None)


def source_of(letter: DeadLetter) -> str | None:
    """The original 'source' header (the sending system), printable; None when absent."""
    # A malformed header (INVALID_SOURCE_HEADER) must not put control characters on a
    # terminal, so anything unprintable is shown escaped.
    value = _header(letter, SOURCE_HEADER)
    return printable(value) if value is not None else None


def replay_of(letter: DeadLetter) -> str | None:
    """Which dead letter this letter's record replayed, if it was a replay."""
    value = _header(letter, REPLAY_HEADER)
    return printable(value) if value is not None else None


def _on_topic(letter: DeadLetter) -> bool:
    # The MLLP gateway rejects a message before it is written anywhere, so its letters carry
    # no partition or offset (negative placeholders).
    return letter.original_partition >= 0 and letter.original_offset >= 0


def origin(letter: DeadLetter) -> str:
    """Where the original record was: topic[partition]@offset, or topic[-]@- if never written."""
    if not _on_topic(letter):
        return f"{letter.original_topic}[-]@-"
    return f"{letter.original_topic}[{letter.original_partition}]@{letter.original_offset}"


def _b64(value: bytes | None) -> str | None:
    return base64.b64encode(value).decode() if value is not None else None


def letter_json(stored: StoredLetter, *, with_payload: bool = False) -> dict[str, Any]:
    """The letter as JSON: no original key, value or other headers unless with_payload (the
    key names a patient, the value is the clinical record)."""
    letter = stored.letter
    value = letter.original_value
    document: dict[str, Any] = {
        "dead_letter": stored.position,
        "partition": stored.partition,
        "offset": stored.offset,
        "failed_at": letter.failed_at.astimezone(UTC).isoformat(),
        "stage": letter.stage,
        "reason_code": letter.reason_code,
        "reason": letter.reason,  # names fields and rules only (the Rejection contract)
        "location": letter.location,
        "original_topic": letter.original_topic,
        "original_partition": letter.original_partition if _on_topic(letter) else None,
        "original_offset": letter.original_offset if _on_topic(letter) else None,
        "source": source_of(letter),
        "replay_of": replay_of(letter),
        "payload_bytes": len(value) if value is not None else None,
    }
    if with_payload:
        document["original_key"] = _b64(letter.original_key)
        document["original_value"] = _b64(value)
        document["original_headers"] = [
            {"key": h.key, "value": _b64(h.value)} for h in letter.original_headers
        ]
    return document


def letter_line(stored: StoredLetter) -> str:
    """One line for people; never the original key or bytes."""
    letter = stored.letter
    value = letter.original_value
    parts = [
        stored.position,
        letter.failed_at.astimezone(UTC).isoformat(timespec="seconds"),
        letter.stage,
        letter.reason_code,
        f"at={letter.location or '-'}",
        f"from={origin(letter)}",
        f"source={source_of(letter) or '-'}",
        f"bytes={len(value) if value is not None else '-'}",
    ]
    replayed = replay_of(letter)
    if replayed is not None:
        parts.append(f"replay-of={replayed}")
    return "  ".join(parts)


def reason_summary(letters: Iterable[StoredLetter]) -> list[tuple[str, int]]:
    """(reason code, count), most frequent first."""
    counts = Counter(s.letter.reason_code for s in letters)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


# --- replay -----------------------------------------------------------------------------------


def replay_headers(stored: StoredLetter) -> OutgoingHeaders:
    """The original headers in their order, with REPLAY_HEADER naming this letter. An earlier
    replay's header is replaced, not stacked, so it always names the letter being replayed."""
    kept: OutgoingHeaders = [
        (h.key, h.value) for h in stored.letter.original_headers if h.key != REPLAY_HEADER
    ]
    return [*kept, (REPLAY_HEADER, stored.position.encode())]


class ReplayError(Exception):
    """Some records were not acknowledged. Names counts only; replaying again is safe."""

    def __init__(self, acknowledged: dict[str, int], failed: int, cause: str) -> None:
        self.acknowledged = acknowledged
        self.failed = failed
        super().__init__(
            f"{failed} records not acknowledged ({cause}); "
            f"{sum(acknowledged.values())} were. Replaying the same selection again is safe: "
            "ingestion drops versions it already emitted."
        )


# --- Kafka ------------------------------------------------------------------------------------


async def read_dead_letters(
    kafka: str | dict[str, Any], *, idle_seconds: float = 1.5
) -> DeadLetterTopic:
    """Every dead letter from the topic's start; `kafka` is bootstrap servers or
    KafkaSettings.kafka_options()."""
    records = await read_topic(kafka, DEADLETTER, idle_seconds=idle_seconds)
    return decode_letters((r.partition, r.offset, r.value) for r in records)


async def replay(kafka: str | dict[str, Any], letters: Sequence[StoredLetter]) -> dict[str, int]:
    """Re-send each letter's original record to its original topic; returns how many each
    topic acknowledged. Returns only once every send is acknowledged (or raises ReplayError)."""
    # Idempotence stays off: the local broker cannot hand out producer ids; ingestion's
    # de-duplication covers a record sent twice.
    producer = AIOKafkaProducer(
        **client_options(kafka), acks="all", linger_ms=5, enable_idempotence=False
    )
    try:
        await producer.start()
        futures = []
        refused: KafkaError | None = None
        for stored in letters:
            letter = stored.letter
            try:
                futures.append(
                    await producer.send(
                        letter.original_topic,
                        letter.original_value,
                        key=letter.original_key,
                        headers=replay_headers(stored),
                    )
                )
            except KafkaError as error:  # e.g. a topic that no longer exists
                refused = error
                break
        # What was queued before a refusal is still awaited, so the counts are the truth.
        results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await producer.stop()
    acknowledged = Counter(
        s.letter.original_topic
        for s, result in zip(letters, results, strict=False)
        if not isinstance(result, BaseException)
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    failed = len(letters) - sum(acknowledged.values())
    if failed:
        cause = refused if refused is not None else errors[0]
        raise ReplayError(dict(acknowledged), failed, type(cause).__name__)
    return dict(acknowledged)


# --- commands ---------------------------------------------------------------------------------


def _position_option(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> tuple[tuple[int, int], ...]:
    try:
        return tuple(parse_position(text) for text in value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _reason_codes(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    try:
        return check_reason_codes(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


# `concord warnings list` selects by the same catalogue.
reason_option = click.option(
    "--reason", "reasons", multiple=True, metavar="CODE", callback=_reason_codes,
    help="Only this reason code (repeatable; catalogue: docs/deadletters.md).",
)  # fmt: skip

_SELECTION_OPTIONS = (
    reason_option,
    click.option(
        "--stage", "stages", multiple=True, metavar="STAGE",
        help="Only letters from this stage, as `list` prints it: ingestion, normalization, "
        "conflicts, alerting or mllp (repeatable).",
    ),
    click.option(
        "--topic", "topics", multiple=True, metavar="TOPIC",
        help="Only letters whose original record was on this topic (repeatable).",
    ),
    click.option(
        "--source", "sources", multiple=True, metavar="SYSTEM",
        help="Only letters whose original 'source' header is this (repeatable).",
    ),
    click.option(
        "--offset", "positions", multiple=True, metavar="P:O", callback=_position_option,
        help="Only the letter at PARTITION:OFFSET of concord.deadletter, as `list` prints "
        "it (repeatable).",
    ),
)  # fmt: skip


def _selection_options(command: Any) -> Any:
    for option in reversed(_SELECTION_OPTIONS):
        command = option(command)
    return command


def _selection(
    reasons: tuple[str, ...],
    stages: tuple[str, ...],
    topics: tuple[str, ...],
    sources: tuple[str, ...],
    positions: tuple[tuple[int, int], ...],
) -> Selection:
    return Selection(
        frozenset(reasons), frozenset(stages), frozenset(topics), frozenset(sources),
        frozenset(positions),
    )  # fmt: skip


def _read(state_dir: Path) -> tuple[DeadLetterTopic, dict[str, Any]]:
    """The topic's dead letters, and the Kafka options it was read with; a broker that cannot
    be reached is said in one line."""
    settings = client_settings(state_dir)
    kafka = kafka_client_options(settings)
    with connections(settings, state_dir, broker=True):
        topic = asyncio.run(read_dead_letters(kafka))
    if topic.undecodable:
        shown = ", ".join(f"{p}:{o}" for p, o in topic.undecodable[:10])
        more = " ..." if len(topic.undecodable) > 10 else ""
        click.echo(
            f"warning: {len(topic.undecodable)} records on {DEADLETTER} are not dead letters "
            f"this version can decode, skipped: {shown}{more}",
            err=True,
        )
    return topic, kafka


@deadletter.command("list")
@_selection_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--with-payload",
    is_flag=True,
    help="With --json: add the original key, value and headers (base64). They may hold "
    "patient data.",
)
@state_dir_option
def list_command(
    reasons: tuple[str, ...],
    stages: tuple[str, ...],
    topics: tuple[str, ...],
    sources: tuple[str, ...],
    positions: tuple[tuple[int, int], ...],
    as_json: bool,
    with_payload: bool,
    state_dir: Path,
) -> None:
    """Print the dead letters on concord.deadletter, one per line, without the original bytes;
    a count per reason code follows on stderr."""
    if with_payload and not as_json:
        raise click.UsageError("--with-payload needs --json (payloads are never printed as text)")
    selection = _selection(reasons, stages, topics, sources, positions)
    topic, _ = _read(state_dir)
    chosen = select(topic.letters, selection)
    for stored in chosen:
        if as_json:
            click.echo(orjson.dumps(letter_json(stored, with_payload=with_payload)).decode())
        else:
            click.echo(letter_line(stored))
    for position in missing_positions(topic.letters, selection):
        click.echo(f"warning: no dead letter at {position}", err=True)
    click.echo(f"{len(chosen)} of {len(topic.letters)} dead letters on {DEADLETTER}", err=True)
    for code, count in reason_summary(chosen):
        click.echo(f"  {code:<30} {count}", err=True)


def _replayable(topic: DeadLetterTopic, selection: Selection) -> list[StoredLetter]:
    """The selected letters that can be re-sent; a click error when there are none."""
    missing = missing_positions(topic.letters, selection)
    if missing:
        raise click.ClickException(
            f"no dead letter at {', '.join(missing)}; nothing replayed (see `concord "
            "deadletter list`)"
        )
    chosen = select(topic.letters, selection)
    if not chosen:
        raise click.ClickException(
            f"no dead letter matches (of {len(topic.letters)}); nothing replayed"
        )
    unkept = [stored for stored in chosen if payload_not_kept(stored.letter)]
    if unkept:
        # Their bytes were too large to keep in the letter: re-sending an empty value would
        # be a different record.
        click.echo(
            f"skipping {len(unkept)} letter(s) without their original bytes (too large to "
            f"keep): re-send from {', '.join(origin(s.letter) for s in unkept)} while the "
            "topic retains it",
            err=True,
        )
        chosen = [stored for stored in chosen if not payload_not_kept(stored.letter)]
        if not chosen:
            raise click.ClickException("nothing left to replay")
    return chosen


@deadletter.command("replay")
@_selection_options
@click.option("--all", "everything", is_flag=True, help="Every dead letter (no filter).")
@click.option("--dry-run", is_flag=True, help="Print what would be re-submitted; send nothing.")
@state_dir_option
def replay_command(
    reasons: tuple[str, ...],
    stages: tuple[str, ...],
    topics: tuple[str, ...],
    sources: tuple[str, ...],
    positions: tuple[tuple[int, int], ...],
    everything: bool,
    dry_run: bool,
    state_dir: Path,
) -> None:
    """Re-submit dead letters to their original topic after a fix (configuration or code),
    with the original key and headers plus 'concord-replay-of'. What had already passed is
    not duplicated: ingestion drops versions it already emitted."""
    selection = _selection(reasons, stages, topics, sources, positions)
    # Replaying the whole topic by accident would re-send every rejected record at once.
    if selection.is_empty and not everything:
        raise click.UsageError(
            "say what to replay: --reason, --stage, --topic, --source or --offset "
            "(see `concord deadletter list`), or --all for every dead letter"
        )
    if everything and not selection.is_empty:
        raise click.UsageError("--all replays every dead letter: leave out the filters")
    topic, kafka = _read(state_dir)
    chosen = _replayable(topic, selection)
    for stored in chosen:
        click.echo(letter_line(stored))
    if dry_run:
        for original, count in sorted(Counter(s.letter.original_topic for s in chosen).items()):
            click.echo(f"would re-submit {count} to {original}")
        return
    try:
        counts = asyncio.run(replay(kafka, chosen))
    except ReplayError as error:
        raise click.ClickException(str(error)) from None
    except KafkaError as error:
        # aiokafka's errors name brokers and topics, never record contents.
        raise click.ClickException(f"replay failed: {error}") from None
    for original, count in sorted(counts.items()):
        click.echo(f"re-submitted {count} to {original}")
