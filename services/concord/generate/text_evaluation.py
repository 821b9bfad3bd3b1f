"""Text extraction scored against the narrative generator's answer key (issue 18), pure.

Each document comes with its findings (what `extract` returned for its text, merged over the
texts a record carried). Only a FACT counts: a finding whose confidence is at least the
policy's `text.min_confidence`; one below it is a review candidate, counted apart.

- A **true positive** is a fact with the attribute and value the key expects.
- A **false positive** is a fact whose value the key does not expect for that attribute in
  that document, also every fact of a document whose key is empty (a primary-care note, a
  benign report).
- A **false negative** is an expected fact with no fact of that value. A wrong value is both
  a false positive and a false negative.

Rows are attribute families: each key is its own row, but for the distant sites
(`Oncology.metastaticSite/*`), one row for all. Each trap (a negated, possible, hypothetical,
historical or family mention) is an **assertion error** when a fact has its attribute and
value; traps never share attribute and value with an expected fact, so each error is a false
positive too.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, get_args

import orjson

from concord.clinical_text import concepts as c
from concord.clinical_text.extract import TextFinding
from concord.generate.narratives import ExpectedFact, NarrativeDocument, Trap

# The assertion kinds a trap can have: every assertion but the one that makes a fact.
TRAP_KINDS: Final = tuple(a for a in get_args(c.Assertion) if a != "affirmed")

SITES: Final = c.METASTATIC_SITE_PREFIX + "*"
ALL: Final = "all"

# Rows in the order the table prints them, whether or not a run saw them.
FAMILIES: Final[tuple[str, ...]] = (
    c.PRIMARY_SITE,
    c.HISTOLOGY,
    c.STAGE_GROUP,
    c.TNM_T,
    c.TNM_N,
    c.TNM_M,
    c.METASTATIC,
    SITES,
    c.BIOMARKER_PREFIX + "ER",
    c.ER_PERCENT,
    c.BIOMARKER_PREFIX + "PR",
    c.PR_PERCENT,
    c.BIOMARKER_PREFIX + "HER2",
    c.HER2_IHC,
    c.HER2_FISH,
    c.BIOMARKER_PREFIX + "EGFR",
    c.BIOMARKER_PREFIX + "ALK",
    c.BIOMARKER_PREFIX + "PD-L1",
    c.PDL1_TPS,
    c.PDL1_CPS,
    c.DISEASE_STATUS,
)

Pair = tuple[NarrativeDocument, list[TextFinding]]


def family(attribute: str) -> str:
    """The table row an attribute key is counted under."""
    return SITES if attribute.startswith(c.METASTATIC_SITE_PREFIX) else attribute


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float | None:
        """None when there was no fact to be right or wrong about."""
        found = self.tp + self.fp
        return self.tp / found if found else None

    @property
    def recall(self) -> float | None:
        """None when nothing was expected."""
        expected = self.tp + self.fn
        return self.tp / expected if expected else None


@dataclass
class TrapCounts:
    traps: int = 0
    errors: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.traps if self.traps else None


@dataclass
class TextScore:
    min_confidence: float
    documents: int = 0
    rows: dict[str, Counts] = field(default_factory=dict)  # by family
    assertions: dict[str, TrapCounts] = field(
        default_factory=lambda: {kind: TrapCounts() for kind in TRAP_KINDS}
    )
    candidates: int = 0  # findings below min_confidence: review, not facts
    empty_documents: int = 0  # documents whose key is empty
    empty_documents_with_facts: int = 0
    empty_document_facts: int = 0

    @property
    def total(self) -> Counts:
        return Counts(
            sum(r.tp for r in self.rows.values()),
            sum(r.fp for r in self.rows.values()),
            sum(r.fn for r in self.rows.values()),
        )

    def row(self, name: str) -> Counts:
        return self.total if name == ALL else self.rows.get(name, Counts())


def facts(findings: Iterable[TextFinding], min_confidence: float) -> set[tuple[str, str]]:
    """(attribute, value) of the findings that are facts."""
    return {(f.attribute, f.value) for f in findings if f.confidence >= min_confidence}


def score_documents(pairs: Iterable[Pair], min_confidence: float) -> TextScore:
    score = TextScore(min_confidence)
    for doc, findings in pairs:
        score.documents += 1
        score.candidates += sum(1 for f in findings if f.confidence < min_confidence)
        found = facts(findings, min_confidence)
        expected = {(e.attribute, e.value) for e in doc.expected}
        for attribute, value in found:
            counts = score.rows.setdefault(family(attribute), Counts())
            if (attribute, value) in expected:
                counts.tp += 1
            else:
                counts.fp += 1
        for attribute, _value in expected - found:
            score.rows.setdefault(family(attribute), Counts()).fn += 1
        for trap in doc.traps:
            kind = score.assertions.setdefault(trap.assertion, TrapCounts())
            kind.traps += 1
            if (trap.attribute, trap.value) in found:
                kind.errors += 1
        if not doc.expected:
            score.empty_documents += 1
            score.empty_document_facts += len(found)
            score.empty_documents_with_facts += bool(found)
    return score


# --- Through the stack (concord evaluate) --------------------------------------------------
# A generated set's `scenarios.narratives` names each document's record; what the narrative
# worker read from it is what the conflicts stage keeps of it (fact_history rows whose
# provenance holds the text evidence) and the text review tasks it opened. Both arrive here as
# rows; the SQL that reads them is the caller's.

RecordRef = tuple[str, str]  # (source system, source record id as ingestion names it)


@dataclass(frozen=True)
class KeyedDocument:
    source: str
    record_ref: str
    document: NarrativeDocument  # its key; the text is not in the answer key ("")


def documents_from_key(section: Iterable[Mapping[str, Any]]) -> list[KeyedDocument]:
    """The answer key's `scenarios.narratives` entries as documents with their key."""
    return [
        KeyedDocument(
            entry["source"],
            entry["record_ref"],
            NarrativeDocument(
                document_id=entry["document_id"],
                kind=entry["kind"],
                title=entry.get("title", ""),
                text="",
                written=datetime.fromisoformat(entry["written"]),
                expected=tuple(ExpectedFact(e["attribute"], e["value"]) for e in entry["expected"]),
                traps=tuple(
                    Trap(t["attribute"], t["value"], t["assertion"], t["phrase"])
                    for t in entry["traps"]
                ),
            ),
        )
        for entry in section
    ]


def _evidence(value: Any) -> Mapping[str, Any]:
    """A TextEvidence as JSON: a jsonb column comes as text unless a codec decodes it."""
    if isinstance(value, str | bytes):
        decoded = orjson.loads(value)
        return decoded if isinstance(decoded, dict) else {}
    return value if isinstance(value, Mapping) else {}


def finding_of(attribute: str, value: str, evidence: Any) -> TextFinding:
    """A finding as the worker published it (a fact) or kept it (a review task): its value,
    and from its TextEvidence, the words' offsets, section, assertion and confidence."""
    text = _evidence(evidence)
    return TextFinding(
        attribute=attribute,
        value=value,
        start=int(text.get("start", -1)),
        end=int(text.get("end", -1)),
        section=text.get("section"),
        assertion=text.get("assertion", "affirmed"),
        confidence=float(text.get("confidence", 0.0)),
    )


def stack_findings(
    fact_rows: Iterable[Mapping[str, Any]], review_rows: Iterable[Mapping[str, Any]] = ()
) -> dict[RecordRef, list[TextFinding]]:
    """Per record, the findings the narrative worker gave: of `fact_rows` (source_system,
    record_id, attribute, value, status, text: the fact's TextEvidence; oldest first), the
    latest per text of the record (TextEvidence.document, the part) and attribute, when it is
    ASSERTED; and every review task of `review_rows` (the same columns but status), whose
    confidence is below the threshold. A record's texts (a DiagnosticReport's presentedForm
    and conclusion) are read apart: their facts are all the record's, so a part that reads a
    value another part does not is counted as the stack published it."""
    latest: dict[tuple[str, str, str, str], Mapping[str, Any]] = {}
    for row in fact_rows:
        part = str(_evidence(row["text"]).get("document", ""))
        latest[(row["source_system"], row["record_id"], part, row["attribute"])] = row
    found: dict[RecordRef, list[TextFinding]] = defaultdict(list)
    for (source, record, _part, attribute), row in latest.items():
        if row["status"] == "ASSERTED" and row["value"] is not None:
            found[(source, record)].append(finding_of(attribute, row["value"], row["text"]))
    for row in review_rows:
        found[(row["source_system"], row["record_id"])].append(
            finding_of(row["attribute"], row["value"], row["text"])
        )
    return dict(found)


def stack_pairs(
    documents: Iterable[KeyedDocument], found: Mapping[RecordRef, list[TextFinding]]
) -> list[Pair]:
    """Each keyed document with what the stack read from its record (nothing, if nothing)."""
    return [(d.document, list(found.get((d.source, d.record_ref), []))) for d in documents]


# Issue 18's bar for text extraction, over all attributes.
MIN_PRECISION: Final = 0.95
MIN_RECALL: Final = 0.90


def short_of_bar(score: TextScore) -> str | None:
    """Why the overall score misses the issue's bar (precision 0.95, recall 0.90), or None."""
    total = score.total
    if total.tp + total.fn == 0 and total.fp == 0:
        return None  # nothing expected, nothing found
    precision = total.precision if total.precision is not None else 0.0
    recall = total.recall if total.recall is not None else 1.0
    if precision >= MIN_PRECISION and recall >= MIN_RECALL:
        return None
    return (
        f"text extraction below the bar: precision {precision:.3f} (>= {MIN_PRECISION:.2f}), "
        f"recall {recall:.3f} (>= {MIN_RECALL:.2f})"
    )


# --- Debugging ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorExample:
    document_id: str
    attribute: str
    expected: str | None  # None: the key expects nothing for this attribute
    got: str | None  # None: no fact (a below-threshold candidate is shown in `line`)
    trap: str | None  # the assertion kind, when the fact is a trap's
    line: str  # the line of the text around the finding, or where a candidate was; "" if none


def _line_at(text: str, start: int) -> str:
    if not 0 <= start < len(text):
        return ""
    begin = text.rfind("\n", 0, start) + 1
    end = text.find("\n", start)
    return text[begin : end if end >= 0 else len(text)].strip()


def _errors(
    doc: NarrativeDocument, findings: list[TextFinding], min_confidence: float
) -> Iterator[ErrorExample]:
    fact_findings = {f.attribute: f for f in findings if f.confidence >= min_confidence}
    candidates = {f.attribute: f for f in findings if f.confidence < min_confidence}
    expected = {e.attribute: e.value for e in doc.expected}
    traps = {(t.attribute, t.value): t.assertion for t in doc.traps}
    for attribute, finding in fact_findings.items():
        if expected.get(attribute) != finding.value:
            yield ErrorExample(
                doc.document_id,
                attribute,
                expected.get(attribute),
                finding.value,
                traps.get((attribute, finding.value)),
                _line_at(doc.text, finding.start),
            )
    for attribute, value in expected.items():
        if attribute not in fact_findings:
            candidate = candidates.get(attribute)
            line = _line_at(doc.text, candidate.start) if candidate else ""
            yield ErrorExample(doc.document_id, attribute, value, None, None, line)


def worst_examples(pairs: Iterable[Pair], min_confidence: float, limit: int) -> list[ErrorExample]:
    """Up to `limit` errors for reading, spread over the rows: taken in turn from each family,
    the family with the most errors first. Offsets are read against the document's own text
    (see `rebase` for findings read from another rendering of it)."""
    by_family: defaultdict[str, list[ErrorExample]] = defaultdict(list)
    for doc, findings in pairs:
        for error in _errors(doc, findings, min_confidence):
            by_family[family(error.attribute)].append(error)
    order = [name for name, _ in Counter({k: len(v) for k, v in by_family.items()}).most_common()]
    chosen: list[ErrorExample] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(by_family[name]) for name in order):
        for name in order:
            if depth < len(by_family[name]) and len(chosen) < limit:
                chosen.append(by_family[name][depth])
        depth += 1
    return chosen


def rebase(findings: list[TextFinding], read: str, original: str) -> list[TextFinding]:
    """Findings read from `read` (a rendering of `original`: its HTML as text, a report's
    conclusion) with offsets moved into `original`, so that error lines can be shown: by the
    shift when `read` is a slice of it, else at the first occurrence of the words found
    (left where they were when the words do not occur)."""
    if read == original:
        return findings
    shift = original.find(read)
    if shift >= 0:
        return [replace(f, start=f.start + shift, end=f.end + shift) for f in findings]
    moved: list[TextFinding] = []
    for f in findings:
        at = original.find(read[f.start : f.end])
        moved.append(replace(f, start=at, end=at + f.end - f.start) if at >= 0 else f)
    return moved


# --- Report ---------------------------------------------------------------------------------


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(score: TextScore) -> str:
    width = max(len(name) for name in FAMILIES) + 2
    lines = [
        f"{score.documents} documents; a fact is a finding with confidence >= "
        f"{score.min_confidence:.2f} ({score.candidates} findings below it: review "
        "candidates, not scored)",
        "",
        f"{'attribute':<{width}}{'tp':>6}{'fp':>6}{'fn':>6}{'precision':>11}{'recall':>8}",
    ]
    extra = sorted(set(score.rows) - set(FAMILIES))
    for name in [*FAMILIES, *extra, ALL]:
        row = score.row(name)
        lines.append(
            f"{name:<{width}}{row.tp:>6}{row.fp:>6}{row.fn:>6}"
            f"{_ratio(row.precision):>11}{_ratio(row.recall):>8}"
        )
    lines += ["", f"{'assertion':<14}{'traps':>7}{'errors':>8}{'error rate':>12}"]
    for kind, counts in score.assertions.items():
        lines.append(
            f"{kind:<14}{counts.traps:>7}{counts.errors:>8}{_ratio(counts.error_rate):>12}"
        )
    lines += [
        "",
        f"no oncology in the key: {score.empty_documents} documents, "
        f"{score.empty_documents_with_facts} with any fact, {score.empty_document_facts} facts",
    ]
    return "\n".join(lines)


def format_examples(examples: Iterable[ErrorExample]) -> str:
    """One block per error; the text's line is shown, so call it only when asked to."""
    lines: list[str] = []
    for e in examples:
        trap = f" (a {e.trap} trap)" if e.trap else ""
        lines.append(
            f"{e.document_id} {e.attribute}: expected {e.expected or '-'}, got {e.got or '-'}{trap}"
        )
        lines.append(f"    | {e.line}" if e.line else "    | (not located in the text)")
    return "\n".join(lines)
