"""Text extraction scored against the narrative answer key (issue 18): the scorer, and
`concord evaluate-text` end to end on a few generated documents."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from click.testing import CliRunner

from concord.cli import main
from concord.cli.evaluate import TEXT_HEADING, Evaluation
from concord.clinical_text import concepts as c
from concord.clinical_text.extract import TextFinding
from concord.conflicts.evaluation import ConflictScores, KindScore
from concord.generate.narratives import ExpectedFact, NarrativeDocument, Trap
from concord.generate.text_evaluation import (
    ALL,
    FAMILIES,
    SITES,
    documents_from_key,
    format_table,
    rebase,
    score_documents,
    short_of_bar,
    stack_findings,
    stack_pairs,
    worst_examples,
)

MIN = 0.7
TEXT = (
    "FINAL DIAGNOSIS:\n"
    "Invasive ductal carcinoma of the left breast.\n"
    "Family history: mother with ovarian cancer.\n"
    "No evidence of metastatic disease."
)


def _doc(
    document_id: str,
    expected: dict[str, str],
    traps: tuple[Trap, ...] = (),
    text: str = TEXT,
) -> NarrativeDocument:
    return NarrativeDocument(
        document_id=document_id,
        kind="pathology-text",
        title="Surgical pathology",
        text=text,
        written=datetime(2024, 3, 1, tzinfo=UTC),
        expected=tuple(ExpectedFact(a, v) for a, v in expected.items()),
        traps=traps,
    )


def _finding(attribute: str, value: str, confidence: float = 0.92, start: int = 17) -> TextFinding:
    return TextFinding(attribute, value, start, start + 5, None, "affirmed", confidence)


def test_a_right_value_is_a_true_positive() -> None:
    doc = _doc("d1", {c.PRIMARY_SITE: "C50", c.HISTOLOGY: "8500/3"})
    score = score_documents(
        [(doc, [_finding(c.PRIMARY_SITE, "C50"), _finding(c.HISTOLOGY, "8500/3")])], MIN
    )
    assert (score.rows[c.PRIMARY_SITE].tp, score.rows[c.PRIMARY_SITE].fp) == (1, 0)
    assert (score.total.tp, score.total.fp, score.total.fn) == (2, 0, 0)
    assert score.total.precision == score.total.recall == 1.0


def test_a_wrong_value_is_a_false_positive_and_a_false_negative() -> None:
    doc = _doc("d1", {c.STAGE_GROUP: "2", c.HISTOLOGY: "8500/3"})
    score = score_documents(
        [(doc, [_finding(c.STAGE_GROUP, "3"), _finding(c.HISTOLOGY, "8500/3")])], MIN
    )
    stage = score.rows[c.STAGE_GROUP]
    assert (stage.tp, stage.fp, stage.fn) == (0, 1, 1)
    assert stage.precision == stage.recall == 0.0
    assert score.rows[c.HISTOLOGY].tp == 1
    assert (score.total.tp, score.total.fp, score.total.fn) == (1, 1, 1)


def test_an_expected_fact_not_found_is_a_false_negative() -> None:
    doc = _doc("d1", {c.TNM_T: "T2", c.TNM_N: "N0"})
    score = score_documents([(doc, [_finding(c.TNM_T, "T2")])], MIN)
    assert (score.rows[c.TNM_N].tp, score.rows[c.TNM_N].fp, score.rows[c.TNM_N].fn) == (0, 0, 1)
    assert score.rows[c.TNM_N].precision is None  # no fact, nothing to be precise about
    assert score.total.recall == 0.5


def test_a_finding_below_min_confidence_is_not_a_fact() -> None:
    doc = _doc("d1", {c.METASTATIC: "false"})
    low = _finding(c.METASTATIC, "true", confidence=0.5)
    score = score_documents([(doc, [low])], MIN)
    assert (score.rows[c.METASTATIC].fp, score.rows[c.METASTATIC].fn) == (0, 1)
    assert score.candidates == 1
    # At the threshold itself it is a fact.
    at = score_documents([(doc, [_finding(c.METASTATIC, "false", confidence=MIN)])], MIN)
    assert at.rows[c.METASTATIC].tp == 1 and at.candidates == 0


def test_a_trap_read_as_a_fact_is_an_assertion_error_of_its_kind() -> None:
    traps = (
        Trap(c.PRIMARY_SITE, "C56", "family", "mother with ovarian cancer"),
        Trap(c.METASTATIC, "true", "negated", "No evidence of metastatic disease"),
    )
    doc = _doc("d1", {c.PRIMARY_SITE: "C50"}, traps)
    # The family trap's attribute with another value, and the negated trap's exact value.
    findings = [_finding(c.PRIMARY_SITE, "C50"), _finding(c.METASTATIC, "true")]
    score = score_documents([(doc, findings)], MIN)
    assert (score.assertions["family"].traps, score.assertions["family"].errors) == (1, 0)
    assert (score.assertions["negated"].traps, score.assertions["negated"].errors) == (1, 1)
    assert score.assertions["negated"].error_rate == 1.0
    assert score.assertions["possible"].error_rate is None
    assert score.rows[c.METASTATIC].fp == 1  # an assertion error is a false positive too
    # Below the threshold the same trap is a review candidate, not an error.
    low = [_finding(c.PRIMARY_SITE, "C50"), _finding(c.METASTATIC, "true", confidence=0.4)]
    assert score_documents([(doc, low)], MIN).assertions["negated"].errors == 0


def test_facts_in_a_document_with_an_empty_key_are_false_positives() -> None:
    empty = _doc("note", {})
    quiet = _doc("benign", {})
    oncology = _doc("d1", {c.PRIMARY_SITE: "C50"})
    findings = [_finding(c.BIOMARKER_PREFIX + "ER", "positive"), _finding(c.STAGE_GROUP, "1")]
    score = score_documents(
        [(empty, findings), (quiet, []), (oncology, [_finding(c.PRIMARY_SITE, "C50")])], MIN
    )
    assert score.documents == 3
    assert score.empty_documents == 2
    assert score.empty_documents_with_facts == 1
    assert score.empty_document_facts == 2
    assert score.rows[c.BIOMARKER_PREFIX + "ER"].fp == 1
    assert score.rows[c.STAGE_GROUP].fp == 1


def test_distant_sites_share_one_row_and_details_have_their_own() -> None:
    doc = _doc(
        "d1",
        {c.METASTATIC_SITE_PREFIX + "C78.7": "true", c.ER_PERCENT: "95"},
    )
    findings = [
        _finding(c.METASTATIC_SITE_PREFIX + "C78.7", "true"),
        _finding(c.METASTATIC_SITE_PREFIX + "C79.5", "true"),
        _finding(c.ER_PERCENT, "90"),
    ]
    score = score_documents([(doc, findings)], MIN)
    assert (score.rows[SITES].tp, score.rows[SITES].fp, score.rows[SITES].fn) == (1, 1, 0)
    assert (score.rows[c.ER_PERCENT].fp, score.rows[c.ER_PERCENT].fn) == (1, 1)
    assert c.BIOMARKER_PREFIX + "ER" not in score.rows


def test_the_table_lists_every_row_and_the_assertion_kinds() -> None:
    doc = _doc("d1", {c.PRIMARY_SITE: "C50"})
    table = format_table(score_documents([(doc, [_finding(c.PRIMARY_SITE, "C34")])], MIN))
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines() if line.strip()}
    assert rows[c.PRIMARY_SITE] == ["0", "1", "1", "0.00", "0.00"]
    assert rows[c.HISTOLOGY] == ["0", "0", "0", "-", "-"]
    assert rows[ALL] == ["0", "1", "1", "0.00", "0.00"]
    for kind in ("negated", "possible", "hypothetical", "historical", "family"):
        assert kind in rows
    assert "no oncology in the key: 0 documents" in table


def test_worst_examples_give_the_line_of_the_error() -> None:
    doc = _doc("d1", {c.HISTOLOGY: "8500/3", c.METASTATIC: "false"})
    start = TEXT.index("ductal")
    findings = [
        _finding(c.HISTOLOGY, "8520/3", start=start),
        _finding(c.METASTATIC, "false", confidence=0.5, start=TEXT.index("metastatic")),
    ]
    examples = worst_examples([(doc, findings)], MIN, 10)
    by_attribute = {e.attribute: e for e in examples}
    assert by_attribute[c.HISTOLOGY].got == "8520/3"
    assert by_attribute[c.HISTOLOGY].line == "Invasive ductal carcinoma of the left breast."
    assert by_attribute[c.METASTATIC].got is None
    assert by_attribute[c.METASTATIC].line == "No evidence of metastatic disease."
    assert len(worst_examples([(doc, findings)], MIN, 1)) == 1


def test_rebase_moves_offsets_of_a_slice_into_the_whole_text() -> None:
    conclusion = "Invasive ductal carcinoma of the left breast."
    found = TextFinding(c.HISTOLOGY, "8500/3", 9, 25, None, "affirmed", 0.92)
    (moved,) = rebase([found], conclusion, TEXT)
    assert TEXT[moved.start : moved.end] == "ductal carcinoma"


def test_evaluate_text_prints_the_table_and_throughput() -> None:
    result = CliRunner().invoke(
        main, ["evaluate-text", "--documents", "60", "--seed", "7", "--via", "all"]
    )
    assert result.exit_code == 0, result.output
    names = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert set(FAMILIES) | {ALL, "negated", "family"} <= names
    assert "60 documents" in result.stdout
    assert re.search(
        r"^throughput \(extraction alone\): \d+\.\d documents/s, [\d,]+ characters/s",
        result.stdout,
        re.MULTILINE,
    )
    assert "| " not in result.stdout  # no text of a document unless --show-errors


# --- through the stack: fact_history and review-task rows into findings --------------------

KEY_ENTRY = {
    "person_id": "EP-000007",
    "source": "hospital-ehr",
    "patient_key": "hospital-ehr|HE1234567",
    "resource_type": "DiagnosticReport",
    "record_ref": "DiagnosticReport/narr-000001-0000abcd",
    "document_id": "narr-000001-0000abcd",
    "kind": "pathology-text",
    "title": "Surgical Pathology Report",
    "written": "2024-03-01T10:00:00+00:00",
    "expected": [
        {"attribute": c.PRIMARY_SITE, "value": "C50"},
        {"attribute": c.METASTATIC, "value": "false"},
    ],
    "traps": [
        {
            "attribute": c.PRIMARY_SITE,
            "value": "C56",
            "assertion": "family",
            "phrase": "mother with ovarian cancer",
        }
    ],
}
REF = ("hospital-ehr", KEY_ENTRY["record_ref"])


def _evidence(part: str, confidence: float = 0.9, assertion: str = "affirmed") -> str:
    """TextEvidence as fact_history's provenance_extra -> 'text' gives it (jsonb as text)."""
    return (
        f'{{"kind": "pathology-text", "document": "{part}", "section": "diagnosis", '
        f'"start": 17, "end": 44, "excerpt": "x", "assertion": "{assertion}", '
        f'"confidence": {confidence}, "method": "m"}}'
    )


def _row(
    attribute: str,
    value: str | None,
    part: str = "presentedForm/0",
    status: str = "ASSERTED",
    source: str = "hospital-ehr",
    record: str = KEY_ENTRY["record_ref"],
    confidence: float = 0.9,
) -> dict[str, object]:
    return {
        "source_system": source,
        "record_id": record,
        "attribute": attribute,
        "value": value,
        "status": status,
        "text": _evidence(part, confidence),
    }


def test_the_answer_key_section_becomes_documents_with_their_key() -> None:
    (keyed,) = documents_from_key([KEY_ENTRY])
    assert (keyed.source, keyed.record_ref) == REF
    doc = keyed.document
    assert doc.document_id == "narr-000001-0000abcd" and doc.kind == "pathology-text"
    assert doc.expected == (
        ExpectedFact(c.PRIMARY_SITE, "C50"),
        ExpectedFact(c.METASTATIC, "false"),
    )
    assert doc.traps == (Trap(c.PRIMARY_SITE, "C56", "family", "mother with ovarian cancer"),)
    assert doc.written == datetime(2024, 3, 1, 10, tzinfo=UTC)


def test_fact_rows_become_findings_per_record_with_their_evidence() -> None:
    rows = [
        _row(c.PRIMARY_SITE, "C50"),
        # The same attribute read from the report's conclusion: a text of its own.
        _row(c.PRIMARY_SITE, "C50", part="conclusion"),
        _row(c.METASTATIC, "false"),
        # Another source's record of the same id is another record.
        _row(c.PRIMARY_SITE, "C18", source="clinic-ehr"),
    ]
    found = stack_findings(rows)
    assert set(found) == {REF, ("clinic-ehr", KEY_ENTRY["record_ref"])}
    mine = found[REF]
    assert sorted((f.attribute, f.value) for f in mine) == [
        (c.METASTATIC, "false"),
        (c.PRIMARY_SITE, "C50"),
        (c.PRIMARY_SITE, "C50"),
    ]
    finding = mine[0]
    assert (finding.start, finding.end, finding.section) == (17, 44, "diagnosis")
    assert (finding.assertion, finding.confidence) == ("affirmed", 0.9)


def test_the_latest_row_of_a_text_and_attribute_counts_and_a_withdrawn_one_does_not() -> None:
    rows = [
        _row(c.PRIMARY_SITE, "C50"),
        _row(c.PRIMARY_SITE, None, status="DELETED"),  # a later version no longer says it
        _row(c.METASTATIC, "true"),
        _row(c.METASTATIC, "false"),  # newer, ordered after
    ]
    found = stack_findings(rows)
    assert [(f.attribute, f.value) for f in found[REF]] == [(c.METASTATIC, "false")]


def test_review_tasks_are_candidates_not_facts() -> None:
    reviews = [_row(c.METASTATIC, "true", confidence=0.4)]
    reviews[0].pop("status")
    found = stack_findings([_row(c.PRIMARY_SITE, "C50")], reviews)
    (doc,) = documents_from_key([KEY_ENTRY])
    score = score_documents(stack_pairs([doc], found), MIN)
    assert score.candidates == 1
    assert (score.row(ALL).tp, score.row(ALL).fp, score.row(ALL).fn) == (1, 0, 1)


def test_evidence_already_decoded_is_read_too_and_a_record_without_rows_has_no_findings() -> None:
    row = _row(c.PRIMARY_SITE, "C50")
    row["text"] = {"document": "content/0", "start": 1, "end": 2, "confidence": 0.8}
    found = stack_findings([row])
    assert found[REF][0].confidence == 0.8
    (doc,) = documents_from_key([KEY_ENTRY])
    other = documents_from_key([{**KEY_ENTRY, "record_ref": "DiagnosticReport/other"}])
    pairs = stack_pairs([doc, *other], found)
    assert [len(findings) for _, findings in pairs] == [1, 0]


def test_the_bar_is_precision_095_and_recall_090_over_all_attributes() -> None:
    (doc,) = documents_from_key([KEY_ENTRY])
    both = [_finding(c.PRIMARY_SITE, "C50"), _finding(c.METASTATIC, "false")]
    assert short_of_bar(score_documents([(doc.document, both)], MIN)) is None
    half = score_documents([(doc.document, both[:1])], MIN)  # recall 0.50
    assert "recall 0.500" in (short_of_bar(half) or "")
    wrong = score_documents([(doc.document, [*both, _finding(c.HISTOLOGY, "8500/3")])], MIN)
    assert "precision 0.667" in (short_of_bar(wrong) or "")
    nothing = score_documents([(_doc("empty", {}), [])], MIN)
    assert short_of_bar(nothing) is None


def _conflicts() -> ConflictScores:
    """A conflicts score with one kind found (its report needs a row)."""
    return ConflictScores(kinds={"birth_date": KindScore(expected=1, found=1)})


def test_the_evaluation_report_puts_the_text_table_after_the_conflicts_and_fails_below_bar() -> (
    None
):
    (doc,) = documents_from_key([KEY_ENTRY])
    good = score_documents(
        [(doc.document, [_finding(c.PRIMARY_SITE, "C50"), _finding(c.METASTATIC, "false")])], MIN
    )
    evaluation = Evaluation(_conflicts(), good)
    report = evaluation.report()
    conflicts, heading, text = report.partition(TEXT_HEADING)
    assert heading and conflicts.startswith("kind") and "1 documents; a fact" in text
    assert evaluation.passed
    poor = Evaluation(_conflicts(), score_documents([(doc.document, [])], MIN))
    assert not poor.passed
    assert poor.report().splitlines()[-1].startswith("text extraction below the bar")
    assert Evaluation(_conflicts()).passed and TEXT_HEADING not in Evaluation(_conflicts()).report()
