"""`concord publish` on a FHIR Bulk Data export of 200,000 resources, against the real broker.

The export is written here (Patients, Observations and Conditions, a few hundred bytes each,
several files per type, named `Type.NNN.ndjson` so that Patient files sort last by name), and
published by the CLI in a subprocess, once from the folder and once from its manifest with
gzipped files. The subprocess's peak RSS (wait4) must stay under 200 MB: the export is
streamed, not read into memory. Every record is accounted for: the summary's counts are what
was written, and consuming the topic finds each one, every Patient ahead of the resources
that point to it in its partition.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from concord.runtime.reading import read_topic
from concord.stack.broker import BrokerInfo, ensure_topics
from concord.topics import PARTITIONS, TopicSpec

pytestmark = pytest.mark.integration

PATIENTS = 20_000
OBSERVATIONS_EACH = 6
CONDITIONS_EACH = 3
PER_FILE = 50_000
MAX_RSS_BYTES = 200 * 1024 * 1024
# Besides the resources: published as they are (ingestion dead-letters the malformed one).
MALFORMED = b'{"resourceType": "Observation", "id": "broken"'
BLANK_LINES = 3


@dataclass(frozen=True)
class Export:
    folder: Path
    written: Counter[str]  # resources per type


def _patient(i: int) -> dict[str, object]:
    return {
        "resourceType": "Patient",
        "id": f"p{i}",
        "identifier": [{"system": "urn:concord:mrn:bulk-test", "value": f"MRN{i:07d}"}],
        "name": [{"family": f"Family{i}", "given": ["Alex"]}],
        "gender": "female" if i % 2 else "male",
        "birthDate": f"19{40 + i % 60:02d}-0{1 + i % 9}-1{i % 10}",
    }


def _observation(i: int, j: int) -> dict[str, object]:
    return {
        "resourceType": "Observation",
        "id": f"o{i}-{j}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": f"Patient/p{i}"},
        "effectiveDateTime": f"2025-0{1 + j}-01T08:00:00+00:00",
        "valueQuantity": {"value": 4 + (i * j) % 30 / 10, "unit": "mmol/L"},
    }


def _condition(i: int, j: int) -> dict[str, object]:
    return {
        "resourceType": "Condition",
        "id": f"c{i}-{j}",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
        "subject": {"reference": f"Patient/p{i}"},
        "onsetDateTime": "2020-05-01T00:00:00+00:00",
    }


def write_export(folder: Path, *, compress: bool) -> Export:
    """Type.NNN.ndjson(.gz) files of PER_FILE lines, an error file, and the manifest."""
    folder.mkdir()
    written: Counter[str] = Counter()
    outputs: list[dict[str, object]] = []
    resources = {
        "Condition": (_condition(i, j) for i in range(PATIENTS) for j in range(CONDITIONS_EACH)),
        "Observation": (
            _observation(i, j) for i in range(PATIENTS) for j in range(OBSERVATIONS_EACH)
        ),
        "Patient": (_patient(i) for i in range(PATIENTS)),
    }
    for resource_type, documents in resources.items():
        lines = [orjson.dumps(document) for document in documents]
        written[resource_type] = len(lines)
        for number, start in enumerate(range(0, len(lines), PER_FILE)):
            chunk = lines[start : start + PER_FILE]
            outputs.append({"type": resource_type, "url": "", "count": len(chunk)})
            if resource_type == "Observation" and number == 0:
                chunk = [chunk[0], b"", MALFORMED, *chunk[1:], b" ", b""]
            name = f"{resource_type}.{number:03d}.ndjson" + (".gz" if compress else "")
            outputs[-1]["url"] = name
            data = b"\n".join(chunk) + b"\n"
            (folder / name).write_bytes(gzip.compress(data, compresslevel=1) if compress else data)
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
    (folder / "OperationOutcome.000.ndjson").write_bytes(orjson.dumps(outcome) + b"\n")
    manifest = {
        "transactionTime": "2026-03-01T00:00:00Z",
        "request": "https://ehr.example/fhir/$export",
        "requiresAccessToken": True,
        "output": outputs,
        "error": [{"type": "OperationOutcome", "url": "OperationOutcome.000.ndjson"}],
    }
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))
    return Export(folder, written)


@dataclass(frozen=True)
class Run:
    returncode: int
    stderr: str
    peak_rss: int  # bytes
    seconds: float


# Runs the command and prints its peak RSS in kB. The command's own rusage would not do:
# a child forked from this test process counts this process's resident pages until its exec.
MEASURED = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


def run_publish(bootstrap: str, state_dir: Path, *args: str) -> Run:
    """`concord publish ARGS` in a subprocess, and its peak RSS."""
    log = state_dir / f"publish-{uuid.uuid4().hex[:6]}.log"
    env = {**os.environ, "CONCORD_BOOTSTRAP_SERVERS": bootstrap}
    command = [sys.executable, "-c", "from concord.cli import main; main()", "publish", *args]
    started = time.monotonic()
    with log.open("wb") as stderr:
        done = subprocess.run(
            [sys.executable, "-c", MEASURED, *command],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            timeout=300,
            check=False,
        )
    seconds = time.monotonic() - started
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    peak = int(done.stdout) * (1 if sys.platform == "darwin" else 1024)
    return Run(done.returncode, log.read_text(), peak, seconds)


def summary_counts(stderr: str) -> tuple[int, dict[str, int], dict[str, int]]:
    """Published, then counts per resource type and per outcome, from the summary."""
    first = re.search(r"^published (\d+) events from", stderr, re.MULTILINE)
    assert first, stderr
    published = int(first[1])
    section = ""
    tables: dict[str, dict[str, int]] = {"by resource type:": {}, "by outcome:": {}}
    for line in stderr.splitlines():
        if line in tables:
            section = line
        elif section and (row := re.match(r"^\s+(\S.*?)\s+(\d+)$", line)):
            tables[section][row[1].strip()] = int(row[2])
        else:
            section = ""
    return published, tables["by resource type:"], tables["by outcome:"]


def check_topic(bootstrap: str, topic: str, export: Export) -> None:
    """Each resource once, the malformed line too, every Patient before what points to it."""
    records = asyncio.run(read_topic(bootstrap, topic, idle_seconds=3.0))
    kinds: Counter[str] = Counter()
    seen: set[tuple[int, bytes]] = set()
    late = 0
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert dict(record.headers) == {"source": b"bulk-hospital"}
        if record.value == MALFORMED:
            kinds["malformed"] += 1
            continue
        kind = orjson.loads(record.value)["resourceType"]
        kinds[kind] += 1
        if kind == "Patient":
            seen.add((record.partition, record.key))
        elif (record.partition, record.key) not in seen:
            late += 1
    assert kinds == {**export.written, "malformed": 1}
    assert late == 0


def single_gzip_file(export: Export) -> Path:
    """The export's resources as one export.ndjson.gz, Patients first, as a hospital might
    hand over a single file (the error file left out)."""
    files = sorted(
        export.folder.glob("*.ndjson"), key=lambda f: (f.name.split(".")[0] != "Patient", f.name)
    )
    target = export.folder.parent / "export.ndjson.gz"
    with gzip.open(target, "wb", compresslevel=1) as out:
        for file in files:
            if not file.name.startswith("OperationOutcome"):
                out.write(file.read_bytes())
    return target


def _check_summary(run: Run, export: Export, topic: str, bootstrap: str) -> None:
    assert run.returncode == 0, run.stderr
    total = sum(export.written.values())
    published, by_type, by_outcome = summary_counts(run.stderr)
    assert published == total + 1
    assert by_type == {**export.written, "(not a resource)": 1}
    assert by_outcome == {
        "published": total + 1,
        "of which not a resource (ingestion dead-letters them)": 1,
        "skipped: blank lines": BLANK_LINES,
    }
    check_topic(bootstrap, topic, export)


def _new_topic(bootstrap: str) -> str:
    topic = f"test.bulk.{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS, "bulk publish test")]))
    return topic


@pytest.mark.parametrize("form", ["folder", "gzip manifest", "one .ndjson.gz"])
def test_a_bulk_export_of_200k_resources_is_streamed_patients_first_and_counted(
    broker: BrokerInfo, tmp_path: Path, form: str
) -> None:
    export = write_export(tmp_path / "export", compress=form == "gzip manifest")
    assert sum(export.written.values()) >= 200_000
    targets = {
        "folder": export.folder,
        "gzip manifest": export.folder / "manifest.json",
        "one .ndjson.gz": single_gzip_file(export),
    }
    target = targets[form]
    topic = _new_topic(broker.bootstrap_servers)

    run = run_publish(
        broker.bootstrap_servers,
        tmp_path,
        "--source",
        "bulk-hospital",
        "--topic",
        topic,
        "--state-dir",
        str(tmp_path),
        str(target),
    )

    rate = (sum(export.written.values()) + 1) / run.seconds
    print(
        f"\n{form}: peak RSS {run.peak_rss / 2**20:.1f} MB, {run.seconds:.1f} s "
        f"({rate:,.0f} events/s, process start included)\n{run.stderr}"
    )
    _check_summary(run, export, topic, broker.bootstrap_servers)
    if form != "one .ndjson.gz":  # an export's error file is listed, not published
        assert "OperationOutcome" in run.stderr.split("not published:", 1)[1]
    if form == "gzip manifest":  # the manifest counts resources; the malformed line is one more
        differs = "Observation.000.ndjson.gz: the manifest says 50000, the file held 50001"
        assert f"manifest count differs: {differs}" in run.stderr
    assert run.peak_rss < MAX_RSS_BYTES
