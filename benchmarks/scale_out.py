"""Scale-out: the whole stack with one worker per stage against N (2) per stage, in one run.

    .venv/bin/python benchmarks/scale_out.py [--replicas 2] [--rate 300] [--seconds 10]
                                             [--burst-pairs 1000] [--out results.json]

For each configuration, a fresh stack (broker, PostgreSQL and the workers as separate
processes, `concord.stack.start_stack(replicas=...)`; a service's workers share its consumer
group and so its 4 partitions per topic), then on that stack:

  * latency (pipeline.py's part 2, the same code): pairs of disagreeing Patients offered at
    --rate events/s for --seconds; event-to-alert latency from the send of each pair's second
    event to the arrival of its alert on concord.alerts (p50, p95, p99), per hop, and each
    worker's batches and CPU;
  * end-to-end throughput: --burst-pairs further pairs published at once, as fast as the
    producer goes; raw events per second from the first send to the arrival of the last
    alert (every stage included; the broker, PostgreSQL and this process share the machine).

Then both side by side, with the ratio N per stage / 1 per stage. On a machine with fewer
cores than workers, more workers add rebalancing, connections and context switches without
adding CPU: read the ratio with the cores in the run's metadata. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from benchlib.latency import AlertCollector, latency_part, print_latency
from benchlib.metrics import cpu_seconds
from benchlib.patients import patient_pairs, publish_raw
from benchlib.runner import (
    BenchmarkError,
    Teardown,
    progress,
    run_benchmark,
    run_info,
    write_json,
)

from concord.stack.stack import ALL_SERVICES, StackInfo
from concord.topics import PARTITIONS


async def burst(info: StackInfo, token: str, pairs: int, within: float) -> dict[str, Any]:
    """`pairs` disagreeing pairs published at once: raw events per second end to end, from
    the first send to the arrival of the last alert."""
    collector = AlertCollector(info.bootstrap_servers)
    await collector.start()
    try:
        events = patient_pairs(f"BT{token}", pairs, disagree_every=1)
        ids = [e.triggers for e in events if e.triggers]
        progress(f"throughput: publishing {len(events)} events at once ({pairs} pairs)")
        cpu_before, started = cpu_seconds(info), time.perf_counter()
        await publish_raw(info.bootstrap_servers, events)
        published = time.perf_counter() - started
        missing = await collector.wait_for(ids, within=within)
        wall = time.perf_counter() - started
        cpu_after = cpu_seconds(info)
    finally:
        await collector.stop()
    if missing:
        raise BenchmarkError(f"throughput: {len(missing)} of {len(ids)} alerts never arrived")
    last = max(collector.arrived[i].perf for i in ids) - started
    return {
        "events": len(events),
        "alerts": len(ids),
        "publish_seconds": round(published, 2),
        "seconds_to_last_alert": round(last, 2),
        "events_per_second": round(len(events) / last, 1),
        "cpu_cores_used": {
            name: round((cpu_after[name] - cpu_before.get(name, 0.0)) / wall, 2)
            for name in cpu_after
        },
    }


async def run(args: argparse.Namespace, teardown: Teardown) -> dict[str, Any]:
    token = uuid.uuid4().hex[:8]
    results: dict[str, Any] = {
        "run": run_info(
            rate=args.rate,
            seconds=args.seconds,
            burst_pairs=args.burst_pairs,
            replicas=args.replicas,
            partitions_per_topic=PARTITIONS,
        ),
        "configurations": {},
    }
    for count in (1, args.replicas):
        label = f"{count} per stage"
        progress(f"=== {label} ===")

        async def then_burst(info: StackInfo, count: int = count) -> dict[str, Any]:
            return await burst(info, f"{token}{count}", args.burst_pairs, args.drain_timeout)

        result = await latency_part(
            args,
            teardown,
            f"{token}{count}",
            replicas=dict.fromkeys(ALL_SERVICES, count),
            after=then_burst,
        )
        result["throughput"] = result.pop("after")
        results["configurations"][label] = result
        print_latency(result)
        t = result["throughput"]
        print(
            f"  throughput end to end: {t['events']} events in {t['seconds_to_last_alert']:.1f}s "
            f"to the last alert: {t['events_per_second']:.0f} events/s"
        )
    results["comparison"] = compare(results["configurations"], args.replicas)
    print_comparison(results["comparison"], args.replicas)
    return results


FIGURES = (
    ("throughput_events_per_second", "end-to-end throughput, events/s"),
    ("p50_ms", "latency p50, ms"),
    ("p95_ms", "latency p95, ms"),
    ("p99_ms", "latency p99, ms"),
    ("achieved_rate", "offered rate achieved, events/s"),
    ("missing", "alerts missing"),
)


def compare(configurations: dict[str, dict[str, Any]], replicas: int) -> dict[str, Any]:
    one, many = configurations["1 per stage"], configurations[f"{replicas} per stage"]

    def figure(result: dict[str, Any], key: str) -> float | None:
        if key == "throughput_events_per_second":
            return float(result["throughput"]["events_per_second"])
        value = result.get(key)
        return None if value is None else float(value)

    rows = {}
    for key, _ in FIGURES:
        a, b = figure(one, key), figure(many, key)
        ratio = round(b / a, 2) if a and b is not None else None
        rows[key] = {"one": a, "many": b, "ratio": ratio}
    return rows


def print_comparison(rows: dict[str, Any], replicas: int) -> None:
    print()
    print(f"Scale-out, same run: 1 worker per stage against {replicas} per stage")
    print(f"  {'':34} {'1/stage':>10} {f'{replicas}/stage':>10} {'ratio':>7}")
    for key, title in FIGURES:
        row = rows[key]
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        print(f"  {title:34} {_shown(row['one']):>10} {_shown(row['many']):>10} {ratio:>7}")


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--replicas", type=int, default=2, help="workers per stage, against one per stage"
    )
    parser.add_argument("--rate", type=float, default=300.0, help="offered events/s (latency)")
    parser.add_argument("--seconds", type=float, default=10.0, help="offering time (latency)")
    parser.add_argument("--warmup-pairs", type=int, default=30, help="unmeasured pairs first")
    parser.add_argument(
        "--burst-pairs", type=int, default=1000, help="pairs published at once (throughput)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=90.0, help="how long to wait for the last alerts"
    )
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--keep-state", action="store_true", help="keep temp dirs and logs")
    args = parser.parse_args(argv)
    if args.replicas < 2 or args.rate <= 0 or args.seconds <= 0 or args.burst_pairs < 1:
        parser.error("--replicas at least 2; --rate, --seconds and --burst-pairs positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_benchmark(run, args)
    if isinstance(results, int):
        return results
    write_json(args.out, results)
    missing = sum(c.get("missing", 0) for c in results["configurations"].values())
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
