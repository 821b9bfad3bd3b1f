"""Part 5 of pipeline.py, the narrative worker (issue 18): text documents per second on one
worker, beside the structured records per second of normalization and a raw loop over
concord.documents, all in the same run."""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import orjson

from concord.clinical_text.extract import extract
from concord.events import codec
from concord.generate import narratives
from concord.publisher import publish_files
from concord.runtime.reading import read_topic
from concord.topics import DEADLETTER, DOCUMENTS, FACTS, INGESTED

from .backend import BENCH_OUT, fresh_backend
from .raw_formats import fhir_patient, hl7_message
from .runner import BenchmarkError, Teardown, progress
from .stages import Profiling, baseline, run_stage, stage_row

SEED = 18  # the generator's seed: the same documents every run
FHIR_SOURCE, HL7_SOURCE = "bench-text-ehr", "bench-text-feed"


def write_inputs(prefix: str, count: int, folder: Path) -> tuple[Path, Path, dict[str, int]]:
    """`count` narrative documents, each about a patient of its own, as raw events, each after
    its Patient (part 3's FHIR Patient, or its ADT^A01 with the MRN the message names): even
    ones as FHIR (a note as a DocumentReference, a pathology report as a DiagnosticReport),
    odd ones as HL7 v2 (a report as an ORU^R01; a note as an MDM^T02, one odd note in two,
    the other as a DocumentReference). Returns the NDJSON and .hl7 files and how many of
    each rendering they hold."""
    docs = narratives.narrative_documents(random.Random(SEED), count)
    fhir_lines: list[bytes] = []
    hl7_messages: list[bytes] = []
    kinds: dict[str, int] = {}
    for i, doc in enumerate(docs):
        pathology = doc.kind == narratives.PATHOLOGY
        if i % 2 == 0 or (not pathology and i % 4 != 1):
            pid = f"{prefix}{i:07d}-p"
            resource = (
                narratives.to_fhir_diagnostic_report(doc, f"Patient/{pid}")
                if pathology
                else narratives.to_fhir_document_reference(doc, f"Patient/{pid}")
            )
            fhir_lines += [orjson.dumps(fhir_patient(pid, i)), orjson.dumps(resource)]
            kind = "DiagnosticReport" if pathology else "DocumentReference"
        else:
            mrn = f"{prefix}M{i:07d}"
            # Part 3's ADT^A01 for patient i (its MRN is prefix M i), under the assigner the
            # generator's PID-3 names, so that the text's message finds its patient.
            admit = hl7_message(prefix, 2 * i).replace(b"^^^BENCHHOSP^MR", b"^^^SYNTH^MR")
            rendered = (
                narratives.to_hl7_oru(doc, mrn) if pathology else narratives.to_hl7_mdm(doc, mrn)
            )
            hl7_messages += [admit, rendered.encode() + b"\r"]
            kind = "ORU^R01" if pathology else "MDM^T02"
        kinds[kind] = kinds.get(kind, 0) + 1
    fhir_path, hl7_path = folder / "narrative.ndjson", folder / "narrative.hl7"
    fhir_path.write_bytes(b"\n".join(fhir_lines) + b"\n")
    hl7_path.write_bytes(b"".join(hl7_messages))
    return fhir_path, hl7_path, kinds


async def narrative_part(
    args: argparse.Namespace, teardown: Teardown, token: str
) -> dict[str, Any]:
    """Publish --documents narrative documents with their Patients, ingest them (not timed),
    then time normalization over concord.ingested, a raw loop over concord.documents and the
    narrative stage over the same concord.documents, one after the other."""
    profiling = Profiling.from_args(args)
    folder = teardown.tempdir("narrative-input")
    fhir_path, hl7_path, kinds = write_inputs(f"BN{token}", args.documents, folder)
    progress(f"narrative: {args.documents} documents from the generator (seed {SEED}): {kinds}")
    async with fresh_backend(teardown, "narrative") as (bootstrap, dsn):
        sent = await publish_files(bootstrap, FHIR_SOURCE, [fhir_path])
        sent += await publish_files(bootstrap, HL7_SOURCE, [hl7_path])
        progress(f"narrative: {sent} raw events published; ingesting them (not timed) ...")
        _, ingested_out = await run_stage("ingestion", bootstrap, dsn, sent)
        ingested = ingested_out.get(INGESTED, 0)
        if ingested_out.get(DEADLETTER):
            raise BenchmarkError(
                f"narrative: {ingested_out[DEADLETTER]} events dead-lettered: "
                f"{await _dead_letter_reasons(bootstrap)}"
            )

        progress(f"narrative: normalization over {ingested} ingested records ...")
        norm, norm_out = await run_stage(
            "normalization", bootstrap, dsn, ingested, profiling, label="normalization-narrative"
        )
        documents = norm_out.get(DOCUMENTS, 0)
        if norm_out.get(DEADLETTER) or documents < args.documents:
            raise BenchmarkError(
                f"narrative: normalization produced {documents} documents for "
                f"{args.documents} texts; dead letters: {await _dead_letter_reasons(bootstrap)}"
            )
        progress(
            f"narrative: normalization: {norm.rate:,.0f} records/s ({norm.consumed} in "
            f"{norm.seconds:.2f}s); produced {norm_out}"
        )
        characters = await _characters(bootstrap)

        progress(f"narrative: raw loop over the {documents} ClinicalDocuments of {DOCUMENTS} ...")
        base = await baseline(
            bootstrap,
            documents,
            topic=DOCUMENTS,
            group_id="bench-baseline-documents",
            schema=codec.CLINICAL_DOCUMENT,
        )
        progress(f"narrative: raw loop: {base.rate:,.0f} records/s ({base.seconds:.2f}s)")

        progress(f"narrative: the narrative stage over the same {documents} documents ...")
        # The medspaCy pipeline is built once per process, on the first text (most of a
        # second): built here, as a running worker has it, and not timed.
        extract("Warm-up.")
        text, text_out = await run_stage("narrative", bootstrap, dsn, documents, profiling)
        if text_out.get(DEADLETTER):
            raise BenchmarkError(
                f"narrative: {text_out[DEADLETTER]} documents dead-lettered: "
                f"{await _dead_letter_reasons(bootstrap)}"
            )
        progress(
            f"narrative: narrative: {text.rate:,.1f} documents/s ({text.consumed} in "
            f"{text.seconds:.2f}s, {text.batches} batches); produced {text_out}"
        )
        with_facts = await _documents_with_facts(bootstrap)

    narrative_row = stage_row("narrative", DOCUMENTS, text, text_out, 1.0)
    del narrative_row["raw_events_per_s"]
    norm_row = stage_row("normalization", INGESTED, norm, norm_out, 1.0)
    del norm_row["raw_events_per_s"]
    base_row = stage_row("baseline (raw aiokafka loop)", DOCUMENTS, base, {}, 1.0)
    del base_row["raw_events_per_s"]
    base_row["produced"] = {BENCH_OUT: base.consumed}
    narrative_row.update(
        characters=characters,
        characters_per_s=round(characters / text.seconds) if text.seconds else 0,
        mean_characters=round(characters / documents),
        facts=text_out.get(FACTS, 0),
        documents_with_facts=with_facts,
        share_with_facts=round(with_facts / documents, 3),
        ratio_to_baseline=round(text.rate / base.rate, 4),
        ratio_to_normalization=round(text.rate / norm.rate, 4),
    )
    return {
        "documents": args.documents,
        "seed": SEED,
        "renderings": kinds,
        "raw_events": sent,
        "ingested_records": ingested,
        "clinical_documents": documents,
        "baseline": base_row,
        "normalization": norm_row,
        "narrative": narrative_row,
    }


async def _dead_letter_reasons(bootstrap: str) -> dict[str, int]:
    """The dead letters so far, by stage, input topic, reason code and the detail given."""
    reasons: dict[str, int] = {}
    for r in await read_topic(bootstrap, DEADLETTER, idle_seconds=1.0):
        letter = codec.DEAD_LETTER.decode(r.value)
        why = f"{letter.original_topic} {letter.reason_code}: {letter.reason}"[:200]
        why += f" (at {letter.location})" if letter.location else ""
        reasons[why] = reasons.get(why, 0) + 1
    return reasons


async def _characters(bootstrap: str) -> int:
    """The characters of text on concord.documents (what the narrative stage will read)."""
    total = 0
    for r in await read_topic(bootstrap, DOCUMENTS, idle_seconds=1.0):
        total += len(codec.CLINICAL_DOCUMENT.decode(r.value).text or "")
    return total


async def _documents_with_facts(bootstrap: str) -> int:
    """The documents at least one fact on concord.facts was read from (text evidence names
    the document: record and part)."""
    read = set()
    for r in await read_topic(bootstrap, FACTS, idle_seconds=1.0):
        provenance = codec.CLINICAL_FACT.decode(r.value).provenance
        if provenance.text is not None:
            read.add(
                (provenance.source_system, provenance.source_record_id, provenance.text.document)
            )
    return len(read)


def print_narrative(n: dict[str, Any]) -> None:
    text, norm, base = n["narrative"], n["normalization"], n["baseline"]
    print()
    print(
        f"The narrative worker, one worker per stage, {n['documents']} generated texts "
        f"({n['clinical_documents']} ClinicalDocuments, {text['mean_characters']:,} characters "
        f"each on average; {n['ingested_records']} ingested records with their Patients):"
    )
    print(f"{'':30} {'input':>18} {'records':>8} {'seconds':>8} {'records/s':>10} {'CPU':>5}")
    for row in (norm, base, text):
        print(
            f"{row['name']:30} {row['input_topic']:>18} {row['records']:>8} "
            f"{row['seconds']:>8.2f} {row['records_per_s']:>10,.1f} {row['cpu_share']:>5.2f}"
        )
    print(
        f"narrative: {text['records_per_s']:,.1f} documents/s, "
        f"{text['characters_per_s']:,} characters/s; {text['ratio_to_baseline']:.4f}x the raw "
        f"loop over {DOCUMENTS}, {text['ratio_to_normalization']:.4f}x normalization's "
        "records/s"
    )
    print(
        f"  {text['facts']} facts; {text['documents_with_facts']} of {n['clinical_documents']} "
        f"documents ({text['share_with_facts']:.0%}) gave at least one"
    )
    print("(records/s in each stage's own input: normalization's are ingested records, the")
    print(" Patients' and the texts'; the raw loop's and the narrative stage's are documents)")
