"""Micro-benchmark of HL7 v2 ingestion's pure core (issue 17): ingest_hl7v2 per message on
part 3's HL7 v2 mix (pipeline.py: ADT^A01 and ORU^R01 in turn), the current code against the
same modules as they were at a git revision (`--previous`, HEAD by default), in one process
and one run, in alternating chunks so that both see the same machine. Prints µs per message
of each kind and of the mix, and the ratio; checks that both give the same outcome (records,
payload and all, or rejection) for every message. No broker, no Avro, no PostgreSQL: the
stage's other costs are not here (docs/benchmarks.md).

    .venv/bin/python benchmarks/hl7_ingestion.py [--events 2000] [--rounds 5] [--previous REV]

The previous modules (the ER7 reader and ingestion's hl7v2, common, record_time, subjects) are
read with `git show REV:path` into a temporary package, their imports of each other pointed
at it; the rest of concord (models, codes, deadletters) is today's.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from benchlib.raw_formats import hl7_events

from concord.events.raw import RawEvent
from concord.ingestion import hl7v2

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("ADT^A01", "ORU^R01")
# module in the temporary package -> its path in the repository, and the imports pointed at it.
PREVIOUS_MODULES = {
    "er7": "services/concord/hl7v2/er7.py",
    "common": "services/concord/ingestion/common.py",
    "record_time": "services/concord/ingestion/record_time.py",
    "subjects": "services/concord/ingestion/subjects.py",
    "hl7v2": "services/concord/ingestion/hl7v2.py",
}
PACKAGE = "hl7_previous"
IMPORTS = {
    "from concord.hl7v2 import er7": f"from {PACKAGE} import er7",
    "from concord.ingestion.common import": f"from {PACKAGE}.common import",
    "from concord.ingestion.record_time import": f"from {PACKAGE}.record_time import",
    "from concord.ingestion.subjects import": f"from {PACKAGE}.subjects import",
}
Ingest = Callable[..., Any]


def _previous(revision: str, into: Path) -> tuple[ModuleType, bool]:
    """The hl7v2 module as it was at `revision`, and whether any of its modules differ from
    the working tree's."""
    package = into / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    changed = False
    for name, path in PREVIOUS_MODULES.items():
        text = subprocess.run(
            [shutil.which("git") or "git", "show", f"{revision}:{path}"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        changed |= text != (ROOT / path).read_text()
        for old, new in IMPORTS.items():
            text = text.replace(old, new)
        (package / f"{name}.py").write_text(text)
    sys.path.insert(0, str(into))
    return importlib.import_module(f"{PACKAGE}.hl7v2"), changed


def _events(count: int) -> list[RawEvent]:
    values, _ = hl7_events("hb", count)
    received = datetime.now(UTC)
    return [
        RawEvent(
            topic="ehr.raw.hl7v2",
            partition=0,
            offset=i,
            key=b"k",
            value=value,
            headers=(("source", b"bench-hl7-feed"),),
            received_time=received,
        )
        for i, value in enumerate(values)
    ]


def _outcome(outcome: object) -> str:
    if isinstance(outcome, list):
        return repr([(repr(record), record.model_dump_json()) for record in outcome])
    return repr(outcome)


def _round(
    events: list[RawEvent], paths: dict[str, tuple[Ingest, Any]], chunk: int = 50
) -> dict[str, list[float]]:
    """µs per message of each kind, per path; the paths take turns chunk by chunk, the one
    going first alternating."""
    totals = {name: [0.0] * len(KINDS) for name in paths}
    names = list(paths)
    for start in range(0, len(events), chunk):
        part = events[start : start + chunk]
        order = names if (start // chunk) % 2 == 0 else names[::-1]
        for name in order:
            ingest, zone_of = paths[name]
            for offset, event in enumerate(part, start=start):
                begin = time.perf_counter()
                ingest(event, max_payload_bytes=1_000_000, zone_of=zone_of)
                totals[name][offset % 2] += time.perf_counter() - begin
    per_kind = len(events) / 2
    return {name: [total / per_kind * 1e6 for total in kinds] for name, kinds in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="messages per round (mix of 2)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is printed")
    parser.add_argument("--previous", default="HEAD", help="git revision to compare with")
    args = parser.parse_args()
    events = _events(args.events - args.events % 2)
    with tempfile.TemporaryDirectory(prefix="hl7-previous-") as tmp:
        previous, changed = _previous(args.previous, Path(tmp))
        paths: dict[str, tuple[Ingest, Any]] = {
            "previous": (previous.ingest_hl7v2, previous.zones_from({}, "America/New_York")),
            "current": (hl7v2.ingest_hl7v2, hl7v2.zones_from({}, "America/New_York")),
        }
        differ = 0
        for event in events:
            outcomes = {
                _outcome(ingest(event, max_payload_bytes=1_000_000, zone_of=zone_of))
                for ingest, zone_of in paths.values()
            }
            differ += len(outcomes) > 1
        _round(events[:200], paths)  # warm-up
        gc.collect()
        runs = [_round(events, paths) for _ in range(args.rounds)]
    print(
        f"ingest_hl7v2 on {len(events)} messages of the HL7 v2 mix, median of {args.rounds} "
        f"rounds; previous = {args.previous}" + ("" if changed else " (same code as today's)")
    )
    print(f"outcomes: {len(events) - differ} identical, {differ} different")
    print(f"{'message':<12}{'previous':>12}{'current':>12}{'speed-up':>10}")
    for position, kind in enumerate(KINDS):
        old = statistics.median(run["previous"][position] for run in runs)
        new = statistics.median(run["current"][position] for run in runs)
        print(f"{kind:<12}{old:>9.1f} µs{new:>9.1f} µs{old / new:>9.2f}x")
    old_mean = statistics.median(sum(run["previous"]) / 2 for run in runs)
    new_mean = statistics.median(sum(run["current"]) / 2 for run in runs)
    print(f"{'mix (mean)':<12}{old_mean:>9.1f} µs{new_mean:>9.1f} µs{old_mean / new_mean:>9.2f}x")
    print(f"current / previous time per message: {new_mean / old_mean:.2f}")
    if differ:
        raise SystemExit(f"{differ} messages ingested differently by the two versions")


if __name__ == "__main__":
    main()
