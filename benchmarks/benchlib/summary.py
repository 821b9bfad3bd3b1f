"""The one table `make bench` ends with: each figure issue 17 sets a target for, measured in
this run, beside its target. Targets are reported here, never asserted: a figure from a shared
two-core machine says where the pipeline stands, not whether a build may land."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

STATE_TARGET_BYTES = 2048
P99_TARGET_MS = 500.0


@dataclass(frozen=True)
class Target:
    what: str
    measured: str  # the figure in its own unit, e.g. "2,435 records/s"
    against: str  # what the ratio is of, or the conditions of an absolute figure
    ratio: float | None  # None for an absolute figure, or when not measured
    target: str
    met: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return "n/a" if self.met is None else ("yes" if self.met else "no")


def targets(results: dict[str, Any]) -> list[Target]:
    """The table's rows from a pipeline.py results dict; a part not run gives 'n/a' rows."""
    rows: list[Target] = []
    rows += _ingestion_rows(results.get("ingestion_formats"))
    rows += _stage_rows(results.get("throughput"), results.get("population"))
    rows += _narrative_rows(results.get("narrative"))
    rows += _state_rows(results)
    rows += _end_to_end_rows(results)
    return rows


def _ingestion_rows(formats: dict[str, Any] | None) -> list[Target]:
    rows = []
    by_name = {f["name"]: f for f in (formats or {}).get("formats", [])}
    for name in ("FHIR R4", "HL7 v2"):
        row = by_name.get(name)
        ratio = row["ratio_to_pass_through"] if row else None
        rows.append(
            Target(
                what=f"{name} ingestion (part 3)",
                measured=f"{row['records_per_s']:,.0f} events/s" if row else "not run",
                against=f"pass-through {row['pass_through']['records_per_s']:,.0f}/s"
                if row
                else "",
                ratio=ratio,
                target=">= 0.35x",
                met=None if ratio is None else ratio >= 0.35,
            )
        )
    return rows


def _stage_rows(
    throughput: dict[str, Any] | None, population: dict[str, Any] | None
) -> list[Target]:
    stages = {s["name"]: s for s in (throughput or {}).get("stages", [])}
    base = (throughput or {}).get("baseline", {}).get("records_per_s")
    against = f"raw loop {base:,.0f}/s" if base else ""
    rows = []
    if population and base:
        ratio = population["records_per_second"] / base
        rows.append(
            Target(
                "normalization, generated population (part 4)",
                f"{population['records_per_second']:,} records/s",
                against,
                ratio,
                ">= 0.40x",
                ratio >= 0.40,
            )
        )
    else:
        rows.append(
            Target(
                "normalization, generated population (part 4)",
                "not run",
                "",
                None,
                ">= 0.40x",
                None,
            )
        )
    if "normalization" in stages:
        s = stages["normalization"]
        rows.append(
            Target(
                "normalization, one family name for all (part 1)",
                f"{s['records_per_s']:,.0f} records/s",
                against,
                s["ratio_to_baseline"],
                "(no target)",
                None,
            )
        )
    for name, unit, target in (("conflicts", "facts/s", 0.70), ("alerting", "records/s", 0.70)):
        s = stages.get(name)
        ratio = s["ratio_to_baseline"] if s else None
        rows.append(
            Target(
                f"{name} (part 1)",
                f"{s['records_per_s']:,.0f} {unit}" if s else "not run",
                against if s else "",
                ratio,
                f">= {target:.2f}x",
                None if ratio is None else ratio >= target,
            )
        )
    return rows


def _narrative_rows(narrative: dict[str, Any] | None) -> list[Target]:
    """Issue 18: text documents/s on one narrative worker, against the raw loop over the same
    concord.documents, with normalization's structured records/s of the same run beside it."""
    what = "narrative documents, issue 18 (part 5)"
    if not narrative:
        return [Target(what, "not run", "", None, "(reported)", None)]
    text, norm = narrative["narrative"], narrative["normalization"]
    return [
        Target(
            what,
            f"{text['records_per_s']:,.1f} documents/s",
            f"raw loop {narrative['baseline']['records_per_s']:,.0f}/s; normalization "
            f"{norm['records_per_s']:,.0f} records/s, same run",
            text["ratio_to_baseline"],
            "(reported)",
            None,
        )
    ]


def _state_rows(results: dict[str, Any]) -> list[Target]:
    sized = (results.get("state_size") or {}).get("state")
    if sized:
        per = sized["bytes_per_patient"]
        what = f"conflicts state at {sized['patients']:,} patients (state_size)"
    else:
        state = (results.get("throughput") or {}).get("conflicts_state") or {}
        per = state.get("bytes_per_patient")
        what = (
            f"conflicts state at {state['patients']:,} patients (part 1)"
            if state.get("patients")
            else "conflicts state per patient"
        )
    return [
        Target(
            what,
            f"{per:,} bytes/patient" if per else "not run",
            "tables and indexes, after VACUUM ANALYZE",
            None,
            f"<= {STATE_TARGET_BYTES:,} B",
            None if not per else per <= STATE_TARGET_BYTES,
        )
    ]


def _end_to_end_rows(results: dict[str, Any]) -> list[Target]:
    lat = results.get("latency") or {}
    p99 = lat.get("p99_ms")
    offered = f"{lat['offered_rate']:,.0f}/s for {lat['seconds']:.0f}s" if p99 is not None else ""
    rows = [
        Target(
            "event to alert p99 (part 2)",
            f"{p99:,.0f} ms" if p99 is not None else "not run",
            offered,
            None,
            f"< {P99_TARGET_MS:.0f} ms at 1,000/s, 300 s",
            None if p99 is None else p99 < P99_TARGET_MS,
        )
    ]
    lag = (lat.get("lag") or {}).get("lag_grows")
    rows.append(
        Target(
            "lag during the offer (part 2)",
            "not measured" if lag is None else ("growing" if lag else "steady"),
            offered,
            None,
            "no growing lag",
            None if lag is None else not lag,
        )
    )
    top = results.get("max_rate") or {}
    ratio = top.get("ratio")
    stack, passed = top.get("stack") or {}, top.get("pass_through") or {}
    rows.append(
        Target(
            "sustained end-to-end rate (--max-rate)",
            f"{stack['sustained_rate']:,.0f} events/s" if ratio is not None else "not run",
            f"four-hop pass-through {passed['sustained_rate']:,.0f}/s ({top['ratio_is']})"
            if ratio is not None
            else "",
            ratio,
            "(reported)",
            None,
        )
    )
    return rows


def print_targets(rows: list[Target]) -> None:
    print("\nIssue 17's targets, this run (reported, not asserted):")
    header = f"{'figure':<52}{'measured':>22}  {'ratio':>7}  {'target':<34}{'met':>4}  against"
    print(header)
    for r in rows:
        # A ratio far below 1 (text against the raw loop) keeps a third digit.
        shown = "" if r.ratio is None else f"{r.ratio:.{2 if r.ratio >= 0.1 else 3}f}x"
        print(
            f"{r.what:<52}{r.measured:>22}  {shown:>7}  {r.target:<34}{r.verdict:>4}  {r.against}"
        )


def as_json(rows: list[Target]) -> list[dict[str, Any]]:
    return [{**asdict(r), "verdict": r.verdict} for r in rows]
