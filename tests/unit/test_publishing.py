"""Reading EHR files into raw messages: one resource, a Bundle, or NDJSON, gzipped or not."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from concord.publishing import CLAIM_LINE, HL7_MESSAGE, FileReader, RawMessage, read_file
from concord.topics import RAW_CLAIMS, RAW_FHIR, RAW_HL7V2


def _patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female"}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_single_resource_is_one_message_keyed_by_source_and_reference(tmp_path: Path) -> None:
    data = orjson.dumps(_patient("p1"), option=orjson.OPT_INDENT_2)
    messages = list(read_file(_write(tmp_path / "p.json", data), "ehr-alpha"))
    assert messages == [RawMessage(value=data, key=b"ehr-alpha/Patient/p1")]


def test_a_bundle_is_one_message_with_the_bytes_as_they_are(tmp_path: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "id": "b1",
        "type": "collection",
        "entry": [{"resource": _patient("a")}, {"resource": _patient("b")}],
    }
    data = orjson.dumps(bundle) + b"\n"
    [message] = read_file(_write(tmp_path / "bundle.json", data), "ehr-beta")
    assert message.value == data
    assert message.key == b"ehr-beta/Bundle/b1"


def test_a_resource_without_an_id_has_no_key(tmp_path: Path) -> None:
    data = orjson.dumps({"resourceType": "Bundle", "entry": []})
    [message] = read_file(_write(tmp_path / "bundle.json", data), "s")
    assert message == RawMessage(value=data, key=None)


def test_ndjson_is_one_message_per_line_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    lines = [orjson.dumps(_patient(pid)) for pid in ("a", "b", "c")]
    data = b"\n" + lines[0] + b"\n\n   \n" + lines[1] + b"\r\n" + lines[2] + b"\n\n"
    messages = list(read_file(_write(tmp_path / "feed.ndjson", data), "src"))
    assert [m.value for m in messages] == lines
    assert [m.key for m in messages] == [b"src/Patient/a", b"src/Patient/b", b"src/Patient/c"]


def test_jsonl_is_read_as_ndjson_too(tmp_path: Path) -> None:
    lines = [orjson.dumps(_patient(pid)) for pid in ("a", "b")]
    messages = list(read_file(_write(tmp_path / "FEED.JSONL", b"\n".join(lines)), "s"))
    assert [m.value for m in messages] == lines


def test_a_malformed_line_is_published_as_is_without_a_key(tmp_path: Path) -> None:
    good = orjson.dumps(_patient("a"))
    bad = b'{"resourceType": "Patient", "id": "x"'
    not_a_resource = b'["Patient", "y"]'
    data = b"\n".join([good, bad, not_a_resource])
    messages = list(read_file(_write(tmp_path / "feed.ndjson", data), "s"))
    assert messages == [
        RawMessage(value=good, key=b"s/Patient/a"),
        RawMessage(value=bad, key=None),
        RawMessage(value=not_a_resource, key=None),
    ]


def test_a_malformed_single_file_is_published_as_is(tmp_path: Path) -> None:
    data = b"this is not json\n{"
    [message] = read_file(_write(tmp_path / "broken.json", data), "s")
    assert message == RawMessage(value=data, key=None)


def test_an_empty_ndjson_file_gives_nothing(tmp_path: Path) -> None:
    assert list(read_file(_write(tmp_path / "empty.ndjson", b"\n \n"), "s")) == []


HL7_TWO = (
    b"\xef\xbb\xbfMSH|^~\\&|A|B|C|D|20240301||ADT^A04|1|P|2.5\r\nPID|1||M-7^^^GH^MR\r\n"
    b"MSH|^~\\&|A|B|C|D|20240301||ADT^A08|2|P|2.5\nEVN|A08\nPID|1||M-8^^^GH^MR\n"
)


def test_an_hl7_file_is_split_into_messages_for_the_hl7_topic(tmp_path: Path) -> None:
    read = list(read_file(_write(tmp_path / "feed.HL7", HL7_TWO), "lab"))
    assert [message.topic for message in read] == [RAW_HL7V2, RAW_HL7V2]
    first, second = read
    assert first.value == b"MSH|^~\\&|A|B|C|D|20240301||ADT^A04|1|P|2.5\rPID|1||M-7^^^GH^MR\r"
    assert second.value.count(b"\r") == 3 and b"\n" not in second.value
    # Keyed by source and patient, so one patient's messages stay in order.
    assert (first.key, second.key) == (b"lab/PID/M-7", b"lab/PID/M-8")


def test_an_hl7_file_with_text_before_its_first_msh_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="line 1"):
        list(read_file(_write(tmp_path / "x.hl7", b"hello\rMSH|^~\\&|A\r"), "lab"))


def test_claim_lines_go_to_the_claims_topic_and_fhir_to_the_fhir_topic(tmp_path: Path) -> None:
    lines = [
        orjson.dumps({"claim_id": "C-1", "line_number": 1}),
        orjson.dumps(_patient("p1")),
        b"not json",
    ]
    read = list(read_file(_write(tmp_path / "mixed.ndjson", b"\n".join(lines)), "payer"))
    assert [message.topic for message in read] == [RAW_CLAIMS, RAW_FHIR, RAW_FHIR]
    assert read[0].key == b"payer/ClaimLine/C-1/1"  # a line's versions stay in order


def test_fhir_resources_are_keyed_by_their_patient(tmp_path: Path) -> None:
    """A Patient and the results about it land in one partition, in file order."""
    lines = [
        {"resourceType": "Patient", "id": "p1"},
        {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"}},
        {"resourceType": "Encounter", "id": "e1"},
    ]
    path = tmp_path / "feed.ndjson"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines))
    keys = [message.key for message in read_file(path, "ehr")]
    assert keys == [b"ehr/Patient/p1", b"ehr/Patient/p1", b"ehr/Encounter/e1"]


def test_gzipped_ndjson_is_read_line_by_line_like_plain_ndjson(tmp_path: Path) -> None:
    lines = [orjson.dumps(_patient(pid)) for pid in ("a", "b")]
    data = lines[0] + b"\n\n" + lines[1] + b"\r\n"
    plain = list(read_file(_write(tmp_path / "Patient.000.ndjson", data), "s"))
    zipped = list(read_file(_write(tmp_path / "Patient.000.ndjson.gz", gzip.compress(data)), "s"))
    assert zipped == plain
    assert [m.value for m in zipped] == lines


def test_a_gzipped_bundle_or_hl7_file_is_read_by_its_inner_suffix(tmp_path: Path) -> None:
    bundle = orjson.dumps({"resourceType": "Bundle", "id": "b", "entry": []})
    [message] = read_file(_write(tmp_path / "b.json.gz", gzip.compress(bundle)), "s")
    assert (message.value, message.kind) == (bundle, "Bundle")
    read = list(read_file(_write(tmp_path / "feed.hl7.gz", gzip.compress(HL7_TWO)), "lab"))
    assert [(m.topic, m.kind) for m in read] == [(RAW_HL7V2, HL7_MESSAGE)] * 2


def test_the_reader_counts_blank_lines_and_says_how_far_it_has_read(tmp_path: Path) -> None:
    line = orjson.dumps(_patient("a"))
    path = _write(tmp_path / "feed.ndjson", (line + b"\n \n") * 50_000)
    reader = FileReader(path, "s")
    assert reader.position() == 0
    events = iter(reader)
    next(events)
    assert 0 < reader.position() < reader.size  # read as it goes, not all at once
    assert sum(1 for _ in events) == 49_999
    assert reader.position() == reader.size
    assert reader.blank_lines == 50_000


def test_each_message_says_what_it_is(tmp_path: Path) -> None:
    lines = [
        orjson.dumps(_patient("a")),
        orjson.dumps({"claim_id": "C-1", "line_number": 1}),
        b"not json",
        b'{"resourceType": 7}',
    ]
    read = list(read_file(_write(tmp_path / "mixed.ndjson", b"\n".join(lines)), "s"))
    assert [m.kind for m in read] == ["Patient", CLAIM_LINE, None, None]
