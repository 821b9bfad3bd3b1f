"""Oncology facts from one document's text: mentions found by the rules, their assertion by
ConText, then one value per attribute for the document.

Only what the text says about the patient now becomes a finding: a negated mention asserts
the opposite where the attribute has one (no evidence of metastatic disease: metastatic
"false") and nothing elsewhere; a possible one (cannot rule out, suspicious for) becomes a
low-confidence finding that the policy's threshold sends to review; hypothetical, historical
and family mentions, and those in sections that report no finding of the specimen (clinical
history, gross description), assert nothing. A document with no oncology mention of the
patient (a primary-care note) yields nothing at all, so the ambiguous abbreviations (ER, PR,
stage) never count there.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from importlib.metadata import version as package_version

from spacy.language import Language
from spacy.tokens import Doc, Span

from concord.clinical_text import concepts as c
from concord.clinical_text import nlp as n
from concord.clinical_text.concepts import Assertion
from concord.clinical_text.rules import TextRules, default_rules


@dataclass(frozen=True)
class TextFinding:
    """One attribute's value as the text states it, with where it says so."""

    attribute: str
    value: str
    start: int  # character offsets of the words that say it, in the document's text
    end: int
    section: str | None  # the section's category (medspaCy's sectionizer), None before any
    assertion: Assertion
    confidence: float


def method(rules: TextRules) -> str:
    """The extraction method and its version, as facts record them."""
    return f"medspacy-{package_version('medspacy')}/{rules.version}"


_PIPELINES: dict[str, Language] = {}


def _pipeline(rules: TextRules) -> Language:
    """One pipeline per rules version (building one takes most of a second)."""
    if rules.version not in _PIPELINES:
        _PIPELINES[rules.version] = n.build_pipeline(rules)
    return _PIPELINES[rules.version]


def extract(text: str, rules: TextRules | None = None) -> list[TextFinding]:
    """The document's findings: one per attribute (possible ones included, with their low
    confidence), in the order the text first states them."""
    rules = rules or default_rules()
    mentions: list[TextFinding] = []
    marker = False
    for chunk in chunks(text):
        doc = _read_chunk(chunk.text, rules)
        if doc is None:
            continue
        shift = chunk.offset - chunk.carried
        mentions += [
            replace(m, start=m.start + shift, end=m.end + shift)
            for ent in doc.ents
            if ent.start_char >= chunk.carried
            for m in _read(ent, doc, rules)
        ]
        marker = marker or _names_a_marker(doc, rules)
    if not (marker or any(m.attribute in _GATE for m in mentions if m.assertion != "family")):
        return []
    return _resolve(mentions, rules)


def _read_chunk(text: str, rules: TextRules) -> Doc | None:
    """The text through the pipeline; None when the rules name nothing in it."""
    nlp = _pipeline(rules)
    doc = nlp.make_doc(text)
    for name, component in nlp.pipeline:
        doc = component(doc)
        # Most of the time is ConText's and the sectionizer's: a text with nothing the rules
        # name (most notes outside oncology) need not pay for them.
        if name == "medspacy_target_matcher" and not doc.ents:
            return None
    return doc


# medSpaCy's target matcher sets a document's entities one at a time, and a span's entities
# are found among the document's: both grow with the text's length times its mentions. A long
# text (a discharge summary, a consultation) is read in pieces of about this many characters,
# cut between lines, each led by the last section heading before it so that its first lines
# keep their section (a family history stays the family's).
CHUNK_CHARS = 8_000
_HEADING = re.compile(r"^[ \t]*[A-Za-z][A-Za-z0-9 ,/&()'-]{1,60}:[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Chunk:
    text: str
    offset: int  # where the piece (after its carried heading) starts in the whole text
    carried: int  # length of the heading line put in front of it


def chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[Chunk]:
    start, heading = 0, ""
    while start < len(text):
        end = len(text) if len(text) - start <= size else _cut(text, start, size)
        yield Chunk(heading + text[start:end], start, len(heading))
        headings = _HEADING.findall(text, start, end)
        if headings:
            heading = f"{headings[-1].strip()}\n"
        start = end


def _cut(text: str, start: int, size: int) -> int:
    """Where a piece starting at `start` ends: after the last blank line within `size`, else
    the last line break, else at `size` (a text without line breaks)."""
    limit = start + size
    for mark in ("\n\n", "\n"):
        at = text.rfind(mark, start + size // 2, limit)
        if at != -1:
            return at + len(mark)
    return limit


# What opens a document to oncology reading: a cancer, a histology, a metastasis or a TNM
# category said of the patient (even as history or a possibility), or a marker's name.
_GATE = frozenset({c.PRIMARY_SITE, c.HISTOLOGY, c.METASTATIC, c.TNM_T, c.TNM_N, c.TNM_M, "_cancer"})


def _names_a_marker(doc: Doc, rules: TextRules) -> bool:
    """Whether the text names a marker no other field names (HER2, PD-L1, EGFR): that alone
    says it speaks of a cancer (a report's addendum of biomarker results)."""
    return any(
        e.label_ == n.BIOMARKER and e.text.lower() in rules.unambiguous_biomarkers for e in doc.ents
    )


def _assertion(ent: Span, rules: TextRules) -> Assertion:
    section = ent._.section_category
    if ent._.is_family or section == "family_history":
        return "family"
    if ent._.is_hypothetical:
        return "hypothetical"
    if ent._.is_historical or (section is not None and section in rules.unasserting_sections):
        return "historical"
    if ent._.is_uncertain:
        return "possible"
    if ent._.is_negated:
        return "negated"
    return "affirmed"


def _finding(
    ent: Span,
    attribute: str,
    value: str,
    assertion: Assertion,
    confidence: float,
    end: int | None = None,
) -> TextFinding:
    return TextFinding(
        attribute,
        value,
        ent.start_char,
        end or ent.end_char,
        ent._.section_category,
        assertion,
        confidence,
    )


def _read(ent: Span, doc: Doc, rules: TextRules) -> Iterator[TextFinding]:
    assertion = _assertion(ent, rules)
    confidence = rules.confidence.possible if assertion == "possible" else rules.confidence.affirmed
    label = ent.label_
    if label in (n.CANCER, n.HISTOLOGY):
        yield from _cancer(ent, assertion, confidence, rules)
    elif label == n.METASTASIS:
        yield from _metastasis(ent, assertion, confidence)
    elif label == n.STAGE:
        yield from _stage(ent, assertion, confidence)
    elif label == n.TNM:
        yield from _tnm(ent, assertion, confidence)
    elif label in (n.BIOMARKER, n.ISH):
        yield from _biomarker(ent, doc, assertion, confidence)
    elif label == n.SITE and assertion in ("affirmed", "possible") and _labelled_site(ent):
        yield _finding(ent, c.PRIMARY_SITE, ent._.target_rule.metadata["site"], assertion,
                       confidence)  # fmt: skip
    elif label == n.STATUS and assertion in ("affirmed", "possible"):
        yield _finding(
            ent, c.DISEASE_STATUS, ent._.target_rule.metadata["status"], assertion, confidence
        )


# A synoptic report's line that names the primary's organ: "Tumor site: Left ovary".
_SITE_LABEL = re.compile(r"\s*[-•*]?\s*(?:primary )?(?:tumou?r )?site(?: of primary)?\s*:", re.I)


def _labelled_site(ent: Span) -> bool:
    sentence = ent.sent
    return (
        "site" in ent._.target_rule.metadata
        and _SITE_LABEL.match(sentence.text) is not None
        and ent.start_char - sentence.start_char < 60
    )


def _sentence_ents(ent: Span, label: str) -> list[Span]:
    return [e for e in ent.sent.ents if e.label_ == label]


# Words that may stand between a metastasis and the organ it is in: "metastatic to the liver
# and bones", "liver, lung and bone metastases", "metastases in both lungs".
_LINKS = frozenset(
    "to in into involving within of the both bilateral multiple and , / left right "
    "numerous several diffuse scattered widespread".split()
)
# A metastasis word these follow governs the organs after it ("metastatic to liver"); any
# other governs the organs before it too ("hepatic metastases").
_GOVERNS_AFTER = frozenset({"to", "into", "involving"})


_LINKING_ENTITIES = frozenset({n.SITE, n.HISTOLOGY, n.CANCER})


def _linked(first: Span, second: Span) -> bool:
    """Whether only linking words, site words or a tumour's name ("metastatic adenocarcinoma
    in the liver") stand between two spans."""
    inside = {
        i for e in first.sent.ents if e.label_ in _LINKING_ENTITIES for i in range(e.start, e.end)
    }
    return all(t.lower_ in _LINKS or t.i in inside for t in first.doc[first.end : second.start])


def _metastatic_sites(metastasis: Span) -> list[Span]:
    """The site words of a metastasis mention's sentence that say where it is."""
    doc = metastasis.doc
    following = doc[metastasis.end].lower_ if metastasis.end < len(doc) else ""
    found = []
    for site in _sentence_ents(metastasis, n.SITE):
        if not site._.target_rule.metadata.get("metastatic_site"):
            continue
        after = site.start >= metastasis.end and _linked(metastasis, site)
        before = (
            site.end <= metastasis.start
            and following not in _GOVERNS_AFTER
            and _linked(site, metastasis)
        )
        if after or before:
            found.append(site)
    return found


def _metastasis_near(site: Span) -> bool:
    """Whether a site word names where a metastasis is (liver metastases, metastatic to the
    liver) rather than an organ of origin."""
    return any(site in _metastatic_sites(m) for m in _sentence_ents(site, n.METASTASIS))


def _specimen_heading(ent: Span) -> Span | None:
    """The specimen heading a pathology diagnosis line sits under ("A. LUNG, RIGHT LOWER LOBE,
    WEDGE RESECTION:"): the nearest of the three lines before it that ends with a colon."""
    doc, start = ent.doc, ent.sent.start
    for _ in range(3):
        if start == 0:
            return None
        sentence = doc[start - 1].sent
        if sentence.text.rstrip().endswith(":") and sentence.text.strip(" :\n"):
            return sentence
        start = sentence.start
    return None


def _primary_site(ent: Span) -> Span | None:
    """The organ a cancer mention names: the nearest site word in its sentence that names no
    metastasis, else in the two lines before it (a specimen's heading, "LEFT BREAST, CORE
    BIOPSY:", above its diagnosis)."""
    doc = ent.doc
    sentences = [ent.sent]
    start = ent.sent.start
    # "Metastatic adenocarcinoma" under a liver biopsy's heading: the heading names where the
    # metastasis is, not where the cancer began.
    metastatic = any(0 <= ent.start - m.end <= 1 for m in _sentence_ents(ent, n.METASTASIS))
    for _ in range(0 if metastatic else 2):
        if start == 0:
            break
        sentences.append(doc[start - 1].sent)
        start = sentences[-1].start
    for index, sentence in enumerate(sentences):
        sites = [
            s
            for s in sentence.ents
            if s.label_ == n.SITE
            and s._.target_rule.metadata.get("site")
            and not _metastasis_near(s)
        ]
        # A heading that names several organs ("UTERUS, CERVIX, BILATERAL OVARIES") does not
        # say which one the tumour is in.
        if index > 0 and len({s._.target_rule.metadata["site"] for s in sites}) > 1:
            return None
        if sites:
            return min(sites, key=lambda s: abs(s.start - ent.start))
    return None


def _cancer(
    ent: Span, assertion: Assertion, confidence: float, rules: TextRules
) -> Iterator[TextFinding]:
    meta = ent._.target_rule.metadata
    if assertion not in ("affirmed", "possible"):
        if assertion in ("historical", "negated") and ent.label_ == n.HISTOLOGY:
            yield _finding(ent, "_cancer", "", assertion, 0.0)  # opens the gate only
        elif assertion == "historical":
            yield _finding(ent, "_cancer", "", assertion, 0.0)
        return
    site = _primary_site(ent)
    code = site._.target_rule.metadata["site"] if site is not None else meta.get("site")
    weak = bool(meta.get("weak"))
    if ent.label_ == n.HISTOLOGY:
        yield _finding(ent, c.HISTOLOGY, meta["histology"], assertion, confidence)
    elif code is None:
        yield _finding(ent, "_cancer", "", assertion, 0.0)
        return
    if code is not None:
        sure = min(confidence, rules.confidence.weak) if weak else confidence
        start = min(ent.start_char, site.start_char) if site is not None else ent.start_char
        end = max(ent.end_char, site.end_char) if site is not None else ent.end_char
        yield TextFinding(c.PRIMARY_SITE, code, start, end, ent._.section_category, assertion, sure)


def _metastasis(ent: Span, assertion: Assertion, confidence: float) -> Iterator[TextFinding]:
    if assertion not in ("affirmed", "possible", "negated"):
        yield _finding(ent, "_cancer", "", assertion, 0.0)
        return
    near = _metastatic_sites(ent)
    # "Metastatic carcinoma in 2 of 14 lymph nodes": spread to the nodes is the N category.
    nodal = any(e.label_ == n.NODAL for e in ent.sent.ents)
    heading = _specimen_heading(ent) if not near and not nodal else None
    if heading is not None:  # "B. LIVER, WEDGE BIOPSY:" over "- Negative for metastatic ..."
        nodal = any(e.label_ == n.NODAL for e in heading.ents)
        near = [s for s in heading.ents if s.label_ == n.SITE
                and s._.target_rule.metadata.get("metastatic_site")]  # fmt: skip
    present = "false" if assertion == "negated" else "true"
    kind: Assertion = "affirmed" if assertion == "negated" else assertion
    for site in near:
        code = site._.target_rule.metadata["metastatic_site"]
        yield TextFinding(
            c.METASTATIC_SITE_PREFIX + code,
            present,
            min(ent.start_char, site.start_char),
            max(ent.end_char, site.end_char),
            ent._.section_category,
            kind,
            confidence,
        )
    if nodal and not near:
        yield _finding(ent, "_cancer", "", assertion, 0.0)
        return
    if near and present == "false":
        return  # no metastasis in one organ says nothing of the others
    yield _finding(ent, c.METASTATIC, present, kind, confidence)


_ROMAN = {"I": "1", "II": "2", "III": "3", "IV": "4"}


def _stage(ent: Span, assertion: Assertion, confidence: float) -> Iterator[TextFinding]:
    if assertion not in ("affirmed", "possible"):
        return
    sentence = ent.sent.text.lower()
    if any(word in sentence for word in _NOT_CANCER_STAGES):
        return
    token = ent[-1].text.upper()
    match = re.match(r"^(0|IV|I{1,3}|[1-4])", token)
    if match is None:
        return
    group = _ROMAN.get(match.group(1), match.group(1))
    if group in {"1", "2", "3", "4"}:
        yield _finding(ent, c.STAGE_GROUP, group, assertion, confidence)


# Stages that are not a cancer's: kidney disease, pressure injuries, hypertension, sleep...
_NOT_CANCER_STAGES = (
    "kidney disease",
    "ckd",
    "renal disease",
    "renal insufficiency",
    "ulcer",
    "pressure",
    "hypertension",
    "heart failure",
    "sleep",
    "labor",
    "lyme",
    "copd",
    "gold",
)


def _tnm(ent: Span, assertion: Assertion, confidence: float) -> Iterator[TextFinding]:
    if assertion not in ("affirmed", "possible"):
        return
    parts: list[str] = []
    for token in ent:
        match = n.TNM_TOKEN.match(token.text)
        if match is not None:
            parts += [p for p in match.groups() if p]
    prefixed = ent.text[:1] in "cpyra" and ent.text[:1] != ent.text[:1].upper()
    if not prefixed and len(parts) < 2:
        return  # a bare "T2" or "M1" may be anything; "pT2" or "T2N0M0" is a category
    for part in parts:
        category = _tnm_category(part)
        if category is None:
            continue
        attribute = {"T": c.TNM_T, "N": c.TNM_N, "M": c.TNM_M}[part[0]]
        yield _finding(ent, attribute, category, assertion, confidence)
        if attribute == c.TNM_M:  # M1 is distant metastasis, M0 none (as the policy derives)
            metastatic = "true" if category == "M1" else "false"
            yield _finding(ent, c.METASTATIC, metastatic, assertion, confidence)


def _tnm_category(part: str) -> str | None:
    if part.startswith("Tis"):
        return "Tis"
    main = part[:2]
    return None if main.endswith("X") else main


# A biomarker's result is read in the words after its name, up to the next marker's name or
# the sentence's end, at most this many characters.
_WINDOW = 80
_NEGATIVE = re.compile(
    r"\b(negative|neg|not detected|not amplified|non-amplified|"
    r"no (?:mutation|alteration|rearrangement|amplification|fusion)s?"
    r"(?: (?:was |were )?(?:detected|identified))?|wild[- ]type|absent|"
    r"not identified|0 ?%|<\s?1 ?%)",
    re.IGNORECASE,
)
_POSITIVE = re.compile(
    r"\b(positive|pos|detected|amplified|present|high expression|"
    r"allred [3-8])",
    re.IGNORECASE,
)
# Words that name an alteration: found, with no word saying otherwise, it is there.
_ALTERATION = re.compile(
    r"\b(mutat\w*|rearrange\w*|fusion|exon \d+|[LGT]\d{3}[A-Z])", re.IGNORECASE
)
_NEGATED_BEFORE = re.compile(
    r"\b(no|not|negative for|neg for|without|absence of|free of)\s+(?:\w+\s+)?$", re.IGNORECASE
)
_SCORE_NAMES = re.compile(r"combined positive score|tumou?r proportion score", re.IGNORECASE)
_PERCENT = re.compile(r"(?<![<\d])(\d{1,3})\s?%")
_IHC_SCORE = re.compile(
    r"(?:\b|\()([0-3])\s?\+|\b(?:score|ihc)\)?\s*:?\s*\(?([0-3])\b\+?|"
    r"\(([0-3])\)",
    re.IGNORECASE,
)
_EQUIVOCAL = re.compile(r"\bequivocal\b", re.IGNORECASE)
_TPS = re.compile(
    r"(?:TPS|tumou?r proportion score)[^0-9<]{0,20}(<\s?)?(\d{1,3})\s?%", re.IGNORECASE
)
# "PD-L1 50% (TPS)": the score before its name.
_TPS_AFTER = re.compile(
    r"(<\s?)?(\d{1,3})\s?%\s*\(?(?:TPS|tumou?r proportion score)", re.IGNORECASE
)
_CPS = re.compile(r"(?:CPS|combined positive score)[^0-9<]{0,20}(<\s?)?(\d{1,3})", re.IGNORECASE)


def _window(ent: Span, doc: Doc) -> tuple[str, int]:
    """The text after a marker's name that may hold its result, and where it starts."""
    end = min(ent.sent.end_char, ent.end_char + _WINDOW)
    for other in doc.ents:
        if other.start <= ent.start or other.label_ not in (n.BIOMARKER, n.ISH):
            continue
        if other.label_ == n.ISH and other.start > 0 and doc[other.start - 1].text == "(":
            continue  # "ALK rearrangement (FISH): Not detected": the method, not a marker
        end = min(end, other.start_char)
        break
    # "ER/PR: positive": the first of two names joined by a slash shares the second's result.
    return doc.text[ent.end_char : end], ent.end_char


def _biomarker(
    ent: Span, doc: Doc, assertion: Assertion, confidence: float
) -> Iterator[TextFinding]:
    if assertion not in ("affirmed", "possible", "negated"):
        return
    window, offset = _window(ent, doc)
    kind: Assertion = "affirmed" if assertion == "negated" else assertion
    # ConText's negation reaches across a list ("no EGFR mutation, ALK negative, PD-L1 80%"):
    # only a negation right before the marker's name is the marker's own.
    negated = (
        assertion == "negated"
        and _NEGATED_BEFORE.search(doc.text[max(0, ent.start_char - 30) : ent.start_char])
        is not None
    )
    if ent.label_ == n.ISH:
        value = _polarity(window, negated=negated)
        if value is not None and _about_her2(ent, doc):
            yield _finding(
                ent,
                c.HER2_FISH,
                "amplified" if value == "positive" else "not-amplified",
                kind,
                confidence,
                offset + len(window.rstrip()),
            )
        return
    marker = ent._.target_rule.metadata["marker"]
    end = offset + len(window.rstrip())
    yield from _marker_details(ent, marker, window, kind, confidence, end)
    value = _polarity(window, negated=negated)
    if marker == "HER2" and (_EQUIVOCAL.search(window) or _ihc(window) == "2+"):
        if not re.search(r"\b(not amplified|non-amplified|amplified)\b", window, re.I):
            return  # equivocal: the in situ hybridization, if any, decides
    if marker == "HER2" and value is None:
        score = _ihc(window)
        value = {"0": "negative", "1+": "negative", "3+": "positive"}.get(score or "")
    if marker == "PD-L1" and value is None:
        value = _pdl1_status(window)
    if marker in ("ER", "PR") and value is None:
        value = _receptor_by_percent(window)
    if value is not None:
        yield _finding(ent, c.BIOMARKER_PREFIX + marker, value, kind, confidence, end)


def _marker_details(
    ent: Span, marker: str, window: str, kind: Assertion, confidence: float, end: int
) -> Iterator[TextFinding]:
    if marker in ("ER", "PR"):
        percent = _PERCENT.search(window)
        if percent is not None and not re.search(r"\d\s?-\s?" + percent.group(1), window):
            attribute = c.ER_PERCENT if marker == "ER" else c.PR_PERCENT
            yield _finding(ent, attribute, str(int(percent.group(1))), kind, confidence, end)
    elif marker == "HER2":
        score = _ihc(window)
        if score is not None:
            yield _finding(ent, c.HER2_IHC, score, kind, confidence, end)
    elif marker == "PD-L1":
        for pattern, attribute in (
            (_TPS, c.PDL1_TPS),
            (_TPS_AFTER, c.PDL1_TPS),
            (_CPS, c.PDL1_CPS),
        ):
            found = pattern.search(window)
            if found is not None and not found.group(1):
                yield _finding(ent, attribute, str(int(found.group(2))), kind, confidence, end)


def _ihc(window: str) -> str | None:
    found = _IHC_SCORE.search(window)
    if found is None:
        return None
    score = next(g for g in found.groups() if g is not None)
    return score if score == "0" else f"{score}+"


def _receptor_by_percent(window: str) -> str | None:
    """ER or PR given as a percent alone ("ER 95%, PR 0%"): 1% of nuclei or more is positive
    (ASCO/CAP), less negative."""
    percent = _PERCENT.search(window)
    if percent is None or percent.start() > 12:
        return None
    return "positive" if int(percent.group(1)) >= 1 else "negative"


def _pdl1_status(window: str) -> str | None:
    tps = _TPS.search(window) or _TPS_AFTER.search(window) or _CPS.search(window)
    if tps is None:
        percent = _PERCENT.search(window)
        return (
            None if percent is None else ("positive" if int(percent.group(1)) >= 1 else "negative")
        )
    if tps.group(1):
        return "negative"  # "<1%"
    return "positive" if int(tps.group(2)) >= 1 else "negative"


def _polarity(window: str, *, negated: bool) -> str | None:
    """positive / negative as the first word after a marker that says so (not detected holds
    detected, so a tie goes to the negative); a marker ConText negated ("no EGFR mutation")
    is negative; an alteration named with no such word ("exon 19 deletion") is there."""
    compact = re.match(r"\s*([+-])(?![A-Za-z0-9])", window)
    if compact is not None:  # "ER+/PR+/HER2-"
        return "positive" if compact.group(1) == "+" else "negative"
    if negated:  # "no EGFR mutation detected", "negative for ER"
        return "negative"
    window = _SCORE_NAMES.sub(" ", window)  # "combined positive score" says no result
    negative, positive = _NEGATIVE.search(window), _POSITIVE.search(window)
    if negative is not None and (positive is None or negative.start() <= positive.start()):
        return "negative"
    if positive is not None:
        return "positive"
    return "positive" if _ALTERATION.search(window) else None


def _about_her2(ish: Span, doc: Doc) -> bool:
    """An in situ hybridization result is HER2's when HER2 is named in its sentence or the
    line before (a report's HER2 block), or when the text names no other ISH target."""
    before = doc.text[max(0, ish.start_char - 120) : ish.end_char].lower()
    return "her2" in before or "her-2" in before or "erbb2" in before


def _resolve(mentions: Iterable[TextFinding], rules: TextRules) -> list[TextFinding]:
    by_attribute: dict[str, list[TextFinding]] = {}
    for mention in mentions:
        if not mention.attribute.startswith("_") and mention.assertion in ("affirmed", "possible"):
            by_attribute.setdefault(mention.attribute, []).append(mention)
    # A metastasis affirmed in an organ outweighs "no distant metastases" elsewhere in the text
    # (an older scan, another region); a possible one does not.
    if any(
        a.startswith(c.METASTATIC_SITE_PREFIX)
        and any(m.value == "true" and m.assertion == "affirmed" for m in ms)
        for a, ms in by_attribute.items()
    ):
        by_attribute[c.METASTATIC] = [
            m
            for m in by_attribute.get(c.METASTATIC, [])
            if m.value == "true" and m.assertion == "affirmed"
        ] or by_attribute.get(c.METASTATIC, [])
    found = [_one_value(ms, rules) for ms in by_attribute.values() if ms]
    her2 = _her2_status(by_attribute, found)
    return sorted([f for f in found if f.attribute != her2[0]] + her2[1], key=lambda f: f.start)


def _one_value(mentions: list[TextFinding], rules: TextRules) -> TextFinding:
    """The document's value of one attribute: the one its sure mentions say most (the first
    said on a tie); a second value said as surely lowers the confidence to review."""
    sure = [m for m in mentions if m.assertion == "affirmed"] or mentions
    counts = Counter(m.value for m in sure)
    best = max(counts.values())
    chosen = next(m for m in sure if counts[m.value] == best)
    confidence = max(m.confidence for m in sure if m.value == chosen.value)
    if len(counts) > 1:
        confidence = min(confidence, rules.confidence.contradicted)
    return replace(chosen, confidence=confidence)


def _her2_status(
    by_attribute: dict[str, list[TextFinding]], found: list[TextFinding]
) -> tuple[str, list[TextFinding]]:
    """HER2 as a report concludes it across its lines: a stated status stands; else IHC 3+
    is positive, 0 and 1+ negative, and 2+ (equivocal) takes the in situ hybridization's
    answer, or none."""
    key = c.BIOMARKER_PREFIX + "HER2"
    if key in by_attribute:
        return key, [f for f in found if f.attribute == key]
    ihc = next((f for f in found if f.attribute == c.HER2_IHC), None)
    fish = next((f for f in found if f.attribute == c.HER2_FISH), None)
    if ihc is None and fish is None:
        return key, []
    value = {"0": "negative", "1+": "negative", "3+": "positive"}.get(ihc.value if ihc else "")
    source = ihc
    if value is None and fish is not None:
        value, source = ("positive" if fish.value == "amplified" else "negative"), fish
    if value is None or source is None:
        return key, []
    return key, [replace(source, attribute=key, value=value)]
