"""Part 4 of pipeline.py: the normalization stage on a generated clinical population."""

from __future__ import annotations

import argparse
from typing import Any

from prometheus_client import REGISTRY

from concord.normalization.identity.resolution import How
from concord.publisher import publish_files
from concord.topics import DEADLETTER, FACTS, INGESTED

from .backend import fresh_backend
from .runner import BenchmarkError, Teardown, progress
from .stages import Profiling, cpu_us_per_record, micros, run_stage


async def population_part(args: argparse.Namespace, teardown: Teardown) -> dict[str, Any]:
    """Normalization on a generated clinical population: `concord generate`'s sources (FHIR
    and HL7 v2: Patients, results, conditions, allergies, with duplicates across sources)
    published and ingested first, then the normalization stage timed over concord.ingested,
    identity index and all."""
    from concord.generate.config import GeneratorConfig
    from concord.generate.generator import generate, write

    # Without the hard-case narrative documents (a text workload of their own, part 5): the
    # population the published figures were measured on.
    config = GeneratorConfig(patients=args.population, seed=42, narratives=0)
    progress(f"population: generating {args.population} persons")
    folder = teardown.tempdir("population")
    generated = generate(config)
    write(generated, folder)
    async with fresh_backend(teardown, "population") as (bootstrap, dsn):
        sent = 0
        for source in config.sources:
            sent += await publish_files(bootstrap, source.name, [folder / source.file_name])
        progress(f"population: {sent} raw events published; ingesting them (not timed) ...")
        _, ingested_out = await run_stage("ingestion", bootstrap, dsn, sent)
        ingested = ingested_out.get(INGESTED, 0)
        if ingested_out.get(DEADLETTER):
            raise BenchmarkError(f"population: {ingested_out[DEADLETTER]} events dead-lettered")
        progress(f"population: normalization over {ingested} ingested records ...")
        timing, out = await run_stage(
            "normalization",
            bootstrap,
            dsn,
            ingested,
            Profiling.from_args(args),
            label="normalization-population",
        )
    facts = out.get(FACTS, 0)
    return {
        "persons": args.population,
        "raw_events": sent,
        "ingested_records": ingested,
        "seconds": round(timing.seconds, 3),
        "records_per_second": round(timing.rate),
        "facts": facts,
        "facts_per_second": round(facts / timing.seconds) if timing.seconds else 0,
        "cpu": round(timing.cpu_seconds / timing.seconds, 2) if timing.seconds else 0.0,
        "cpu_us_per_record": cpu_us_per_record(timing),
        "identity_decisions": identity_decisions(),
    }


def identity_decisions() -> dict[str, int]:
    """The identity decisions so far, by how (this process's Prometheus counter)."""
    return {
        how.value: int(
            REGISTRY.get_sample_value("concord_identity_decisions_total", {"outcome": how.value})
            or 0
        )
        for how in How
    }


def print_population(p: dict[str, Any]) -> None:
    print(
        f"\nNormalization on a generated population ({p['persons']} persons, "
        f"{p['raw_events']} raw events, {p['ingested_records']} ingested records), one worker:"
    )
    print(
        f"  {p['records_per_second']:,} records/s, {p['facts_per_second']:,} facts/s "
        f"({p['facts']} facts in {p['seconds']}s, CPU {p['cpu']}, "
        f"{micros(p.get('cpu_us_per_record'))} µs of CPU a record)"
    )
    print(f"  identity decisions: {p['identity_decisions']}")
