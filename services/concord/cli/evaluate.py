"""`concord evaluate`: a generated set through the running stack, scored per kind.

Publishes each source file of a folder written by `concord generate`, waits until the
workers have consumed it all and gone quiet, and the conflicts stage holds nothing back
(suppress_for) and has published everything, reads every event on concord.conflicts, and
prints precision and recall per kind of planted disagreement and stale record
(conflicts/evaluation.py says how each is counted). When the set holds narrative documents
(the answer key's `scenarios.narratives`), it then reads from PostgreSQL what the narrative
worker published for their records (the facts the conflicts stage keeps in fact_history, with
their text evidence, and the text review tasks) and prints precision and recall per attribute
(generate/text_evaluation.py).

`concord evaluate-text`: narrative documents from the generator, their oncology facts read
by text extraction (no stack), scored per attribute against their answer key
(generate/text_evaluation.py says how). A command of its own: `concord evaluate` takes the
set's folder as its argument, so a subcommand `text` would be read as a folder named text.
"""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from concord import topics
from concord.cli.options import (
    client_settings,
    database_dsn,
    kafka_client_options,
    state_dir_option,
)
from concord.cli.reachability import connections
from concord.conflicts.evaluation import ConflictScores, score
from concord.events import codec
from concord.runtime.db import pooled
from concord.runtime.reading import read_topic
from concord.stack.processes import metric_samples
from concord.stack.stack import load_state

if TYPE_CHECKING:
    from concord.clinical_text.extract import TextFinding
    from concord.generate.narratives import NarrativeDocument
    from concord.generate.text_evaluation import TextScore

ANSWER_KEY = "answer_key.json"
CONSUMED = "concord_events_consumed_total"
# Longer than the conflicts stage's timer tick (5 s): a stale record due on arrival, or a
# hold just ended, is raised by the next tick at the latest.
DEFAULT_QUIET_SECONDS = 8.0

Progress = Callable[[str], None]


def consumed_by_worker(ports: Mapping[str, int]) -> dict[str, float]:
    """Each worker's records consumed so far (its concord_events_consumed_total, summed)."""
    totals: dict[str, float] = {}
    for name, port in ports.items():
        try:
            samples = metric_samples(port, timeout=2)
        except (OSError, http.client.HTTPException):
            continue  # a worker restarting: the next poll sees it again
        totals[name] = sum(s.value for s in samples if s.name == CONSUMED)
    return totals


_WAITING = "SELECT (SELECT count(*) FROM held_records) + (SELECT count(*) FROM outbox)"


async def waiting_in_database(dsn: str) -> int:
    """Records the conflicts stage holds (suppress_for) or has not published yet (outbox)."""
    async with pooled(dsn, 1) as pool:
        return int(await pool.fetchval(_WAITING))


async def settle(
    ports: Mapping[str, int],
    before: Mapping[str, float],
    published: int,
    *,
    dsn: str,
    quiet_seconds: float,
    settle_within: float,
    progress: Progress,
) -> None:
    """Returns once ingestion has consumed what was published, nothing is held or waiting in
    an outbox, and no worker has consumed anything for quiet_seconds."""
    started = last_change = time.monotonic()
    last: tuple[dict[str, float], int] = ({}, -1)
    while True:
        now = time.monotonic()
        totals = await asyncio.to_thread(consumed_by_worker, ports)
        waiting = await waiting_in_database(dsn)
        if (totals, waiting) != last:
            last, last_change = (totals, waiting), now
            moved = {n: int(totals.get(n, 0) - before.get(n, 0)) for n in sorted(ports)}
            progress(
                "consumed since publishing: "
                + ", ".join(f"{n} {c}" for n, c in moved.items())
                + f"; held or unpublished: {waiting}"
            )
        ingested = totals.get("ingestion", 0) - before.get("ingestion", 0)
        if ingested >= published and not waiting and now - last_change >= quiet_seconds:
            return
        if now - started > settle_within:
            raise click.ClickException(
                f"the stack did not settle within {settle_within:.0f} s (ingestion consumed "
                f"{ingested:.0f} of {published} events; {waiting} records held or "
                "unpublished): is every worker up? (`concord stack status`)"
            )
        await asyncio.sleep(1.0)


# The answer key's section of narrative documents (generate/narrative_set.py).
NARRATIVES = "narratives"
TEXT_HEADING = "text extraction (scenarios.narratives, read through the stack):"
# What the conflicts stage kept of the facts read from text, for the set's document records.
_TEXT_FACTS = """
SELECT source_system, record_id, attribute, value, status, provenance_extra -> 'text' AS text
FROM fact_history
WHERE provenance_extra ? 'text' AND record_id = ANY($1::text[])
ORDER BY event_time, recorded_at
"""
# What the narrative worker kept for a reviewer instead (below text.min_confidence).
_TEXT_REVIEWS = """
SELECT source_system, evidence ->> 'source_record_id' AS record_id, attribute, value,
       evidence -> 'text' AS text
FROM text_review_tasks
WHERE evidence ->> 'source_record_id' = ANY($1::text[])
"""


@dataclass
class Evaluation:
    conflicts: ConflictScores
    text: TextScore | None = None  # None: the set holds no narrative documents

    def report(self) -> str:
        from concord.generate.text_evaluation import format_table, short_of_bar

        lines = [self.conflicts.report()]
        if self.text is not None:
            lines += ["", TEXT_HEADING, format_table(self.text)]
            short = short_of_bar(self.text)
            if short is not None:
                lines.append(short)
        return "\n".join(lines)

    @property
    def passed(self) -> bool:
        """Every planted kind at 1.00, and text extraction at the issue's bar."""
        from concord.generate.text_evaluation import short_of_bar

        text_ok = self.text is None or short_of_bar(self.text) is None
        return self.conflicts.perfect and text_ok


async def text_score(key: Mapping[str, Any], dsn: str) -> TextScore | None:
    """The set's narrative documents scored on what the stack read from them, or None."""
    from concord.conflicts.policy import DEFAULT_POLICY
    from concord.generate.text_evaluation import (
        documents_from_key,
        score_documents,
        stack_findings,
        stack_pairs,
    )

    section = key.get("scenarios", {}).get(NARRATIVES)
    if not section:
        return None
    documents = documents_from_key(section)
    refs = sorted({d.record_ref for d in documents})
    async with pooled(dsn, 1) as pool:
        facts = await pool.fetch(_TEXT_FACTS, refs)
        reviews = await pool.fetch(_TEXT_REVIEWS, refs)
    found = stack_findings([dict(r) for r in facts], [dict(r) for r in reviews])
    return score_documents(stack_pairs(documents, found), DEFAULT_POLICY.text.min_confidence)


async def run(
    folder: Path,
    kafka: str | dict[str, Any],
    ports: Mapping[str, int],
    *,
    dsn: str,
    quiet_seconds: float,
    settle_within: float,
    progress: Progress,
) -> Evaluation:
    from concord.publisher import publish_files

    key = orjson.loads((folder / ANSWER_KEY).read_bytes())
    before = await asyncio.to_thread(consumed_by_worker, ports)
    started = datetime.now(UTC)
    published = 0
    for source in key["sources"]:
        path = folder / source["file"]
        published += await publish_files(kafka, source["name"], [path])
        progress(f"published {path.name} as {source['name']} ({published} events in all)")
    await settle(
        ports,
        before,
        published,
        dsn=dsn,
        quiet_seconds=quiet_seconds,
        settle_within=settle_within,
        progress=progress,
    )
    records = await read_topic(kafka, topics.CONFLICTS)
    finished = datetime.now(UTC)
    events = [codec.CONFLICT_EVENT.decode(record.value) for record in records]
    progress(f"read {len(events)} events from {topics.CONFLICTS}")
    scores = score(key, events, started=started, finished=finished)
    text = await text_score(key, dsn)
    if text is not None:
        progress(f"read what the narrative worker published for {text.documents} documents")
    return Evaluation(scores, text)


@click.command("evaluate")
@click.argument(
    "folder", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="SET"
)
@click.option(
    "--quiet-seconds",
    type=click.FloatRange(min=1.0),
    default=DEFAULT_QUIET_SECONDS,
    show_default=True,
    help="How long every worker must have consumed nothing before the events are read.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1.0),
    default=1800.0,
    show_default=True,
    help="Give up when the stack has not settled after this many seconds.",
)
@state_dir_option
def evaluate(folder: Path, quiet_seconds: float, timeout: float, state_dir: Path) -> None:
    """Publish a set written by `concord generate` to the running local stack and print
    precision and recall per kind of planted disagreement and stale record, then per attribute
    of the text read from its narrative documents. Exits 1 unless every kind scores 1.00 and
    the text's precision is at least 0.95 and its recall at least 0.90 over all attributes.

    Give each set a stack of its own (`concord stack down`, remove the state folder, `up`):
    ingestion drops what it has seen, and two sets reuse record ids."""
    if not (folder / ANSWER_KEY).is_file():
        raise click.UsageError(f"{folder} holds no {ANSWER_KEY}: write one with concord generate")
    stack = load_state(state_dir)
    if stack is None:
        raise click.ClickException(
            f"no local stack in {state_dir}: start one with `concord stack up`"
        )
    ports = {name: w.port for name, w in stack.workers.items() if w.port is not None}
    settings = client_settings(state_dir)
    kafka, dsn = kafka_client_options(settings), database_dsn(settings)
    # Both checked before anything is published: a set half published cannot be scored.
    with connections(settings, state_dir, broker=True, database=True):
        evaluation = asyncio.run(
            run(
                folder,
                kafka,
                ports,
                dsn=dsn,
                quiet_seconds=quiet_seconds,
                settle_within=timeout,
                progress=lambda line: click.echo(f"evaluate: {line}", err=True),
            )
        )
    click.echo(evaluation.report())
    if not evaluation.passed:
        raise SystemExit(1)


# --- concord evaluate-text ------------------------------------------------------------------

VIAS = ("text", "fhir", "hl7")
PROGRESS_EVERY = 500


@dataclass
class Extraction:
    """What the extract calls took: their time alone, the documents and characters read."""

    seconds: float = 0.0
    texts: int = 0
    characters: int = 0
    unread: int = 0  # documents whose rendering gave back no text


def _read_back(doc: NarrativeDocument, via: str) -> list[str]:
    """The texts a reader gets back from `doc` rendered as `via` publishes it."""
    from concord.clinical_text.documents import fhir_documents, hl7_documents
    from concord.generate import narratives
    from concord.hl7v2 import er7

    pathology = doc.kind == narratives.PATHOLOGY
    if via == "text":
        return [doc.text]
    if via == "fhir":
        patient = f"Patient/{doc.document_id}"
        resource = (
            narratives.to_fhir_diagnostic_report(doc, patient)
            if pathology
            else narratives.to_fhir_document_reference(doc, patient)
        )
        return [d.text for d in fhir_documents(resource)]
    mrn = f"MRN-{doc.document_id}"
    message = narratives.to_hl7_oru(doc, mrn) if pathology else narratives.to_hl7_mdm(doc, mrn)
    return [d.text for d in hl7_documents(er7.parse(message))]


def _extracted(doc: NarrativeDocument, via: str, spent: Extraction) -> list[TextFinding]:
    from concord.clinical_text.extract import extract
    from concord.generate.text_evaluation import rebase

    texts = _read_back(doc, via)
    if not texts:
        spent.unread += 1
    findings: list[TextFinding] = []
    for text in texts:
        started = time.perf_counter()
        read = extract(text)
        spent.seconds += time.perf_counter() - started
        spent.texts += 1
        spent.characters += len(text)
        # A DiagnosticReport gives back its presentedForm (the whole report) and then its
        # conclusion (the final diagnosis, a part of the same report): the union of their
        # findings, one per attribute, the presentedForm's where both have one (it comes first,
        # and read with the rest of the report, its assertion and value are the better ones).
        seen = {f.attribute for f in findings}
        findings += [f for f in rebase(read, text, doc.text) if f.attribute not in seen]
    return findings


@click.command("evaluate-text")
@click.option(
    "--documents",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="How many narrative documents to generate and read.",
)
@click.option("--seed", type=int, default=7, show_default=True, help="The generator's seed.")
@click.option(
    "--via",
    type=click.Choice([*VIAS, "all"]),
    default="text",
    show_default=True,
    help="Read each document's text as written (text), or rendered and read back as a FHIR "
    "DocumentReference or DiagnosticReport (fhir), an HL7 MDM or ORU (hl7), or each in turn (all).",
)
@click.option(
    "--show-errors",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="Also print up to N errors with the line of text each was read from.",
)
def evaluate_text(documents: int, seed: int, via: str, show_errors: int) -> None:
    """Generate narrative pathology reports and clinician notes with an answer key, extract
    oncology facts from their text, and print precision and recall per attribute, the
    assertion errors (traps read as facts), facts found in documents with no oncology, and
    the extraction's throughput. Scores only: it never fails on them."""
    import random

    from concord.clinical_text.extract import extract
    from concord.conflicts.policy import DEFAULT_POLICY
    from concord.generate.narratives import narrative_documents
    from concord.generate.text_evaluation import (
        format_examples,
        format_table,
        score_documents,
        worst_examples,
    )

    def progress(line: str) -> None:
        click.echo(f"evaluate-text: {line}", err=True)

    min_confidence = DEFAULT_POLICY.text.min_confidence
    rng = random.Random(seed)  # noqa: S311 - synthetic data
    docs = narrative_documents(rng, documents)
    progress(f"generated {len(docs)} documents (seed {seed}); reading them via {via}")
    extract("")  # builds the pipeline once, outside the time measured
    spent = Extraction()
    pairs: list[tuple[NarrativeDocument, list[TextFinding]]] = []
    for index, doc in enumerate(docs):
        route = VIAS[index % len(VIAS)] if via == "all" else via
        pairs.append((doc, _extracted(doc, route, spent)))
        if (index + 1) % PROGRESS_EVERY == 0:
            progress(f"{index + 1}/{len(docs)} documents read")
    click.echo(format_table(score_documents(pairs, min_confidence)))
    if spent.unread:
        click.echo(f"read back with no text: {spent.unread} documents")
    seconds = spent.seconds or float("nan")
    click.echo(
        f"throughput (extraction alone): {len(docs) / seconds:.1f} documents/s, "
        f"{spent.characters / seconds:,.0f} characters/s ({spent.texts} texts, "
        f"{spent.characters:,} characters in {spent.seconds:.2f} s)"
    )
    if show_errors:
        click.echo("")
        click.echo(format_examples(worst_examples(pairs, min_confidence, show_errors)))
