"""The narrative generator's documents and answer key: deterministic, in the concepts'
vocabulary, its hard cases present and recorded, and every rendering carrying the text whole."""

from __future__ import annotations

import base64
import html
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from concord.clinical_text import concepts
from concord.generate import narratives
from concord.generate.narratives import (
    NOTE,
    PATHOLOGY,
    TRAP_KINDS,
    NarrativeDocument,
    narrative_documents,
    to_fhir_diagnostic_report,
    to_fhir_document_reference,
    to_hl7_mdm,
    to_hl7_oru,
)
from concord.hl7v2 import er7

ORDINARY_TITLES = {title for title, *_ in narratives.ORDINARY}
SITE_KEYS = {concepts.METASTATIC_SITE_PREFIX + code for code in concepts.METASTATIC_SITES}
BIOMARKER_KEYS = {concepts.BIOMARKER_PREFIX + name for name in concepts.BIOMARKERS}
TNM = {
    concepts.TNM_T: {"T0", "Tis", "T1", "T2", "T3", "T4"},
    concepts.TNM_N: {"N0", "N1", "N2", "N3"},
    concepts.TNM_M: {"M0", "M1"},
}


@pytest.fixture(scope="module")
def docs() -> list[NarrativeDocument]:
    return narrative_documents(random.Random(7), 2000)


def _key(doc: NarrativeDocument) -> dict[str, str]:
    return {f.attribute: f.value for f in doc.expected}


def _ordinary(doc: NarrativeDocument) -> bool:
    return doc.kind == NOTE and doc.title in ORDINARY_TITLES


def test_the_same_seed_gives_the_same_documents_and_another_seed_others() -> None:
    first = narrative_documents(random.Random(11), 150)
    assert first == narrative_documents(random.Random(11), 150)
    assert [d.text for d in first] != [d.text for d in narrative_documents(random.Random(12), 150)]


def test_two_thousand_documents_generate_quickly() -> None:
    started = time.perf_counter()
    generated = narrative_documents(random.Random(3), 2000)
    assert len(generated) == 2000
    assert time.perf_counter() - started < 20
    assert len({d.document_id for d in generated}) == 2000


def test_the_mix_of_kinds(docs: list[NarrativeDocument]) -> None:
    kinds = Counter(d.kind for d in docs)
    assert set(kinds) == {PATHOLOGY, NOTE}
    assert 0.55 <= kinds[PATHOLOGY] / len(docs) <= 0.65
    assert sum(_ordinary(d) for d in docs) >= 0.10 * len(docs)
    assert all(
        d.written.tzinfo is not None and d.written.utcoffset() == UTC.utcoffset(None) for d in docs
    )
    assert len({d.text for d in docs}) > 0.95 * len(docs)  # varied, not a handful of templates


def _percent(value: str) -> bool:
    return value.isdigit() and 0 <= int(value) <= 100


RULES: dict[str, Callable[[str], bool]] = {
    concepts.PRIMARY_SITE: lambda v: re.fullmatch(r"C\d\d", v) is not None,
    concepts.HISTOLOGY: lambda v: re.fullmatch(r"\d{4}/3", v) is not None,
    concepts.STAGE_GROUP: lambda v: v in {"1", "2", "3", "4"},
    concepts.METASTATIC: lambda v: v in {"true", "false"},
    concepts.ER_PERCENT: _percent,
    concepts.PR_PERCENT: _percent,
    concepts.PDL1_TPS: _percent,
    concepts.PDL1_CPS: str.isdigit,
    concepts.HER2_IHC: lambda v: v in {"0", "1+", "2+", "3+"},
    concepts.HER2_FISH: lambda v: v in {"amplified", "not-amplified"},
    concepts.DISEASE_STATUS: lambda v: v in concepts.DISEASE_STATUSES,
    **{a: (lambda v, a=a: v in TNM[a]) for a in TNM},  # type: ignore[misc]
    **{a: (lambda v: v in {"true", "false"}) for a in SITE_KEYS},
    **{a: (lambda v: v in {"positive", "negative"}) for a in BIOMARKER_KEYS},
}


def _in_vocabulary(attribute: str, value: str) -> bool:
    rule = RULES.get(attribute)
    return rule is not None and rule(value)


def test_every_expected_fact_is_in_the_concepts_vocabulary(docs: list[NarrativeDocument]) -> None:
    for doc in docs:
        for fact in doc.expected:
            assert _in_vocabulary(fact.attribute, fact.value), (doc.document_id, fact)
        attributes = [f.attribute for f in doc.expected]
        assert len(attributes) == len(set(attributes)), doc.document_id  # one value each


def test_every_attribute_kind_is_exercised(docs: list[NarrativeDocument]) -> None:
    seen = Counter(f.attribute for d in docs for f in d.expected)
    wanted = {
        concepts.PRIMARY_SITE,
        concepts.HISTOLOGY,
        concepts.STAGE_GROUP,
        concepts.TNM_T,
        concepts.TNM_N,
        concepts.TNM_M,
        concepts.METASTATIC,
        concepts.DISEASE_STATUS,
        concepts.ER_PERCENT,
        concepts.PR_PERCENT,
        concepts.HER2_IHC,
        concepts.HER2_FISH,
        concepts.PDL1_TPS,
        concepts.PDL1_CPS,
        *BIOMARKER_KEYS,
        *SITE_KEYS,
    }
    assert {a for a in wanted if seen[a] < 5} == set()
    values = Counter((f.attribute, f.value) for d in docs for f in d.expected)
    for status in concepts.DISEASE_STATUSES:
        assert values[(concepts.DISEASE_STATUS, status)] >= 20
    for group in "1234":
        assert values[(concepts.STAGE_GROUP, group)] >= 20
    assert values[(concepts.METASTATIC, "false")] >= 50


def test_traps_are_in_the_text_of_a_known_kind_and_never_an_expected_fact(
    docs: list[NarrativeDocument],
) -> None:
    for doc in docs:
        key = _key(doc)
        for trap in doc.traps:
            assert trap.assertion in TRAP_KINDS
            assert trap.phrase and trap.phrase in doc.text, (doc.document_id, trap)
            assert key.get(trap.attribute) != trap.value, (doc.document_id, trap)


def test_each_kind_of_trap_is_planted_often(docs: list[NarrativeDocument]) -> None:
    kinds = Counter(t.assertion for d in docs for t in d.traps)
    assert {k: kinds[k] for k in TRAP_KINDS if kinds[k] < 150} == {}
    assert sum(bool(d.traps) for d in docs) >= 0.3 * len(docs)
    by_attribute = Counter((t.assertion, t.attribute) for d in docs for t in d.traps)
    assert by_attribute[("family", concepts.PRIMARY_SITE)] >= 100
    assert by_attribute[("historical", concepts.PRIMARY_SITE)] >= 100
    assert by_attribute[("historical", concepts.STAGE_GROUP)] >= 30
    assert by_attribute[("negated", concepts.METASTATIC)] >= 50
    assert by_attribute[("negated", concepts.PRIMARY_SITE)] >= 50
    assert by_attribute[("possible", concepts.BIOMARKER_PREFIX + "HER2")] >= 20
    assert by_attribute[("hypothetical", concepts.DISEASE_STATUS)] >= 50


def test_a_negated_mention_states_the_opposite(docs: list[NarrativeDocument]) -> None:
    negated_metastatic = 0
    for doc in docs:
        key = _key(doc)
        for trap in doc.traps:
            if trap.assertion != "negated":
                continue
            if trap.attribute == concepts.METASTATIC or trap.attribute in SITE_KEYS:
                assert key[trap.attribute] == "false", (doc.document_id, trap)
                negated_metastatic += trap.attribute == concepts.METASTATIC
            if "No evidence of metastatic disease" in doc.text:
                assert key[concepts.METASTATIC] == "false"
    assert negated_metastatic >= 50


def test_non_oncology_notes_have_an_empty_key_and_no_oncology_words(
    docs: list[NarrativeDocument],
) -> None:
    ordinary = [d for d in docs if _ordinary(d)]
    assert len(ordinary) >= 200
    for doc in ordinary:
        assert doc.expected == () and doc.traps == ()
        lowered = doc.text.lower()
        for word in ("cancer", "carcinoma", "metasta", "tumor"):
            assert word not in lowered, (doc.document_id, word)


def test_her2_follows_ihc_and_fish(docs: list[NarrativeDocument]) -> None:
    her2 = concepts.BIOMARKER_PREFIX + "HER2"
    equivocal = 0
    for doc in docs:
        key = _key(doc)
        ihc, fish = key.get(concepts.HER2_IHC), key.get(concepts.HER2_FISH)
        if fish is not None:
            assert key[her2] == ("positive" if fish == "amplified" else "negative")
        elif ihc == "2+":
            equivocal += 1
            assert her2 not in key, doc.document_id
            assert any(t.attribute == her2 and t.assertion == "possible" for t in doc.traps)
        elif ihc is not None:
            assert key[her2] == ("positive" if ihc == "3+" else "negative"), doc.document_id
    assert equivocal >= 10


def test_scores_and_percents_agree_with_status_and_text(docs: list[NarrativeDocument]) -> None:
    pdl1 = concepts.BIOMARKER_PREFIX + "PD-L1"
    negative_without_score = 0
    for doc in docs:
        key = _key(doc)
        for marker, percent in (("ER", concepts.ER_PERCENT), ("PR", concepts.PR_PERCENT)):
            if percent in key:
                assert f"{key[percent]}%" in doc.text
                status = "positive" if int(key[percent]) >= 1 else "negative"
                assert key[concepts.BIOMARKER_PREFIX + marker] == status
        if concepts.PDL1_TPS in key:
            assert f"{key[concepts.PDL1_TPS]}%" in doc.text
            assert key[pdl1] == ("positive" if int(key[concepts.PDL1_TPS]) >= 1 else "negative")
        if concepts.PDL1_CPS in key:
            assert key[pdl1] == "positive"
        if key.get(pdl1) == "negative" and concepts.PDL1_TPS not in key:
            assert "<1" in doc.text
            negative_without_score += 1
    assert negative_without_score >= 20


def test_metastatic_follows_sites_stage_iv_and_m1(docs: list[NarrativeDocument]) -> None:
    for doc in docs:
        key = _key(doc)
        affirmed = [a for a in SITE_KEYS if key.get(a) == "true"]
        if affirmed or key.get(concepts.STAGE_GROUP) == "4" or key.get(concepts.TNM_M) == "M1":
            assert key[concepts.METASTATIC] == "true", doc.document_id
        if key.get(concepts.TNM_M) == "M0":
            assert key[concepts.METASTATIC] == "false", doc.document_id
        if key.get(concepts.METASTATIC) == "false":
            assert not affirmed and key.get(concepts.STAGE_GROUP) != "4"


NAMES = {
    "ER": ("ER", "Estrogen receptor", "triple"),
    "PR": ("PR", "PgR", "Progesterone receptor", "triple"),
    "HER2": ("HER2", "triple"),
    "EGFR": ("EGFR",),
    "ALK": ("ALK",),
    "PD-L1": ("PD-L1",),
}


def test_every_marker_in_the_key_is_named_in_the_text(docs: list[NarrativeDocument]) -> None:
    for doc in docs:
        for fact in doc.expected:
            if fact.attribute in BIOMARKER_KEYS:
                name = fact.attribute.removeprefix(concepts.BIOMARKER_PREFIX)
                assert any(n in doc.text for n in NAMES[name]), (doc.document_id, name)


def test_an_hl7_oru_carries_every_line_of_a_pathology_report(docs: list[NarrativeDocument]) -> None:
    escaped = 0
    for doc in (d for d in docs if d.kind == PATHOLOGY):
        text = to_hl7_oru(doc, "MRN-0042")
        escaped += "\\T\\" in text
        message = er7.parse(text)
        assert message.msh.value(9) == "ORU" and message.msh.value(9, 2) == "R01"
        assert message.msh.value(12) == "2.5.1"
        pid = message.first("PID")
        assert pid is not None and pid.value(3) == "MRN-0042"
        obr = message.first("OBR")
        assert obr is not None
        assert (obr.value(4), obr.value(4, 3), obr.value(24)) == ("11526-1", "LN", "SP")
        obx = message.all("OBX")
        assert [int(s.value(1)) for s in obx] == list(range(1, len(obx) + 1))
        assert {(s.value(2), s.value(3), s.value(4), s.value(11)) for s in obx} == {
            ("TX", "22637-3", "1", "F")
        }
        assert "\n".join(s.value(5) for s in obx) == doc.text
    assert escaped > 100  # "H&E" travels escaped


def test_an_hl7_mdm_carries_every_line_of_a_note(docs: list[NarrativeDocument]) -> None:
    for doc in (d for d in docs if d.kind == NOTE):
        message = er7.parse(to_hl7_mdm(doc, "MRN-7"))
        assert (message.msh.value(9), message.msh.value(9, 2)) == ("MDM", "T02")
        evn, txa = message.first("EVN"), message.first("TXA")
        assert evn is not None and evn.value(1) == "T02"
        assert message.first("PV1") is not None
        assert txa is not None
        assert (txa.value(2), txa.value(12), txa.value(17)) == ("PN", doc.document_id, "AU")
        assert er7.parse_timestamp(txa.value(4)) == doc.written
        obx = sorted(message.all("OBX"), key=lambda s: int(s.value(1)))
        assert {s.value(3) for s in obx} == {"11506-3"}
        assert "\n".join(s.value(5) for s in obx) == doc.text


def test_hl7_delimiters_in_the_text_are_escaped_and_read_back() -> None:
    text = "FINAL DIAGNOSIS:\nA|B ^ C ~ D \\ E & F\n\nLast line"
    doc = NarrativeDocument(
        "narr-x",
        PATHOLOGY,
        "Surgical Pathology Report",
        text,
        datetime(2024, 1, 2, tzinfo=UTC),
        (),
        (),
    )
    rendered = to_hl7_oru(doc, "M|1")
    assert "A\\F\\B \\S\\ C \\R\\ D \\E\\ E \\T\\ F" in rendered
    message = er7.parse(rendered)
    assert "\n".join(s.value(5) for s in message.all("OBX")) == text
    assert message.first("PID") is not None and message.first("PID").value(3) == "M|1"  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        to_hl7_oru(NarrativeDocument("n", NOTE, "t", "x", doc.written, (), ()), "M")


def _attachment_text(resource: dict[str, object]) -> tuple[str, str]:
    content = resource["content"]
    assert isinstance(content, list)
    attachment = content[0]["attachment"]
    return attachment["contentType"], base64.b64decode(attachment["data"]).decode("utf-8")


def test_a_document_reference_carries_the_text(docs: list[NarrativeDocument]) -> None:
    html_notes = 0
    notes = 0
    for doc in docs:
        resource = to_fhir_document_reference(doc, "Patient/p1")
        assert resource["resourceType"] == "DocumentReference"
        assert resource["status"] == "current"
        assert resource["subject"] == {"reference": "Patient/p1"}
        code = resource["type"]["coding"][0]
        assert code["system"] == "http://loinc.org"
        assert code["code"] == ("11526-1" if doc.kind == PATHOLOGY else "11506-3")
        content_type, data = _attachment_text(resource)
        notes += doc.kind == NOTE
        if content_type.startswith("text/html"):
            assert doc.kind == NOTE
            html_notes += 1
            assert "<p>" in data and "<br>" in data
            plain = html.unescape(re.sub(r"<[^>]+>", " ", data))
            words = set(plain.split())
            for line in filter(None, doc.text.split("\n")):
                assert set(line.split()) <= words, line
        else:
            assert content_type == "text/plain; charset=utf-8"
            assert data == doc.text
    assert 0.2 <= html_notes / notes <= 0.4


def test_a_diagnostic_report_concludes_with_the_final_diagnosis(
    docs: list[NarrativeDocument],
) -> None:
    for doc in (d for d in docs if d.kind == PATHOLOGY):
        report = to_fhir_diagnostic_report(doc, "Patient/p2")
        assert report["category"][0]["coding"][0]["code"] == "SP"
        assert report["code"]["coding"][0]["code"] == "11526-1"
        assert report["issued"].endswith("Z")
        conclusion = report["conclusion"]
        assert conclusion and conclusion in doc.text
        assert conclusion.split("\n")[0].startswith("A. ")
        form = report["presentedForm"][0]
        assert form["contentType"] == "text/plain; charset=utf-8"
        assert base64.b64decode(form["data"]).decode("utf-8") == doc.text
    note = next(d for d in docs if d.kind == NOTE)
    with pytest.raises(ValueError):
        to_fhir_diagnostic_report(note, "Patient/p2")
