"""Narrative documents for the planted persons and the controls (generate/planted.py).

A clinician's progress note or a surgical pathology report about the person's cancer, in the
words narratives.py writes them with (its phrase tables and sentence builders), stating the
facts it is given and nothing else about the cancer: no other cancer, no traps (historical,
family, negated or possible mentions), no stage, receptor or metastatic statement the caller
did not ask for. `NoteFact.stated` is what the text says, as the narrative worker keys it;
tests read each text back with `concord.clinical_text.extract` to hold it to that.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from concord.clinical_text import concepts
from concord.generate import narratives as n
from concord.generate.model import NoteFact, Person

# The planted cancers (catalogue.CANCERS) by ICD-10-CM category, as narratives.py writes them.
_CANCER_KEYS = {"C50": "breast", "C34": "lung", "C18": "colon", "C61": "prostate"}
# catalogue.METASTASES codes and the distant sites narratives.py names (its C78/C79 keys).
TEXT_SITES = {"C78.00": "C78.0", "C78.7": "C78.7", "C79.51": "C79.5"}
# A code that names the side sets the organ the text names.
_ORGANS = {"C50.911": "right breast"}
NOTE_TITLES = (
    "Hematology/Oncology Progress Note",
    "Oncology Follow-up Visit",
    "Medical Oncology Clinic Note",
)


def cancer_of(icd10: str) -> n._Cancer:
    key = _CANCER_KEYS[icd10[:3]]
    return next(c for c in n.CANCERS if c.key == key)


def stage_groups(icd10: str) -> list[str]:
    """The stage groups (main numbers, "1"-"3") narratives.py can write for this cancer."""
    return sorted({n._main_number(s.group) for s in cancer_of(icd10).stages})


def sites_for(icd10: str) -> list[str]:
    """catalogue.METASTASES codes this cancer spreads to, as narratives.py has them."""
    cancer = cancer_of(icd10)
    return [code for code, site in TEXT_SITES.items() if site in cancer.sites]


def _age(person: Person, written: datetime) -> int:
    born = person.demographics.birth_date
    day = written.date()
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def _case(
    rng: random.Random,
    person: Person,
    icd10: str,
    written: datetime,
    *,
    stage_group: str | None = None,
    sites: tuple[str, ...] = (),
) -> n._Case:
    cancer = cancer_of(icd10)
    stages = [s for s in cancer.stages if n._main_number(s.group) == stage_group]
    return n._Case(
        cancer=cancer,
        histology=rng.choice(cancer.histologies),
        stage=rng.choice(stages or list(cancer.stages)),
        sites=sites,
        recurrence=False,
        sex=person.demographics.sex or "female",
        age=_age(person, written),
        surname=person.demographics.family,
        organ=_ORGANS.get(icd10) or rng.choice(cancer.organs),
        size_cm=f"{rng.randint(6, 58) / 10:.1f}",
        grade=rng.choice(cancer.grades),
    )


def _finished(draft: n._Draft, kind: str, title: str, written: datetime) -> NoteFact:
    document = draft.finish("planted", kind, title, written)
    stated = tuple((f.attribute, f.value) for f in document.expected)
    return NoteFact(kind, title, document.text, written, stated)


def _past_history(person: Person) -> str:
    held = [c.concept.display for c in person.conditions if c.status == "active"]
    if not held:
        return "No significant past medical history."
    text = ", ".join(held)
    return text[0].upper() + text[1:].lower()


def progress_note(
    rng: random.Random,
    person: Person,
    icd10: str,
    written: datetime,
    *,
    er: str | None = None,
    metastatic: str | None = None,
    site: str | None = None,
) -> NoteFact:
    """An oncologist's progress note on the person's cancer (ICD-10-CM `icd10`). It states the
    primary site (and maybe the histology); with `er`, the estrogen receptor status
    ("positive"/"negative"); with `metastatic` "true", spread to `site` (a catalogue.METASTASES
    code); with "false", a staging scan without distant metastasis."""
    sites = (TEXT_SITES[site],) if metastatic == "true" and site else ()
    if metastatic == "true" and not sites:
        raise ValueError("a metastatic note names the site")
    case = _case(rng, person, icd10, written, sites=sites)
    therapy = rng.choice(case.cancer.therapies)
    title = rng.choice(NOTE_TITLES)
    draft = n._Draft()
    draft.add(
        title.upper(),
        f"Date of service: {written:%m/%d/%Y}",
        f"Provider: {rng.choice(n.ONCOLOGISTS)}",
    )
    dx = n._diagnosis(draft, rng, case)
    spread = ", " + n._said(draft, n._sites_said(rng, sites)) if sites else ""
    honorific = "Ms." if case.sex == "female" else "Mr."
    context = rng.choice(
        (
            f"on {therapy}, who presents for follow-up",
            f"here for cycle {rng.randint(2, 12)} of {therapy}",
            f"currently receiving {therapy}, seen today to review restaging",
        )
    )
    lines = [f"{honorific} {case.surname} is a {n._person(case)} with {dx}{spread}, {context}."]
    if er is not None:
        said = n._receptor_note(rng, "ER", er == "positive", rng.random() < 0.5)
        lines.append(
            rng.choice(
                ("Tumor profile: {m}.", "Biomarkers: {m}.", "Pathology notable for {m}.")
            ).format(m=n._said(draft, said))
        )
    lines.append(
        rng.choice(
            (
                "Reports mild fatigue; appetite stable.",
                "Denies new pain. ECOG 1.",
                "Tolerating treatment well; grade 1 neuropathy.",
            )
        )
    )
    draft.section(rng.choice(("HPI:", "History of present illness:")), *lines)
    draft.section(rng.choice(("Past medical history:", "PMH:")), _past_history(person))
    draft.section(
        rng.choice(("Family history:", "FAMILY HISTORY:")),
        rng.choice(
            ("Noncontributory.", "Mother with hypertension; father with coronary artery disease.")
        ),
    )
    draft.section(
        "Physical exam:",
        rng.choice(
            (
                "Well-appearing, no acute distress. Lungs clear. Abdomen soft, nontender.",
                "ECOG 1. No lymphadenopathy. No hepatomegaly.",
            )
        ),
    )
    if metastatic == "false":
        when = (written - timedelta(days=rng.randint(2, 12))).strftime("%m/%d/%Y")
        exam = rng.choice(("CT chest/abdomen/pelvis", "CT C/A/P with contrast", "PET/CT"))
        draft.section(
            rng.choice(("Imaging:", "IMAGING:", "Radiology:")),
            f"Staging {exam} {when}: {n._global_negation(draft, rng)}",
        )
    sex = "F" if case.sex == "female" else "M"
    disease = n._Said(case.cancer.disease[0], {concepts.PRIMARY_SITE: case.cancer.icd10})
    draft.section(
        rng.choice(("Assessment and Plan:", "ASSESSMENT AND PLAN:", "A/P:")),
        f"{case.age}{sex} with {n._said(draft, disease)} as above.",
        rng.choice(
            (
                f"Continue {therapy}.",
                f"Proceed with {therapy} today; labs reviewed and adequate.",
                f"Continue {therapy}; dose unchanged.",
            )
        ),
        rng.choice(("RTC in 3 weeks with labs.", "Return to clinic in 4 weeks.")),
    )
    draft.blank()
    draft.add(f"Electronically signed: {rng.choice(n.ONCOLOGISTS)} {written:%m/%d/%Y %H:%M}")
    return _finished(draft, n.NOTE, title, written)


def pathology_report(
    rng: random.Random, person: Person, icd10: str, stage_group: str, written: datetime
) -> NoteFact:
    """A surgical pathology report of the resection of the person's cancer (ICD-10-CM
    `icd10`): primary site, histology, pT/pN and the AJCC stage group `stage_group` ("1"-"3",
    which says nothing of distant metastasis)."""
    case = _case(rng, person, icd10, written, stage_group=stage_group)
    draft = n._Draft()
    n._path_header(draft, rng, written)
    presentation = n._presentation(rng, case, "resection")
    draft.section(
        rng.choice(("CLINICAL HISTORY:", "CLINICAL INFORMATION:")),
        f"{n._person(case)} with {presentation}.",
    )
    final, synoptic = n._resection(draft, rng, case)
    if concepts.STAGE_GROUP not in draft.facts:
        group = case.stage.group
        draft.state({concepts.STAGE_GROUP: n._main_number(group)})
        synoptic.append(f"AJCC anatomic stage group: {group}")
    draft.section("FINAL DIAGNOSIS:", *final)
    draft.section(synoptic[0], *synoptic[1:])
    n._gross_and_micro(draft, rng, final[0], case.histology.names[0])
    draft.blank()
    draft.add(f"Electronically signed by: {rng.choice(n.PATHOLOGISTS)}, {written:%m/%d/%Y}")
    return _finished(draft, n.PATHOLOGY, "Surgical Pathology Report", written)
