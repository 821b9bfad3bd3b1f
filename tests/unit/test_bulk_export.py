"""FHIR Bulk Data exports for `concord publish`, without a broker: which files and in which
order (bulk_export), the summary and the progress line, and sending with a stand-in producer
(publisher). The 200,000-resource export against the real broker is
tests/integration/test_bulk_publish.py."""

from __future__ import annotations

import asyncio
import gzip
import io
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from click.testing import CliRunner

from concord import publisher
from concord.bulk_export import ExportError, InputFile, plan, type_from_name
from concord.cli import main
from concord.publisher import ProgressLine, PublishSummary, publish_inputs
from concord.publishing import CLAIM_LINE, RawMessage


def _ndjson(path: Path, *documents: dict[str, Any]) -> Path:
    data = b"".join(orjson.dumps(document) + b"\n" for document in documents)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _observation(oid: str, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "subject": {"reference": f"Patient/{patient}"},
    }


def _export(folder: Path) -> Path:
    folder.mkdir()
    _ndjson(folder / "Condition.000.ndjson", {"resourceType": "Condition", "id": "c1"})
    _ndjson(folder / "Observation.10.ndjson", _observation("o10", "p1"))
    _ndjson(folder / "Observation.2.ndjson.gz", _observation("o2", "p1"))
    _ndjson(folder / "Patient.000.ndjson", {"resourceType": "Patient", "id": "p1"})
    _ndjson(folder / "OperationOutcome.000.ndjson", {"resourceType": "OperationOutcome"})
    (folder / "notes.txt").write_text("exported by hand")
    return folder


def _manifest(folder: Path, output: list[dict[str, Any]], **more: Any) -> Path:
    manifest = {
        "transactionTime": "2026-03-01T00:00:00Z",
        "request": "https://ehr.example/fhir/Patient/$export",
        "requiresAccessToken": True,
        "output": output,
        "error": [],
        **more,
    }
    path = folder / "manifest.json"
    path.write_bytes(orjson.dumps(manifest))
    return path


def test_a_folder_gives_its_ndjson_files_patients_first_then_by_name(tmp_path: Path) -> None:
    folder = _export(tmp_path / "export")
    inputs = plan([folder])
    assert [(f.path.name, f.resource_type) for f in inputs.files] == [
        ("Patient.000.ndjson", "Patient"),
        ("Condition.000.ndjson", "Condition"),
        ("Observation.2.ndjson.gz", "Observation"),  # 2 before 10
        ("Observation.10.ndjson", "Observation"),
    ]
    # The export's error file and anything that is not NDJSON are said, not published.
    assert len(inputs.not_published) == 2
    assert "OperationOutcome.000.ndjson" in inputs.not_published[0]
    assert "notes.txt" in inputs.not_published[1]


def test_a_manifest_gives_its_outputs_in_its_order_patients_first(tmp_path: Path) -> None:
    folder = _export(tmp_path / "export")
    (tmp_path / "elsewhere").mkdir()
    absolute = _ndjson(tmp_path / "elsewhere" / "Encounter.ndjson", {"resourceType": "Encounter"})
    manifest = _manifest(
        folder,
        [
            {"type": "Observation", "url": "Observation.10.ndjson", "count": 1},
            {"type": "Encounter", "url": absolute.as_uri()},
            {"type": "Patient", "url": "file:Patient.000.ndjson", "count": 1},
            {"type": "Condition", "url": "./Condition.000.ndjson"},
        ],
        error=[{"type": "OperationOutcome", "url": "OperationOutcome.000.ndjson"}],
    )
    inputs = plan([manifest])
    assert inputs.files == [
        InputFile(folder / "Patient.000.ndjson", "Patient", 1),
        InputFile(folder / "Observation.10.ndjson", "Observation", 1),
        InputFile(absolute, "Encounter"),
        InputFile(folder / "Condition.000.ndjson", "Condition"),
    ]
    assert inputs.not_published == [f"{manifest}: the error files (OperationOutcome) it lists: 1"]


def test_patient_files_go_first_across_the_paths_given(tmp_path: Path) -> None:
    observations = _ndjson(tmp_path / "Observation.ndjson", _observation("o", "p"))
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(orjson.dumps({"resourceType": "Bundle", "entry": []}))
    patients = _ndjson(tmp_path / "Patient.ndjson.gz", {"resourceType": "Patient", "id": "p"})
    assert [f.path for f in plan([observations, bundle, patients]).files] == [
        patients,
        observations,
        bundle,
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Patient.000.ndjson", "Patient"),
        ("MedicationRequest.ndjson.gz", "MedicationRequest"),
        ("Observation.1.JSONL", "Observation"),
        ("patients.ndjson", None),
        ("Patient.json", None),
    ],
)
def test_the_type_a_file_name_says(name: str, expected: str | None) -> None:
    assert type_from_name(name) == expected


def test_a_manifest_pointing_at_the_server_says_to_download_the_files_first(
    tmp_path: Path,
) -> None:
    url = "https://ehr.example/bulk/5b1f/Patient.000.ndjson"
    manifest = _manifest(tmp_path, [{"type": "Patient", "url": url}])
    with pytest.raises(ExportError, match="Download the export's files first"):
        plan([manifest])


def test_a_manifest_naming_a_missing_file_or_no_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"Patient\.000\.ndjson, which is not a file"):
        plan([_manifest(tmp_path, [{"type": "Patient", "url": "Patient.000.ndjson"}])])
    with pytest.raises(ExportError, match="output entry 1 has no url"):
        plan([_manifest(tmp_path, [{"type": "Patient"}])])


def test_a_folder_without_ndjson_is_refused(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(ExportError, match=r"no \.ndjson"):
        plan([tmp_path])


def test_a_json_file_that_is_not_a_manifest_is_published_as_it_is(tmp_path: Path) -> None:
    resource = tmp_path / "patient.json"
    resource.write_bytes(orjson.dumps({"resourceType": "Patient", "id": "p", "output": []}))
    assert plan([resource]).files == [InputFile(resource)]


def test_the_cli_refuses_a_server_manifest_before_connecting_to_the_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONCORD_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # nothing listens there
    manifest = _manifest(tmp_path, [{"type": "Patient", "url": "http://ehr.example/p.ndjson"}])
    result = CliRunner().invoke(
        main, ["publish", "--source", "s", "--state-dir", str(tmp_path), str(manifest)]
    )
    assert result.exit_code == 2
    assert "Download the export's files first" in result.output
    assert "cannot reach" not in result.output


# --- the summary and the progress line ---------------------------------------------------------


def test_the_summary_counts_per_resource_type_and_per_outcome(tmp_path: Path) -> None:
    summary = PublishSummary("ehr")
    for kind in ("Patient", "Observation", "Observation", None, "Condition"):
        summary.add(RawMessage(b"{}", None, kind=kind), "Observation" if kind else None)
    summary.add(RawMessage(b"{}", None, kind=CLAIM_LINE), "Claims")  # named like a type
    summary.blank_lines = 2
    summary.seconds = 2.0
    summary.count_differs.append("Observation.000.ndjson: the manifest says 3, the file held 4")
    summary.not_published.append("export: the export's error files (OperationOutcome): x")
    assert summary.lines() == [
        "published 6 events from ehr in 2.0 s (3 events/s), every one acknowledged by the broker",
        "by resource type:",
        "  Patient                   1",
        "  Observation               2",
        "  (not a resource)          1",
        "  Condition                 1",
        "  claim line                1",
        "by outcome:",
        "  published                                                        6",
        "    of which not a resource (ingestion dead-letters them)          1",
        "    of which a resourceType other than their file's                2",
        "  skipped: blank lines                                             2",
        "manifest count differs: Observation.000.ndjson: the manifest says 3, the file held 4",
        "not published: export: the export's error files (OperationOutcome): x",
    ]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_on_a_terminal_the_progress_bar_is_redrawn_twice_a_second() -> None:
    stream, clock = io.StringIO(), _Clock()
    progress = ProgressLine(stream, 1000, tty=True, clock=clock)
    progress.update(10, 100, "Patient.000.ndjson")
    assert stream.getvalue() == ""  # not yet half a second
    clock.now += 0.5
    progress.update(20_000, 500, "Patient.000.ndjson")
    line = stream.getvalue()
    assert line.startswith("\r[" + "#" * 12 + "." * 12 + "]  50%  20,000 events  40,000/s")
    assert line.endswith("Patient.000.ndjson\033[K")
    clock.now += 0.1
    progress.update(30_000, 600, "Patient.000.ndjson")
    assert stream.getvalue() == line
    progress.close()
    assert stream.getvalue().endswith("\r\033[K")  # the summary takes its place


def test_elsewhere_progress_is_a_plain_line_every_ten_seconds() -> None:
    stream, clock = io.StringIO(), _Clock()
    progress = ProgressLine(stream, 0, tty=False, clock=clock)
    clock.now += 5
    progress.update(1, 0, "a.ndjson")
    clock.now += 5
    progress.update(100_000, 0, "a.ndjson")
    progress.close()
    assert stream.getvalue() == "publishing:   0%  100,000 events  10,000/s  a.ndjson\n"


# --- sending, with a stand-in for aiokafka's producer ------------------------------------------


class _Producer:
    """Acknowledges a send once the event loop runs; records what was sent, in order, and the
    most sends ever waiting for their acknowledgement."""

    instances: ClassVar[list[_Producer]] = []

    def __init__(self, **options: Any) -> None:
        self.sent: list[bytes] = []
        self.waiting: set[asyncio.Future[None]] = set()
        self.most_waiting = 0
        _Producer.instances.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[None]:
        self.sent.append(value)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.add(future)
        self.most_waiting = max(self.most_waiting, len(self.waiting))
        asyncio.get_running_loop().call_soon(self._ack, future)
        return future

    def _ack(self, future: asyncio.Future[None]) -> None:
        self.waiting.discard(future)
        future.set_result(None)


def test_sending_keeps_a_bounded_number_unacknowledged_and_counts_every_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher, "AIOKafkaProducer", _Producer)
    monkeypatch.setattr(publisher, "MAX_IN_FLIGHT", 8)
    _Producer.instances.clear()
    patients = [{"resourceType": "Patient", "id": f"p{i}"} for i in range(50)]
    observations = [_observation(f"o{i}", f"p{i}") for i in range(100)]
    folder = tmp_path / "export"
    folder.mkdir()
    _ndjson(folder / "Observation.000.ndjson.gz", *observations)
    _ndjson(folder / "Patient.000.ndjson", *patients)

    summary = asyncio.run(publish_inputs("127.0.0.1:1", "ehr", plan([folder]).files))

    [producer] = _Producer.instances
    assert producer.sent[:50] == [orjson.dumps(p) for p in patients]  # Patients first
    assert len(producer.sent) == summary.published == 150
    assert summary.by_type == {"Patient": 50, "Observation": 100}
    assert producer.most_waiting == 9  # MAX_IN_FLIGHT, and the one just sent


def test_an_unreadable_gzip_file_stops_the_publish_and_says_how_far_it_got(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher, "AIOKafkaProducer", _Producer)
    good = _ndjson(tmp_path / "Patient.ndjson", {"resourceType": "Patient", "id": "p"})
    broken = tmp_path / "Observation.ndjson.gz"
    broken.write_bytes(gzip.compress(b'{"resourceType": "Observation"}\n' * 100)[:-20])
    with pytest.raises(
        ValueError, match=r"Observation\.ndjson\.gz: .* \(\d+ events sent before it\)"
    ):
        asyncio.run(publish_inputs("127.0.0.1:1", "ehr", plan([broken, good]).files))
