"""Concord pipeline benchmark: stage throughput against a raw aiokafka loop, alert latency, and
ingestion throughput per raw format against a pass-through.

    .venv/bin/python benchmarks/pipeline.py [--records 20000] [--rate 500] [--seconds 20]
                                            [--mix realistic|pairs] [--pair-share 0.1]
                                            [--max-rate] [--out results.json]
                                            [--img-dir docs/img] [--skip-throughput]
                                            [--skip-latency] [--skip-ingestion-formats]
                                            [--documents 2000] [--skip-narrative]

Part 1, throughput (a fresh broker and PostgreSQL, everything in this one process):
  * baseline: a raw aiokafka loop (getmany up to 1,000 records, fetch_max_wait_ms=20 → Avro
    decode → encode → produce → await acks → commit) over N IngestedRecords on `bench.in`;
  * each stage's real handler (built by concord.composition.build_stage, as a worker builds
    it) in a BatchLoop on one consumer group: what one worker runs. The stages are chained:
    N raw FHIR Patients → ingestion → normalization → conflicts (PostgreSQL) → alerting, each
    over the previous stage's real output, one stage at a time.
  Each is timed from the batch that brings its first record until its known input count is
  consumed, processed, produced, acknowledged and committed.

Part 2, latency (the whole stack as separate processes: broker, PostgreSQL, 4 Faust workers):
  the realistic mix at a fixed offered rate of raw events: pairs of disagreeing Patients are
  --pair-share of them (one in ten), among FHIR and HL7 v2 filler of part 3's formats
  (--mix pairs: pairs only, as before); latency = arrival of the alert on concord.alerts -
  send time of the pair's second (triggering) event, both on this process's clock. The
  latency is split per hop at the CreateTime of each stage's output records, and each
  worker's batch counters (/metrics) and each process's CPU are reported beside it, with each
  stage's consumer-group lag sampled every second and whether it grows.

--max-rate (the whole stack, then a four-hop pass-through of raw aiokafka copy loops, a fresh
  one per step): the highest offered rate of the realistic mix each sustains, stepping the
  rate, and their ratio (benchlib/endtoend.py says what "sustained" means).

Part 3, ingestion by raw format (a fresh broker and PostgreSQL, everything in this process):
  N clinical FHIR R4 events (Patients, Observations, Conditions and transaction Bundles of the
  three) and N HL7 v2 messages (ADT^A01 and ORU^R01), each record new to de-duplication, are
  published as `concord publish` does. Per format, a pass-through (the same consumer and
  producer settings; the consumed bytes are produced as they are) and then the ingestion stage
  in a BatchLoop are timed over the same records of the raw topic, as in part 1. The part
  fails if more than 2% of a format's events are dead-lettered.

Part 4, normalization on a generated population (a fresh broker and PostgreSQL, everything in
this process): `concord generate`'s sources for --population persons are published and
ingested (not timed), then the normalization stage is timed over concord.ingested.

Part 5, the narrative worker (a fresh broker and PostgreSQL, everything in this process):
--documents generated narrative texts (pathology reports and clinician notes) as FHIR
DocumentReferences / DiagnosticReports and HL7 v2 ORU^R01 / MDM^T02, each with a Patient, are
published and ingested (not timed); then, in turn, normalization over concord.ingested, a raw
loop over the ClinicalDocuments it put on concord.documents, and the narrative stage over the
same documents are timed: text documents/s beside structured records/s, in the same run.

Everything started is stopped at the end, also on error or Ctrl-C. See docs/benchmarks.md.
This file is the entry point: each part is a module of benchlib/ (throughput, latency and
endtoend, formats, population, narrative), and the runner, the teardown and the stage timing
are shared with recovery.py (benchlib/__init__.py says which module holds what).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import state_size
from benchlib.endtoend import PAIR_SHARE, max_rate_part, print_max_rate
from benchlib.formats import ingestion_formats_part, plot_ingestion_formats, print_ingestion_formats
from benchlib.latency import latency_part, plot_latency, print_latency
from benchlib.narrative import narrative_part, print_narrative
from benchlib.population import population_part, print_population
from benchlib.runner import (
    Teardown,
    add_output_arguments,
    progress,
    run_benchmark,
    run_info,
    write_json,
)
from benchlib.summary import as_json, print_targets, targets
from benchlib.throughput import plot_throughput, print_throughput, throughput_part


def write_outputs(args: argparse.Namespace, results: dict[str, Any]) -> None:
    write_json(args.out, results)
    if args.no_plots:
        return
    img_dir = Path(args.img_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    if "throughput" in results:
        plot_throughput(results["throughput"], img_dir / "benchmark-throughput.png")
    if "p50_ms" in results.get("latency", {}):
        plot_latency(results["latency"], img_dir / "benchmark-latency.png")
    if "ingestion_formats" in results:
        plot_ingestion_formats(results["ingestion_formats"], img_dir / "benchmark-ingestion.png")
    progress(f"plots written to {img_dir}")


# --- main -------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, teardown: Teardown) -> dict[str, Any]:
    token = uuid.uuid4().hex[:8]  # keeps ids unique on a shared CONCORD_DATABASE_URL server
    results: dict[str, Any] = {
        "run": run_info(
            records=args.records,
            rate=args.rate,
            seconds=args.seconds,
            mix=args.mix,
            pair_share=args.pair_share,
        )
    }
    if not args.skip_throughput:
        results["throughput"] = await throughput_part(args, teardown, token)
        print_throughput(results["throughput"])
    if not args.skip_latency:
        results["latency"] = await latency_part(args, teardown, token)
        print_latency(results["latency"])
    if args.max_rate:
        results["max_rate"] = await max_rate_part(args, teardown, token)
        print_max_rate(results["max_rate"])
    if not args.skip_ingestion_formats:
        results["ingestion_formats"] = await ingestion_formats_part(args, teardown, token)
        print_ingestion_formats(results["ingestion_formats"])
    if args.population:
        results["population"] = await population_part(args, teardown)
        print_population(results["population"])
    if not args.skip_narrative:
        results["narrative"] = await narrative_part(args, teardown, token)
        print_narrative(results["narrative"])
    if args.state_patients:
        results["state_size"] = await state_size.run(
            argparse.Namespace(patients=args.state_patients, batch=state_size.BATCH), teardown
        )
        state_size.print_results(results["state_size"])
    results["targets"] = targets(results)
    print_targets(results["targets"])
    results["targets"] = as_json(results["targets"])
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--records",
        type=int,
        default=20_000,
        help="raw FHIR Patients (part 1); raw events of each format (part 3)",
    )
    parser.add_argument("--rate", type=float, default=500.0, help="offered events/s (part 2)")
    parser.add_argument("--seconds", type=float, default=20.0, help="offering time (part 2)")
    parser.add_argument("--warmup-pairs", type=int, default=50, help="unmeasured pairs first")
    parser.add_argument(
        "--drain-timeout", type=float, default=60.0, help="how long to wait for the last alerts"
    )
    parser.add_argument(
        "--mix",
        choices=("realistic", "pairs"),
        default="realistic",
        help="part 2's events: timed pairs among FHIR and HL7 v2 filler (realistic), or timed "
        "pairs only, as before (pairs)",
    )
    parser.add_argument(
        "--pair-share",
        type=float,
        default=PAIR_SHARE,
        help="share of the realistic mix's events in timed pairs (default: one in ten)",
    )
    parser.add_argument(
        "--max-rate",
        action="store_true",
        help="also find the highest rate of the realistic mix the whole stack sustains, and a "
        "four-hop pass-through's, stepping the offered rate (a fresh stack per step)",
    )
    parser.add_argument("--max-rate-start", type=float, default=250.0, help="first step, events/s")
    parser.add_argument(
        "--max-rate-factor",
        type=float,
        default=1.5,
        help="the search's resolution: steps of x factor², then geometric means until the "
        "highest sustained and the lowest failed rate are within x factor",
    )
    parser.add_argument(
        "--max-rate-step-seconds", type=float, default=20.0, help="offering time of a step"
    )
    parser.add_argument(
        "--max-rate-steps", type=int, default=6, help="most steps of each search (stack, pass)"
    )
    parser.add_argument(
        "--max-rate-p99-ms",
        type=float,
        default=2000.0,
        help="a stack step whose event-to-alert p99 is above this is not sustained",
    )
    add_output_arguments(parser)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-ingestion-formats", action="store_true", help="skip part 3")
    parser.add_argument(
        "--population",
        type=int,
        default=2_000,
        help="persons of part 4's generated population (normalization facts/s); 0 skips it",
    )
    parser.add_argument(
        "--documents",
        type=int,
        default=2_000,
        help="generated narrative texts of part 5 (the narrative worker's documents/s)",
    )
    parser.add_argument("--skip-narrative", action="store_true", help="skip part 5")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="cProfile each stage into DIR/<stage>.pstats: part 3's as ingestion-<format>, "
        "part 4's as normalization-population, part 5's as normalization-narrative and "
        "narrative (slows the stages)",
    )
    parser.add_argument(
        "--flame",
        metavar="DIR",
        help="a py-spy flame graph of each stage's timed window: DIR/flame-<stage>.svg, "
        "named as --profile names them",
    )
    parser.add_argument(
        "--state-patients",
        type=int,
        default=0,
        help="also fill a conflicts store with this many patients (state_size.py) and report "
        "its bytes per patient; 0 skips it",
    )
    parser.add_argument("--keep-state", action="store_true", help="keep temp dirs and logs")
    args = parser.parse_args(argv)
    if args.records < 6 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--records must be at least 6; --rate and --seconds positive")
    if args.documents < 1:
        parser.error("--documents must be at least 1")
    if not 0 < args.pair_share <= 1:
        parser.error("--pair-share must be above 0 and at most 1")
    if args.max_rate_start <= 0 or args.max_rate_factor <= 1 or args.max_rate_steps < 1:
        parser.error("--max-rate-start positive, --max-rate-factor above 1, --max-rate-steps >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_benchmark(run, args)
    if isinstance(results, int):
        return results
    write_outputs(args, results)
    latency = results.get("latency", {})
    return 1 if latency.get("missing", 0) or latency.get("dead_letters", 0) else 0


if __name__ == "__main__":
    sys.exit(main())
