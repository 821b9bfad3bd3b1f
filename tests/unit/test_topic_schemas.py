"""One self-contained schema file per Avro topic (schemas/topics/<topic>.avsc) is all a consumer
outside Concord loads: it is what the codec generates from schemas/ (so the two cannot drift),
it parses alone, and its fingerprint is the one Concord writes on the wire (docs/consumers.md).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, load_schema, parse_schema, to_parsing_canonical_form
from fastavro.utils import generate_many

from builders import listify
from concord.events import codec
from concord.events.codec import ALL_CODECS, TOPIC_CODECS, topic_schema_path
from concord.topics import (
    ALERTS,
    ALL_TOPICS,
    CONFLICTS,
    DEADLETTER,
    DOCUMENTS,
    FACTS,
    INGESTED,
    RESOLUTIONS,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = codec.schema_dir()
TOPICS = sorted(TOPIC_CODECS)


def _fingerprint(parsed: Any) -> bytes:
    """What another consumer computes: CRC-64-AVRO of the canonical form, as the header's bytes."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def _alone(topic: str, tmp_path: Path) -> Path:
    """The topic's file in a directory of its own: nothing else to borrow types from."""
    copy = tmp_path / f"{topic}.avsc"
    shutil.copy(topic_schema_path(topic), copy)
    return copy


def _records(c: codec.EventCodec[Any], n: int) -> list[dict[str, Any]]:
    """Generated records as a reader returns them (timestamps as aware datetimes)."""
    out = []
    for record in generate_many(c.schema, n):
        buf = io.BytesIO()
        schemaless_writer(buf, c.schema, record)
        out.append(schemaless_reader(io.BytesIO(buf.getvalue()), c.schema))
    return out


def test_each_avro_topic_carries_one_event_and_each_event_has_a_topic() -> None:
    assert set(TOPIC_CODECS) == {
        INGESTED, FACTS, DOCUMENTS, CONFLICTS, RESOLUTIONS, ALERTS, DEADLETTER
    }  # fmt: skip
    assert set(TOPIC_CODECS) <= {spec.name for spec in ALL_TOPICS}
    assert sorted(c.name for c in TOPIC_CODECS.values()) == sorted(c.name for c in ALL_CODECS)


def test_schemas_topics_holds_exactly_one_file_per_avro_topic() -> None:
    files = {path.name for path in (SCHEMA_DIR / "topics").iterdir()}
    assert files == {f"{topic}.avsc" for topic in TOPIC_CODECS}


@pytest.mark.parametrize("topic", TOPICS)
def test_the_committed_file_is_what_the_codec_generates_from_schemas(topic: str) -> None:
    expected = codec.schema_text(codec.self_contained(TOPIC_CODECS[topic].name))
    assert topic_schema_path(topic).read_text() == expected, "run `python -m concord.events.codec`"


@pytest.mark.parametrize("topic", TOPICS)
def test_the_file_parses_alone_with_the_fingerprint_on_the_wire(topic: str, tmp_path: Path) -> None:
    c = TOPIC_CODECS[topic]
    path = _alone(topic, tmp_path)
    data = c.encode(c.model.model_validate(_records(c, 1)[0]))
    for parsed in (load_schema(str(path)), parse_schema(json.loads(path.read_text()))):
        assert _fingerprint(parsed) == c.fingerprint == data[2:10]


@pytest.mark.parametrize("topic", TOPICS)
def test_a_consumer_with_only_the_file_decodes_what_concord_writes(
    topic: str, tmp_path: Path
) -> None:
    c = TOPIC_CODECS[topic]
    schema = load_schema(str(_alone(topic, tmp_path)))
    for record in _records(c, 20):
        event = c.model.model_validate(record)
        data = c.encode(event)
        assert data[:10] == b"\xc3\x01" + _fingerprint(schema)
        body = io.BytesIO(data[10:])
        assert schemaless_reader(body, schema) == listify(event.model_dump())
        assert body.read() == b""


def test_the_old_way_of_loading_the_sources_gives_another_fingerprint() -> None:
    """Why the topic files exist: alert.avsc parsed after the files it borrows from (in the
    order that works) names the shared types instead of defining them."""
    named: dict[str, Any] = {}
    for name in ("provenance", "clinical_fact", "assertion", "conflict_event", "alert"):
        parsed = parse_schema(json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()), named)
    assert _fingerprint(parsed) != codec.ALERT.fingerprint


def test_writing_the_topic_schemas_rewrites_a_changed_one_once(tmp_path: Path) -> None:
    directory = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, directory)
    assert codec.write_topic_schemas(directory) == []
    alert = json.loads((directory / "alert.avsc").read_text())
    alert["fields"].append({"name": "added", "type": ["null", "string"], "default": None})
    (directory / "alert.avsc").write_text(json.dumps(alert))
    assert codec.write_topic_schemas(directory) == [topic_schema_path(ALERTS, directory)]
    assert codec.write_topic_schemas(directory) == []
    written = load_schema(str(topic_schema_path(ALERTS, directory)))
    assert _fingerprint(written) == codec.schema_fingerprint(
        codec.load_schema_file("alert", directory=directory)
    )
    assert _fingerprint(written) != codec.ALERT.fingerprint


def test_the_consumer_guide_names_each_topics_file() -> None:
    guide = (ROOT / "docs" / "consumers.md").read_text()
    for topic, c in TOPIC_CODECS.items():
        assert f"`schemas/topics/{topic}.avsc`" in guide, topic
        assert f"`{c.schema['name'].rsplit('.', 1)[-1]}`" in guide, topic
        assert f"`{c.name}`" in guide, c.name  # its history folder
