"""Narrative clinical documents with an answer key: the ground truth text extraction
(issue 18) is scored against.

`narrative_documents(rng, count)` writes surgical pathology reports (about 60%: resections,
biopsies of a primary, biopsies of a metastasis, and benign reports) and clinician notes
(about 40%: oncology progress notes, and ordinary primary-care notes with no oncology in
them). Each document carries its key: `expected`, every oncology fact the text states about
the patient now (attribute keys and values of `concord.clinical_text.concepts`, one value per
attribute), and `traps`, mentions a naive reader would turn into a fact the text does not
state (negated, possible, hypothetical, historical, or about a relative). A trap never has the
attribute and value of an expected fact.

Rules the key follows (it holds only what the text states):

* Primary site is the ICD-10-CM category of the patient's current cancer ("C50"); histology
  the ICD-O-3 code of the named histology with behaviour /3, also for "metastatic
  adenocarcinoma" (the tumour's histology, not the /6 site code). "breast cancer" names no
  histology; "melanoma" names 8720/3.
* Stage group is the main number of the AJCC (or FIGO, ovary) group, from Roman or Arabic
  numerals ("IIIA", "3A" -> "3"). TNM categories drop the c/p/yp prefix and the subcategory
  ("ypT1c" -> "T1", "pN1mi" -> "N1", "pN0(i+)" -> "N0"); "pNX" and "pM: not applicable"
  state nothing.
* Oncology.metastatic is "true" when the text says metastatic disease, names an affirmed
  distant site, gives M1, or gives stage IV (the generator writes stage IV only where it means
  distant metastasis: prostate is always IVB). It is "false" only when the text negates
  distant metastasis in words ("No evidence of metastatic disease", "no distant
  metastases") or gives M0. Stage I-III alone states neither (the conflicts stage derives
  that from the stage group). Regional lymph node involvement ("metastatic carcinoma in 2 of
  14 lymph nodes") is N, not distant metastasis, and states nothing about it.
* A distant site is "true" when affirmed ("liver metastases", "metastatic to bone",
  "osseous metastases" = bone C79.5) and "false" when negated ("no evidence of intracranial
  metastatic disease", a liver wedge "negative for metastatic carcinoma").
* ER/PR: status from Positive/Negative/+/-; the percent only when one number is given
  ("95%", "0%"); ranges ("90-100%"), "<1%" and Allred scores give no percent. HER2: IHC 3+
  or FISH amplified is positive, IHC 0/1+ or 2+ with FISH not amplified negative; IHC 2+
  without FISH gives HER2/IHC "2+" and no status (an "equivocal" trap). PD-L1: TPS or CPS
  >= 1 positive with the number, "<1%" negative with no number, "0%" negative with "0".
  EGFR mutation detected positive, "wild-type"/"no mutation detected" negative; ALK
  rearranged/positive or not detected/negative.
* Disease status from RECIST-style wording: progression, stable disease, partial response,
  complete response / no evidence of disease (NED).

Renderers are pure and return what a source would publish: a FHIR DocumentReference (notes
as text/plain, or for about 30% of notes as text/html with <p> and <br>), a FHIR
DiagnosticReport (pathology), an HL7 v2.5.1 ORU^R01 (pathology) and an MDM^T02 (notes).
In the HL7 messages each line of the text is one OBX, blank lines included (an OBX with an
empty OBX-5), so the OBX-5 values in set-id order rejoin with "\\n" to exactly the text.
"""

from __future__ import annotations

import base64
import html
import random
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from concord.clinical_text import concepts

PATHOLOGY: Final = "pathology-text"
NOTE: Final = "note-text"
TRAP_KINDS: Final = ("negated", "possible", "hypothetical", "historical", "family")

LOINC: Final = "http://loinc.org"
PROGRESS_NOTE: Final = ("11506-3", "Progress note")
PATHOLOGY_STUDY: Final = ("11526-1", "Pathology study")
FINAL_DIAGNOSIS: Final = ("22637-3", "Pathology report final diagnosis")
TEXT_PLAIN: Final = "text/plain; charset=utf-8"
TEXT_HTML: Final = "text/html; charset=utf-8"


@dataclass(frozen=True)
class ExpectedFact:
    attribute: str  # a concepts.* key
    value: str


@dataclass(frozen=True)
class Trap:
    attribute: str
    value: str  # the value a naive reader would wrongly assert
    assertion: str  # one of TRAP_KINDS
    phrase: str  # the words in the text that carry it (a substring of text)


@dataclass(frozen=True)
class NarrativeDocument:
    document_id: str
    kind: str  # "pathology-text" | "note-text"
    title: str
    text: str  # lines separated by "\n"
    written: datetime  # UTC
    expected: tuple[ExpectedFact, ...]  # every fact the text states about the patient now
    traps: tuple[Trap, ...]


# --- Vocabulary -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Histology:
    code: str  # ICD-O-3 with behaviour
    names: tuple[str, ...]  # how a report names it
    metastatic: tuple[str, str]  # what a biopsy of a metastasis calls it, and that code


@dataclass(frozen=True)
class _Stage:
    t: str  # "T2"
    t_sub: str  # subcategory: "a", "c", ""
    n: str
    n_sub: str
    group: str  # Roman, as AJCC writes it: "IIB"


@dataclass(frozen=True)
class _Cancer:
    key: str
    icd10: str
    sex: str | None  # "female" | "male" | None
    organs: tuple[str, ...]  # "{histology} of the {organ}"
    disease: tuple[str, ...]  # names that state the site and no histology
    histologies: tuple[_Histology, ...]
    resections: tuple[str, ...]
    biopsies: tuple[str, ...]
    grades: tuple[str, ...]
    stages: tuple[_Stage, ...]
    panel: str  # "breast" | "lung" | "cps" | ""
    sites: tuple[str, ...]  # distant sites it spreads to (ICD-10-CM C78/C79)
    origin: str  # "supports origin from the patient's known {origin} primary"
    immunoprofile: str
    therapies: tuple[str, ...]
    figo: bool = False


def _h(code: str, names: tuple[str, ...], met: str, met_code: str | None = None) -> _Histology:
    return _Histology(code, names, (met, met_code or code))


def _s(t: str, n: str, group: str) -> _Stage:
    """A stage row from compact TNM: _s("T2a", "N1b", "IIB")."""
    t_main = "Tis" if t.startswith("Tis") else t[:2]
    return _Stage(t_main, t[len(t_main) :], n[:2], n[2:], group)


_ADENO = _h("8140/3", ("Adenocarcinoma", "Invasive adenocarcinoma"), "Metastatic adenocarcinoma")
_LUNG_ADENO = _h(
    "8140/3",
    ("Adenocarcinoma", "Invasive adenocarcinoma", "Invasive non-mucinous adenocarcinoma"),
    "Metastatic adenocarcinoma",
)

CANCERS: Final[tuple[_Cancer, ...]] = (
    _Cancer(
        key="breast",
        icd10="C50",
        sex="female",
        organs=("left breast", "right breast"),
        disease=("breast cancer",),
        histologies=(
            _h(
                "8500/3",
                (
                    "Invasive ductal carcinoma",
                    "Invasive carcinoma of no special type (ductal)",
                    "Infiltrating ductal carcinoma",
                    "Invasive breast carcinoma of no special type",
                ),
                "Metastatic ductal carcinoma",
            ),
            _h(
                "8520/3",
                ("Invasive lobular carcinoma", "Infiltrating lobular carcinoma"),
                "Metastatic lobular carcinoma",
            ),
        ),
        resections=(
            "{ORGAN}, LUMPECTOMY",
            "{ORGAN}, PARTIAL MASTECTOMY",
            "{ORGAN}, TOTAL MASTECTOMY",
            "{ORGAN}, SEGMENTAL MASTECTOMY WITH SEED LOCALIZATION",
        ),
        biopsies=(
            "{ORGAN}, 2:00, 4 CM FN, ULTRASOUND-GUIDED CORE NEEDLE BIOPSY",
            "{ORGAN}, UPPER OUTER QUADRANT, STEREOTACTIC CORE BIOPSY",
            "{ORGAN}, 10 O'CLOCK, CORE BIOPSY",
        ),
        grades=(
            "Nottingham histologic grade 1 (tubules 2, nuclei 1, mitoses 1; score 4)",
            "Nottingham histologic grade 2 (tubules 3, nuclei 2, mitoses 1; score 6)",
            "Nottingham histologic grade 3 (tubules 3, nuclei 3, mitoses 3; score 9)",
        ),
        stages=(
            _s("T1c", "N0", "IA"),
            _s("T1b", "N0", "IA"),
            _s("T2", "N0", "IIA"),
            _s("T1c", "N1a", "IIA"),
            _s("T2", "N1a", "IIB"),
            _s("T3", "N0", "IIB"),
            _s("T2", "N2a", "IIIA"),
            _s("T3", "N1a", "IIIA"),
            _s("T4b", "N1", "IIIB"),
            _s("T2", "N3a", "IIIC"),
        ),
        panel="breast",
        sites=("C78.7", "C79.5", "C79.3", "C78.0"),
        origin="breast",
        immunoprofile="GATA3 positive, CK7 positive, CK20 negative, TTF-1 negative",
        therapies=(
            "dose-dense AC followed by paclitaxel",
            "capecitabine",
            "eribulin",
        ),
    ),
    _Cancer(
        key="lung",
        icd10="C34",
        sex=None,
        organs=("right upper lobe", "left upper lobe", "right lower lobe", "left lower lobe"),
        disease=("lung cancer",),
        histologies=(
            _LUNG_ADENO,
            _h(
                "8070/3",
                ("Squamous cell carcinoma", "Invasive squamous cell carcinoma"),
                "Metastatic squamous cell carcinoma",
            ),
        ),
        resections=(
            "LUNG, {ORGAN}, LOBECTOMY",
            "{ORGAN}, VATS LOBECTOMY",
            "{ORGAN}, ROBOTIC-ASSISTED LOBECTOMY",
        ),
        biopsies=(
            "LUNG, {ORGAN} MASS, CT-GUIDED CORE BIOPSY",
            "LUNG, {ORGAN}, NAVIGATIONAL BRONCHOSCOPIC BIOPSY",
        ),
        grades=(
            "G1: Well differentiated",
            "G2: Moderately differentiated",
            "G3: Poorly differentiated",
        ),
        stages=(
            _s("T1b", "N0", "IA2"),
            _s("T1c", "N0", "IA3"),
            _s("T2a", "N0", "IB"),
            _s("T2b", "N0", "IIA"),
            _s("T1c", "N1", "IIB"),
            _s("T3", "N0", "IIB"),
            _s("T2a", "N2", "IIIA"),
            _s("T3", "N2", "IIIB"),
            _s("T4", "N3", "IIIC"),
        ),
        panel="lung",
        sites=("C78.7", "C79.3", "C79.5", "C79.7"),
        origin="lung",
        immunoprofile="TTF-1 positive, Napsin A positive, CK7 positive, CK20 negative",
        therapies=(
            "carboplatin, pemetrexed and pembrolizumab",
            "docetaxel",
            "durvalumab consolidation",
        ),
    ),
    _Cancer(
        key="colon",
        icd10="C18",
        sex=None,
        organs=(
            "sigmoid colon",
            "ascending colon",
            "transverse colon",
            "cecum",
            "descending colon",
        ),
        disease=("colon cancer",),
        histologies=(
            _ADENO,
            _h("8480/3", ("Mucinous adenocarcinoma",), "Metastatic mucinous adenocarcinoma"),
        ),
        resections=(
            "COLON, {ORGAN}, SEGMENTAL RESECTION",
            "{ORGAN}, ONCOLOGIC COLECTOMY",
        ),
        biopsies=(
            "COLON, {ORGAN}, MASS, COLD FORCEPS BIOPSY",
            "{ORGAN}, ULCERATED MASS, ENDOSCOPIC BIOPSY",
        ),
        grades=(
            "G2: Moderately differentiated (low grade)",
            "G3: Poorly differentiated (high grade)",
        ),
        stages=(
            _s("T1", "N0", "I"),
            _s("T2", "N0", "I"),
            _s("T3", "N0", "IIA"),
            _s("T4a", "N0", "IIB"),
            _s("T2", "N1a", "IIIA"),
            _s("T3", "N1b", "IIIB"),
            _s("T3", "N2a", "IIIB"),
            _s("T4a", "N2a", "IIIC"),
        ),
        panel="",
        sites=("C78.7", "C78.0", "C78.6"),
        origin="colorectal",
        immunoprofile="CK20 positive, CDX2 positive, SATB2 positive, CK7 negative",
        therapies=("FOLFOX", "CAPOX", "FOLFIRI with bevacizumab"),
    ),
    _Cancer(
        key="rectum",
        icd10="C20",
        sex=None,
        organs=("rectum", "distal rectum", "mid rectum"),
        disease=("rectal cancer",),
        histologies=(_ADENO,),
        resections=("RECTUM, LOW ANTERIOR RESECTION", "RECTOSIGMOID, ABDOMINOPERINEAL RESECTION"),
        biopsies=("RECTUM, 8 CM FROM ANAL VERGE, MASS, BIOPSY",),
        grades=("G2: Moderately differentiated (low grade)",),
        stages=(
            _s("T2", "N0", "I"),
            _s("T3", "N0", "IIA"),
            _s("T3", "N1a", "IIIB"),
            _s("T3", "N2a", "IIIB"),
        ),
        panel="",
        sites=("C78.7", "C78.0"),
        origin="colorectal",
        immunoprofile="CK20 positive, CDX2 positive, CK7 negative",
        therapies=("FOLFOX", "capecitabine with radiation", "FOLFIRINOX"),
    ),
    _Cancer(
        key="prostate",
        icd10="C61",
        sex="male",
        organs=("prostate",),
        disease=("prostate cancer",),
        histologies=(
            _h(
                "8140/3",
                ("Acinar adenocarcinoma", "Prostatic adenocarcinoma, acinar type"),
                "Metastatic adenocarcinoma",
            ),
        ),
        resections=("PROSTATE AND SEMINAL VESICLES, RADICAL PROSTATECTOMY",),
        biopsies=(
            "PROSTATE, LEFT BASE, NEEDLE CORE BIOPSY",
            "PROSTATE, RIGHT MID, MRI-TARGETED BIOPSY (PI-RADS 4 LESION)",
        ),
        grades=(
            "Gleason score 3+4=7 (Grade Group 2), pattern 4 approximately 20%",
            "Gleason score 4+3=7 (Grade Group 3)",
            "Gleason score 4+4=8 (Grade Group 4)",
        ),
        stages=(
            _s("T2", "N0", "IIB"),
            _s("T2", "N0", "IIC"),
            _s("T3a", "N0", "IIIB"),
            _s("T3b", "N0", "IIIB"),
        ),
        panel="",
        sites=("C79.5", "C78.7"),
        origin="prostatic",
        immunoprofile="NKX3.1 positive, PSA positive, GATA3 negative",
        therapies=("leuprolide", "abiraterone with prednisone", "enzalutamide", "docetaxel"),
    ),
    _Cancer(
        key="melanoma",
        icd10="C43",
        sex=None,
        organs=("left upper back", "right forearm", "scalp", "left calf", "right shoulder"),
        disease=(),
        histologies=(
            _h("8720/3", ("Malignant melanoma", "Invasive melanoma"), "Metastatic melanoma"),
            _h(
                "8743/3",
                ("Superficial spreading melanoma", "Invasive melanoma, superficial spreading type"),
                "Metastatic melanoma",
                "8720/3",
            ),
            _h("8721/3", ("Nodular melanoma",), "Metastatic melanoma", "8720/3"),
        ),
        resections=("SKIN, {ORGAN}, WIDE LOCAL EXCISION", "SKIN, {ORGAN}, EXCISION"),
        biopsies=("SKIN, {ORGAN}, SHAVE BIOPSY", "SKIN, {ORGAN}, PUNCH BIOPSY"),
        grades=(
            "Breslow thickness 0.6 mm; ulceration not identified; mitotic rate 1/mm2",
            "Breslow thickness 1.8 mm; ulceration present; mitotic rate 4/mm2",
            "Breslow thickness 3.2 mm; ulceration not identified; mitotic rate 6/mm2",
        ),
        stages=(
            _s("T1a", "N0", "IA"),
            _s("T2a", "N0", "IB"),
            _s("T3a", "N0", "IIA"),
            _s("T3b", "N0", "IIB"),
            _s("T4b", "N0", "IIC"),
            _s("T2a", "N1a", "IIIA"),
            _s("T3b", "N2b", "IIIC"),
        ),
        panel="",
        sites=("C78.0", "C79.3", "C78.7"),
        origin="cutaneous melanoma",
        immunoprofile="SOX10 positive, Melan-A positive, HMB-45 positive, cytokeratin negative",
        therapies=(
            "nivolumab",
            "pembrolizumab",
            "ipilimumab and nivolumab",
            "dabrafenib and trametinib",
        ),
    ),
    _Cancer(
        key="kidney",
        icd10="C64",
        sex=None,
        organs=("left kidney", "right kidney"),
        disease=("kidney cancer", "renal cancer"),
        histologies=(
            _h(
                "8310/3",
                ("Clear cell renal cell carcinoma", "Renal cell carcinoma, clear cell type"),
                "Metastatic clear cell renal cell carcinoma",
            ),
            _h(
                "8260/3",
                ("Papillary renal cell carcinoma",),
                "Metastatic papillary renal cell carcinoma",
            ),
        ),
        resections=("{ORGAN}, RADICAL NEPHRECTOMY", "{ORGAN}, PARTIAL NEPHRECTOMY"),
        biopsies=("{ORGAN}, UPPER POLE MASS, CORE BIOPSY",),
        grades=("WHO/ISUP nucleolar grade 2", "WHO/ISUP nucleolar grade 3"),
        stages=(
            _s("T1a", "N0", "I"),
            _s("T1b", "N0", "I"),
            _s("T2a", "N0", "II"),
            _s("T3a", "N0", "III"),
            _s("T3a", "N1", "III"),
        ),
        panel="",
        sites=("C78.0", "C79.5", "C79.3"),
        origin="renal",
        immunoprofile="PAX8 positive, CA-IX positive (membranous), CD10 positive",
        therapies=("pembrolizumab and axitinib", "cabozantinib", "nivolumab and ipilimumab"),
    ),
    _Cancer(
        key="bladder",
        icd10="C67",
        sex=None,
        organs=("bladder", "urinary bladder", "bladder dome"),
        disease=("bladder cancer",),
        histologies=(
            _h(
                "8120/3",
                ("Invasive urothelial carcinoma", "Urothelial carcinoma, high grade, invasive"),
                "Metastatic urothelial carcinoma",
            ),
        ),
        resections=(
            "URINARY BLADDER, RADICAL CYSTECTOMY",
            "BLADDER AND PROSTATE, CYSTOPROSTATECTOMY",
        ),
        biopsies=("BLADDER, LEFT LATERAL WALL TUMOR, TRANSURETHRAL RESECTION (TURBT)",),
        grades=("High grade",),
        stages=(
            _s("T2a", "N0", "II"),
            _s("T2b", "N0", "II"),
            _s("T3a", "N0", "IIIA"),
            _s("T2", "N1", "IIIA"),
            _s("T3b", "N2", "IIIB"),
        ),
        panel="cps",
        sites=("C78.0", "C79.5", "C78.7"),
        origin="urothelial",
        immunoprofile="GATA3 positive, p63 positive, CK7 positive, CK20 positive",
        therapies=("gemcitabine and cisplatin", "enfortumab vedotin and pembrolizumab"),
    ),
    _Cancer(
        key="pancreas",
        icd10="C25",
        sex=None,
        organs=("pancreatic head", "pancreatic tail", "pancreatic body"),
        disease=("pancreatic cancer",),
        histologies=(
            _h(
                "8500/3",
                ("Ductal adenocarcinoma", "Pancreatic ductal adenocarcinoma"),
                "Metastatic adenocarcinoma",
                "8140/3",
            ),
        ),
        resections=(
            "PANCREAS, {ORGAN} MASS, RESECTION",
            "{ORGAN}, PANCREATECTOMY",
        ),
        biopsies=("PANCREAS, {ORGAN} MASS, EUS-GUIDED FINE NEEDLE BIOPSY",),
        grades=("G2: Moderately differentiated", "G3: Poorly differentiated"),
        stages=(
            _s("T1c", "N0", "IA"),
            _s("T2", "N0", "IB"),
            _s("T3", "N0", "IIA"),
            _s("T2", "N1", "IIB"),
            _s("T2", "N2", "III"),
        ),
        panel="",
        sites=("C78.7", "C78.6", "C78.0"),
        origin="pancreatic",
        immunoprofile="CK7 positive, CK19 positive, SMAD4 loss, CK20 negative",
        therapies=("FOLFIRINOX", "gemcitabine and nab-paclitaxel"),
    ),
    _Cancer(
        key="ovary",
        icd10="C56",
        sex="female",
        organs=("right ovary", "left ovary"),
        disease=("ovarian cancer",),
        histologies=(
            _h(
                "8461/3",
                ("High-grade serous carcinoma", "Serous carcinoma, high grade"),
                "Metastatic high-grade serous carcinoma",
            ),
        ),
        resections=(
            "UTERUS, CERVIX, BILATERAL OVARIES AND FALLOPIAN TUBES, TOTAL HYSTERECTOMY AND BSO",
        ),
        biopsies=("{ORGAN} MASS, CT-GUIDED CORE BIOPSY",),
        grades=("High grade",),
        stages=(
            _s("T1a", "N0", "IA"),
            _s("T1c", "N0", "IC"),
            _s("T2b", "N0", "IIB"),
            _s("T3c", "N0", "IIIC"),
            _s("T3b", "N1", "IIIB"),
        ),
        panel="",
        sites=("C78.7", "C78.0"),
        origin="Mullerian (tubo-ovarian)",
        immunoprofile="PAX8 positive, WT1 positive, p53 aberrant (null pattern)",
        therapies=("carboplatin and paclitaxel", "olaparib maintenance", "niraparib"),
        figo=True,
    ),
    _Cancer(
        key="stomach",
        icd10="C16",
        sex=None,
        organs=("gastric antrum", "gastric body", "gastric cardia"),
        disease=("gastric cancer", "stomach cancer"),
        histologies=(
            _ADENO,
            _h(
                "8490/3",
                ("Signet ring cell carcinoma", "Poorly cohesive carcinoma, signet ring cell type"),
                "Metastatic signet ring cell carcinoma",
            ),
        ),
        resections=(
            "STOMACH ({ORGAN}), DISTAL GASTRECTOMY",
            "STOMACH ({ORGAN}), TOTAL GASTRECTOMY",
        ),
        biopsies=("STOMACH ({ORGAN}), ULCERATED MASS, ENDOSCOPIC BIOPSY",),
        grades=("G2: Moderately differentiated", "G3: Poorly differentiated"),
        stages=(
            _s("T1b", "N0", "IA"),
            _s("T2", "N0", "IB"),
            _s("T3", "N1", "IIB"),
            _s("T4a", "N2", "IIIA"),
        ),
        panel="cps",
        sites=("C78.7", "C78.6"),
        origin="gastric",
        immunoprofile="CK7 positive, CDX2 positive (patchy), CK20 focally positive",
        therapies=("FOLFOX and nivolumab", "ramucirumab and paclitaxel"),
    ),
)

# How text names each distant site: nouns ("hepatic metastases") and "metastatic to X".
SITE_NOUNS: Final[dict[str, tuple[str, ...]]] = {
    "C78.0": (
        "pulmonary metastases",
        "lung metastases",
        "lung mets",
        "pulmonary metastatic nodules",
    ),
    "C78.6": ("peritoneal metastases", "peritoneal carcinomatosis", "peritoneal mets"),
    "C78.7": ("liver metastases", "hepatic metastases", "liver mets", "hepatic metastatic disease"),
    "C79.3": ("brain metastases", "brain mets", "intracranial metastases", "cerebral metastases"),
    "C79.5": ("bone metastases", "osseous metastases", "bone mets", "skeletal metastases"),
    "C79.7": ("adrenal metastasis", "adrenal metastases", "adrenal mets"),
}
SITE_TO: Final[dict[str, tuple[str, ...]]] = {
    "C78.0": ("lung", "the lungs"),
    "C78.6": ("peritoneum", "the peritoneum"),
    "C78.7": ("liver", "the liver"),
    "C79.3": ("brain", "the brain"),
    "C79.5": ("bone", "bones", "the skeleton"),
    "C79.7": ("adrenal gland", "the left adrenal gland"),
}
SITE_SPECIMENS: Final[dict[str, tuple[str, ...]]] = {
    "C78.0": (
        "LUNG, RIGHT LOWER LOBE NODULE, WEDGE RESECTION",
        "LUNG, LEFT UPPER LOBE NODULE, CORE BIOPSY",
    ),
    "C78.6": ("PERITONEUM, OMENTAL NODULE, BIOPSY", "PERITONEUM, PELVIC SIDEWALL IMPLANT, BIOPSY"),
    "C78.7": (
        "LIVER, SEGMENT 6 LESION, CT-GUIDED CORE BIOPSY",
        "LIVER, SEGMENT 4 MASS, ULTRASOUND-GUIDED BIOPSY",
    ),
    "C79.3": (
        "BRAIN, LEFT FRONTAL MASS, CRANIOTOMY AND RESECTION",
        "BRAIN, RIGHT CEREBELLAR MASS, RESECTION",
    ),
    "C79.5": (
        "BONE, LEFT ILIAC CREST LESION, CT-GUIDED CORE BIOPSY",
        "BONE, T10 VERTEBRAL BODY LESION, CORE BIOPSY",
    ),
    "C79.7": ("LEFT ADRENAL GLAND, MASS, CT-GUIDED CORE BIOPSY",),
}
# Negated sites, as imaging reports them: (phrase, trailing words).
SITE_NEGATIONS: Final[dict[str, tuple[str, ...]]] = {
    "C78.0": ("no evidence of pulmonary metastases", "no pulmonary metastatic disease"),
    "C78.6": ("no evidence of peritoneal metastases", "no peritoneal carcinomatosis"),
    "C78.7": ("no evidence of hepatic metastases", "no liver metastases"),
    "C79.3": ("no evidence of intracranial metastatic disease", "no brain metastases"),
    "C79.5": ("no scintigraphic evidence of osseous metastases", "no osseous metastatic disease"),
    "C79.7": ("no adrenal metastases", "no evidence of adrenal metastasis"),
}
SITE_EXAMS: Final[dict[str, str]] = {
    "C78.0": "CT chest",
    "C78.6": "CT abdomen/pelvis",
    "C78.7": "MRI abdomen with contrast",
    "C79.3": "MRI brain with and without contrast",
    "C79.5": "Whole-body bone scan",
    "C79.7": "CT abdomen",
}
# Uncertain findings: (phrase carrying the trap, exam).
SITE_POSSIBLE: Final[dict[str, tuple[str, ...]]] = {
    "C78.0": (
        "nonspecific 4 mm right lower lobe nodule; metastasis cannot be excluded",
        "new 5 mm pulmonary nodule, indeterminate, possibly metastatic",
    ),
    "C78.6": (
        "trace ascites with subtle omental stranding, cannot rule out peritoneal metastases",
    ),
    "C78.7": (
        "5 mm hepatic hypodensity, too small to characterize; metastasis cannot be excluded",
        "new segment 8 liver lesion, suspicious for metastasis",
    ),
    "C79.3": (
        "punctate focus of enhancement in the right parietal lobe, possibly a small metastasis",
    ),
    "C79.5": (
        "sclerotic focus in the L2 vertebral body, suspicious for osseous metastasis",
        "indeterminate uptake in the left 6th rib, cannot rule out bone metastasis",
    ),
    "C79.7": ("1.4 cm left adrenal nodule, indeterminate; adrenal metastasis not excluded",),
}

GLOBAL_NEGATIONS: Final = (
    "No evidence of metastatic disease.",
    "No evidence of distant metastatic disease.",
    "No distant metastases identified.",
    "No findings to suggest distant metastases.",
)
GLOBAL_POSSIBLE: Final = (
    "cannot rule out metastatic disease",
    "findings are concerning for metastatic disease",
    "possible early metastatic disease",
)

STATUS_IMAGING: Final[dict[str, tuple[str, ...]]] = {
    "progression": (
        "interval progression of {sites}",
        "interval enlargement of {sites}, consistent with progressive disease per RECIST 1.1",
        "increase in size and number of {sites}, compatible with disease progression",
    ),
    "stable": (
        "no significant interval change in {sites}; stable disease per RECIST 1.1",
        "{sites} are unchanged; stable disease",
        "stable appearance of {sites}, consistent with stable disease (SD) by RECIST",
    ),
    "partial-response": (
        "interval decrease in size of {sites}, consistent with partial response",
        "{sites} have decreased by approximately 45% (sum of diameters); partial response per "
        "RECIST 1.1",
        "marked decrease in {sites}; partial response",
    ),
}
STATUS_LOCAL: Final[dict[str, tuple[str, ...]]] = {
    "progression": (
        "interval enlargement of the primary {organ} mass, consistent with disease progression",
        "progressive disease at the primary site ({organ})",
    ),
    "stable": ("the {organ} primary is unchanged in size; stable disease",),
    "partial-response": (
        "interval decrease of the {organ} primary from 4.1 to 2.2 cm, consistent with partial "
        "response",
        "partial response of the {organ} primary to neoadjuvant therapy",
    ),
    "complete-response": (
        "no evidence of disease",
        "complete metabolic response; no residual FDG-avid disease",
    ),
}
STATUS_ASSESSMENT: Final[dict[str, tuple[str, ...]]] = {
    "progression": (
        "Progression of disease on current therapy.",
        "Disease progression.",
        "PD per RECIST 1.1.",
    ),
    "stable": (
        "Stable disease.",
        "Disease remains stable on current therapy.",
        "Stable disease per RECIST.",
    ),
    "partial-response": (
        "Partial response to therapy.",
        "Continued partial response.",
        "Partial response (PR per RECIST 1.1).",
    ),
    "complete-response": (
        "Remains NED.",
        "No evidence of disease.",
        "Complete response, maintained.",
    ),
}

# Hard cases: what they claim, and the words.
FAMILY: Final[tuple[tuple[str, str], ...]] = (
    ("C50", "Mother had breast cancer at age 52."),
    ("C50", "Sister diagnosed with breast cancer in her 40s (BRCA testing negative)."),
    ("C18", "Family history of colon cancer in father, diagnosed at 60."),
    ("C61", "Brother with prostate cancer."),
    ("C56", "Maternal aunt with ovarian cancer."),
    ("C25", "Paternal grandfather had pancreatic cancer."),
    ("C43", "Sister with melanoma, treated with excision."),
    ("C34", "Father died of lung cancer at 70 (heavy smoker)."),
    ("C16", "Paternal uncle had stomach cancer."),
)
HISTORICAL: Final[tuple[tuple[str, str], ...]] = (
    ("C50", "history of breast cancer, status post mastectomy in 2015"),
    ("C50", "remote history of left breast cancer treated with lumpectomy and radiation (2009)"),
    ("C43", "prior history of melanoma of the back, excised in 2011"),
    ("C61", "history of prostate cancer treated with radiation in 2010"),
    ("C18", "history of colon cancer s/p right hemicolectomy in 2012"),
    ("C67", "history of non-muscle-invasive bladder cancer, s/p TURBT and BCG (2016)"),
    ("C64", "history of renal cell carcinoma s/p partial nephrectomy in 2014"),
)
NEGATED_PRIMARY: Final[tuple[tuple[str, str], ...]] = (
    ("C18", "Screening colonoscopy 2023: two tubular adenomas removed, negative for malignancy."),
    (
        "C73",
        "Thyroid nodule FNA 2022: benign follicular nodule (Bethesda II), negative for malignancy.",
    ),
    ("C50", "Diagnostic mammogram and biopsy 2021: fibroadenoma, negative for malignancy."),
    ("C61", "Prostate biopsy 2020: benign prostatic tissue, negative for carcinoma."),
)
HYPOTHETICAL_PROGRESSION: Final = (
    "If there is evidence of progression on the next scan, we will consider {next}.",
    "If the disease progresses, we will consider {next}.",
    "Should she progress, next line would be {next}.",
    "In the event of progression, plan would be {next}.",
)
HYPOTHETICAL_SITE: Final[dict[str, str]] = {
    "C79.3": "Should brain metastases develop, stereotactic radiosurgery would be considered.",
    "C79.5": "If bone metastases develop, would add denosumab.",
    "C78.7": "If liver metastases are found, would discuss liver-directed therapy.",
}
POSSIBLE_RECURRENCE: Final = (
    "Rising CEA, concerning for recurrence; restaging CT ordered.",
    "New right hilar adenopathy on surveillance imaging, concerning for progression versus "
    "reactive nodes.",
    "Equivocal FDG uptake at the surgical bed, cannot rule out recurrence versus post-treatment "
    "change.",
)
RULE_OUT_BRAIN: Final = (
    "MRI brain ordered to rule out brain metastases given new headaches.",
    "Will obtain MRI brain to r/o brain mets.",
)
SURNAMES: Final = (
    "Okafor",
    "Lindqvist",
    "Brennan",
    "Takahashi",
    "Moreau",
    "Castillo",
    "Novak",
    "Haddad",
    "Ivanova",
    "Mensah",
    "Kowalczyk",
    "Delacroix",
    "Whitfield",
    "Oyelaran",
    "Sato",
    "Pereira",
)
HISTORY_EVENTS: Final = (
    "Surgical resection",
    "Multidisciplinary tumor board review",
    "Started systemic therapy",
)
PATHOLOGISTS: Final = ("A. Rahman, MD", "L. Chen, MD", "M. Osei, MD", "J. Kaur, MD", "R. Vidal, MD")
ONCOLOGISTS: Final = ("S. Park, MD", "D. Adeyemi, MD", "K. Moreno, MD", "T. Nakamura, MD, PhD")


# --- Building a document ----------------------------------------------------------------------


@dataclass
class _Draft:
    """A document being written: its lines, and what they state."""

    lines: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)
    traps: list[Trap] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def blank(self) -> None:
        if self.lines and self.lines[-1]:
            self.lines.append("")

    def section(self, header: str, *lines: str) -> None:
        self.blank()
        self.lines.append(header)
        self.lines.extend(lines)

    def state(self, facts: dict[str, str]) -> None:
        for attribute, value in facts.items():
            held = self.facts.setdefault(attribute, value)
            if held != value:
                raise ValueError(f"{attribute} stated as {held!r} and {value!r}")

    def trap(self, attribute: str, value: str, assertion: str, phrase: str) -> None:
        self.traps.append(Trap(attribute, value, assertion, phrase))

    def finish(
        self, document_id: str, kind: str, title: str, written: datetime
    ) -> NarrativeDocument:
        text = "\n".join(self.lines).rstrip("\n")
        traps: list[Trap] = []
        for trap in self.traps:
            if trap.phrase not in text:
                raise ValueError(f"trap phrase not in the text: {trap.phrase!r}")
            if self.facts.get(trap.attribute) != trap.value and trap not in traps:
                traps.append(trap)
        expected = tuple(ExpectedFact(a, v) for a, v in sorted(self.facts.items()))
        return NarrativeDocument(document_id, kind, title, text, written, expected, tuple(traps))


@dataclass(frozen=True)
class _Said:
    """A fragment of text and the facts it states."""

    text: str
    facts: dict[str, str] = field(default_factory=dict)
    trap: Trap | None = None


def _said(draft: _Draft, said: _Said) -> str:
    draft.state(said.facts)
    if said.trap is not None:
        draft.traps.append(said.trap)
    return said.text


def _marker(name: str) -> str:
    return concepts.BIOMARKER_PREFIX + name


def _status(positive: bool) -> str:
    return "positive" if positive else "negative"


# --- Biomarkers ---------------------------------------------------------------------------------

ER_LABELS: Final = (
    "Estrogen receptor (ER)",
    "ER",
    "Estrogen receptor",
    "ER (clone SP1)",
    "ER-alpha",
)
PR_LABELS: Final = ("Progesterone receptor (PR)", "PR", "Progesterone receptor (PgR)", "PgR")
HER2_LABELS: Final = (
    "HER2 (IHC)",
    "HER2/neu (IHC, clone 4B5)",
    "HER2 immunohistochemistry",
    "ERBB2 (HER2) by IHC",
)
INTENSITIES: Final = ("strong", "moderate", "moderate to strong", "weak to moderate")
RANGES: Final = ("90-100%", "80-90%", "70-80%", "50-60%")


def _receptor_path(rng: random.Random, name: str) -> _Said:
    labels = ER_LABELS if name == "ER" else PR_LABELS
    label = rng.choice(labels)
    percent_key = concepts.ER_PERCENT if name == "ER" else concepts.PR_PERCENT
    positive = rng.random() < (0.75 if name == "ER" else 0.65)
    status = {_marker(name): _status(positive)}
    if not positive:
        style = rng.randrange(4)
        if style == 0:
            return _Said(f"{label}: Negative (0%)", {**status, percent_key: "0"})
        text = (
            "Negative (<1% staining)",
            "NEGATIVE",
            "Negative (no nuclear staining in tumor cells)",
        )
        return _Said(f"{label}: {text[style - 1]}", status)
    style = rng.randrange(5)
    percent = rng.choice((95, 90, 80, 70, 60, 40, 30, 20, 100, 85))
    intensity = rng.choice(INTENSITIES)
    if style == 0:
        return _Said(
            f"{label}: Positive ({percent}%, {intensity})", {**status, percent_key: str(percent)}
        )
    if style == 1:
        return _Said(
            f"{label}: POSITIVE, {percent}% of invasive tumor cell nuclei, {intensity} intensity",
            {**status, percent_key: str(percent)},
        )
    if style == 2:
        return _Said(f"{label}: Positive ({rng.choice(RANGES)}, {intensity})", status)
    if style == 3:
        proportion = rng.randint(4, 5)
        score = rng.randint(2, 3)
        return _Said(f"{label}: Positive (Allred score {proportion + score}/8)", status)
    low = rng.randint(1, 10)
    return _Said(f"{label}: Low positive ({low}%, weak)", {**status, percent_key: str(low)})


def _receptor_note(rng: random.Random, name: str, positive: bool, percent: bool) -> _Said:
    """ER/PR as a clinician writes it: "ER+ (95%)", "PR-negative", "ER 90%+"."""
    percent_key = concepts.ER_PERCENT if name == "ER" else concepts.PR_PERCENT
    status = {_marker(name): _status(positive)}
    if not positive:
        if percent:
            return _Said(f"{name} negative (0%)", {**status, percent_key: "0"})
        return _Said(rng.choice((f"{name}-", f"{name}-negative", f"{name} negative")), status)
    if percent:
        value = rng.choice((95, 90, 80, 60, 40, 15, 5))
        text = rng.choice(
            (f"{name}+ ({value}%)", f"{name}-positive ({value}%)", f"{name} positive ({value}%)")
        )
        return _Said(text, {**status, percent_key: str(value)})
    return _Said(rng.choice((f"{name}+", f"{name}-positive", f"{name} positive")), status)


def _her2_result(rng: random.Random) -> str:
    return rng.choices(("0", "1+", "2+neg", "2+amp", "2+pending", "3+"), (15, 30, 20, 8, 10, 17))[0]


def _fish(rng: random.Random, amplified: bool) -> _Said:
    if amplified:
        ratio = rng.choice(("2.6", "3.4", "4.8", "2.2"))
        text = rng.choice(
            (
                f"HER2 FISH: Amplified (HER2/CEP17 ratio {ratio}; average HER2 copy number 6.8 "
                "signals/cell)",
                f"HER2 by FISH (dual probe): POSITIVE (amplified), ratio {ratio}",
            )
        )
        return _Said(text, {concepts.HER2_FISH: "amplified", _marker("HER2"): "positive"})
    ratio = rng.choice(("1.1", "1.3", "1.5", "1.2"))
    text = rng.choice(
        (
            f"HER2 FISH: Not amplified (HER2/CEP17 ratio {ratio}; average HER2 copy number 2.9 "
            "signals/cell)",
            f"HER2 by FISH (dual probe): NEGATIVE (not amplified), ratio {ratio}",
            f"HER2 FISH: Not amplified (ratio {ratio})",
        )
    )
    return _Said(text, {concepts.HER2_FISH: "not-amplified", _marker("HER2"): "negative"})


def _her2_ihc_path(rng: random.Random, result: str) -> _Said:
    label = rng.choice(HER2_LABELS)
    her2 = _marker("HER2")
    if result == "0":
        text = rng.choice(("Negative (score 0)", "0 (Negative)"))
        return _Said(f"{label}: {text}", {concepts.HER2_IHC: "0", her2: "negative"})
    if result == "1+":
        text = rng.choice(("Negative (1+)", "Score 1+, negative", "1+ (Negative; HER2-low)"))
        return _Said(f"{label}: {text}", {concepts.HER2_IHC: "1+", her2: "negative"})
    if result == "3+":
        text = rng.choice(("Positive (3+)", "3+ (Positive)", "POSITIVE, score 3+"))
        return _Said(f"{label}: {text}", {concepts.HER2_IHC: "3+", her2: "positive"})
    phrase = rng.choice(("Equivocal (2+)", "EQUIVOCAL (score 2+)", "2+ (Equivocal)"))
    return _Said(
        f"{label}: {phrase}", {concepts.HER2_IHC: "2+"}, Trap(her2, "positive", "possible", phrase)
    )


def _her2_path(draft: _Draft, rng: random.Random, result: str) -> tuple[list[str], list[str]]:
    """HER2 lines of the biomarker section, and of an addendum (FISH reported later)."""
    lines = [_said(draft, _her2_ihc_path(rng, result))]
    if result in ("2+neg", "2+amp"):
        fish = _said(draft, _fish(rng, result == "2+amp"))
        if rng.random() < 0.5:
            return lines, ["Reflex HER2 FISH (performed on block A1):", fish]
        lines.append(fish)
    elif result == "2+pending":
        lines.append(
            "Reflex HER2 FISH has been requested; results will be reported in an addendum."
        )
    return lines, []


def _her2_note(rng: random.Random, result: str) -> _Said:
    her2 = _marker("HER2")
    if result == "0":
        return _Said(
            rng.choice(("HER2 0 by IHC", "HER2-negative (IHC 0)")),
            {concepts.HER2_IHC: "0", her2: "negative"},
        )
    if result == "1+":
        text = rng.choice(("HER2 1+", "HER2-low (IHC 1+)", "HER2 negative (1+)"))
        return _Said(text, {concepts.HER2_IHC: "1+", her2: "negative"})
    if result == "3+":
        text = rng.choice(("HER2 3+", "HER2-positive (IHC 3+)", "HER2+ (3+ by IHC)"))
        return _Said(text, {concepts.HER2_IHC: "3+", her2: "positive"})
    if result == "2+neg":
        text = rng.choice(
            ("HER2 2+ by IHC, FISH not amplified", "HER2 2+ (IHC), FISH non-amplified (ratio 1.4)")
        )
        return _Said(
            text, {concepts.HER2_IHC: "2+", concepts.HER2_FISH: "not-amplified", her2: "negative"}
        )
    if result == "2+amp":
        text = rng.choice(
            ("HER2 2+ by IHC, FISH amplified (ratio 2.9)", "HER2 IHC 2+ with FISH amplification")
        )
        return _Said(
            text, {concepts.HER2_IHC: "2+", concepts.HER2_FISH: "amplified", her2: "positive"}
        )
    phrase = rng.choice(("HER2 2+ (equivocal)", "HER2 equivocal (IHC 2+)"))
    return _Said(
        f"{phrase}, FISH pending",
        {concepts.HER2_IHC: "2+"},
        Trap(her2, "positive", "possible", phrase),
    )


def _breast_path(draft: _Draft, rng: random.Random) -> tuple[list[str], list[str]]:
    er = _receptor_path(rng, "ER")
    pr = _receptor_path(rng, "PR")
    if rng.random() < 0.15 and er.facts[_marker("ER")] != pr.facts[_marker("PR")]:
        # One line for both receptors: "ER negative; PR positive (5%)".
        er_said = _receptor_note(rng, "ER", er.facts[_marker("ER")] == "positive", False)
        pr_value = rng.randint(1, 30)
        pr_positive = pr.facts[_marker("PR")] == "positive"
        pr_text = f"PR positive ({pr_value}%)" if pr_positive else "PR negative"
        pr_facts = {_marker("PR"): _status(pr_positive)}
        if pr_positive:
            pr_facts[concepts.PR_PERCENT] = str(pr_value)
        lines = [
            f"Hormone receptors: {_said(draft, er_said)}; {_said(draft, _Said(pr_text, pr_facts))}"
        ]
    else:
        lines = [_said(draft, er), _said(draft, pr)]
    her2_lines, addendum = _her2_path(draft, rng, _her2_result(rng))
    lines += her2_lines
    if rng.random() < 0.5:
        lines.append(f"Ki-67 proliferation index: {rng.choice((5, 10, 15, 25, 40, 70))}%")
    return lines, addendum


PDL1_CLONES: Final = ("PD-L1 (22C3 pharmDx)", "PD-L1 IHC (22C3)", "PD-L1 (SP263)", "PD-L1 (22C3)")


def _pdl1_path(rng: random.Random) -> _Said:
    clone = rng.choice(PDL1_CLONES)
    pdl1 = _marker("PD-L1")
    score = rng.choice((None, None, 0, 1, 5, 10, 20, 35, 50, 60, 80, 90, 95))
    if score is None:
        text = rng.choice(
            (
                f"{clone} TPS: <1%",
                f"{clone}: Negative (TPS <1%)",
                f"{clone}: Tumor proportion score <1%",
            )
        )
        return _Said(text, {pdl1: "negative"})
    facts = {pdl1: _status(score >= 1), concepts.PDL1_TPS: str(score)}
    text = rng.choice(
        (
            f"{clone} TPS: {score}%",
            f"{clone}: Tumor proportion score (TPS) {score}%",
            f"{clone}: {score}% of viable tumor cells show membranous staining (TPS {score}%)",
        )
    )
    if score >= 50 and rng.random() < 0.5:
        text = f"{clone} TPS: {score}% (high expression)"
    return _Said(text, facts)


def _cps_path(rng: random.Random) -> _Said:
    pdl1 = _marker("PD-L1")
    score = rng.choice((None, 1, 3, 5, 10, 12, 20, 45))
    if score is None:
        return _Said("PD-L1 (22C3) combined positive score (CPS): <1", {pdl1: "negative"})
    text = rng.choice(
        (f"PD-L1 (22C3) CPS: {score}", f"PD-L1 (22C3 pharmDx): Combined positive score {score}")
    )
    return _Said(text, {pdl1: "positive", concepts.PDL1_CPS: str(score)})


EGFR_POSITIVE: Final = (
    "EGFR: Exon 19 deletion detected (p.E746_A750del)",
    "EGFR: L858R mutation detected (exon 21)",
    "EGFR mutation analysis: Exon 19 deletion DETECTED",
)
EGFR_NEGATIVE: Final = (
    "EGFR: Wild-type (no mutation detected in exons 18-21)",
    "EGFR mutation analysis: No mutation detected",
    "EGFR: Not detected",
)
ALK_POSITIVE: Final = (
    "ALK (D5F3) IHC: Positive",
    "ALK fusion (NGS): EML4-ALK detected",
    "ALK rearrangement (FISH): Detected",
)
ALK_NEGATIVE: Final = (
    "ALK (D5F3): Negative",
    "ALK rearrangement (FISH): Not detected",
    "ALK (D5F3) IHC: Negative",
)


def _egfr_alk(rng: random.Random) -> list[_Said]:
    egfr = rng.random() < 0.3
    alk = not egfr and rng.random() < 0.1
    out = [
        _Said(
            rng.choice(EGFR_POSITIVE if egfr else EGFR_NEGATIVE), {_marker("EGFR"): _status(egfr)}
        ),
        _Said(rng.choice(ALK_POSITIVE if alk else ALK_NEGATIVE), {_marker("ALK"): _status(alk)}),
    ]
    if not egfr and not alk and rng.random() < 0.4:
        out.append(
            _Said(
                rng.choice(("KRAS: G12C mutation detected", "ROS1: Negative", "KRAS: Not detected"))
            )
        )
    return out


def _lung_path(draft: _Draft, rng: random.Random) -> tuple[list[str], list[str]]:
    lines = [_said(draft, _pdl1_path(rng))] if rng.random() < 0.85 else []
    molecular = [_said(draft, s) for s in _egfr_alk(rng)] if rng.random() < 0.7 else []
    if molecular and rng.random() < 0.5:
        return lines, [
            "Molecular testing (next-generation sequencing, 50-gene panel), block A2:",
            *molecular,
        ]
    return lines + molecular, []


def _panel_path(draft: _Draft, rng: random.Random, panel: str) -> tuple[list[str], list[str]]:
    if panel == "breast":
        return _breast_path(draft, rng)
    if panel == "lung":
        return _lung_path(draft, rng)
    if panel == "cps" and rng.random() < 0.6:
        return [_said(draft, _cps_path(rng))], []
    return [], []


def _breast_note(draft: _Draft, rng: random.Random) -> str:
    er_positive = rng.random() < 0.75
    pr_positive = (er_positive and rng.random() < 0.8) or rng.random() < 0.1
    her2 = _her2_result(rng)
    if not er_positive and not pr_positive and her2 in ("0", "1+") and rng.random() < 0.5:
        negative = {_marker(m): "negative" for m in ("ER", "PR", "HER2")}
        return _said(
            draft,
            _Said(rng.choice(("triple-negative", "triple negative (ER-/PR-/HER2-)")), negative),
        )
    detail = rng.random() < 0.5
    parts = [
        _said(draft, _receptor_note(rng, "ER", er_positive, detail)),
        _said(draft, _receptor_note(rng, "PR", pr_positive, detail)),
    ]
    if not detail and her2 in ("0", "1+", "3+") and rng.random() < 0.6:
        her2_positive = her2 == "3+"
        parts.append(
            _said(
                draft,
                _Said(
                    "HER2+" if her2_positive else "HER2-", {_marker("HER2"): _status(her2_positive)}
                ),
            )
        )
        return "/".join(parts)
    parts.append(_said(draft, _her2_note(rng, her2)))
    return ", ".join(parts)


def _lung_note(draft: _Draft, rng: random.Random) -> str:
    parts: list[str] = []
    egfr = rng.random() < 0.3
    if egfr:
        text = rng.choice(
            ("EGFR exon 19 deletion", "EGFR L858R-mutant", "EGFR-mutant (exon 19 del)")
        )
    else:
        text = rng.choice(("EGFR wild-type", "EGFR negative", "no EGFR mutation detected"))
    parts.append(_said(draft, _Said(text, {_marker("EGFR"): _status(egfr)})))
    if not egfr:
        alk = rng.random() < 0.1
        text = rng.choice(
            ("ALK-positive", "ALK rearranged (EML4-ALK)")
            if alk
            else ("ALK-negative", "ALK rearrangement not detected")
        )
        parts.append(_said(draft, _Said(text, {_marker("ALK"): _status(alk)})))
    if rng.random() < 0.7:
        score = rng.choice((None, 5, 20, 50, 60, 80, 90))
        if score is None:
            said = _Said(
                rng.choice(("PD-L1 <1%", "PD-L1 negative (TPS <1%)")),
                {_marker("PD-L1"): "negative"},
            )
        else:
            facts = {_marker("PD-L1"): "positive", concepts.PDL1_TPS: str(score)}
            said = _Said(rng.choice((f"PD-L1 TPS {score}%", f"PD-L1 {score}% (TPS)")), facts)
        parts.append(_said(draft, said))
    return ", ".join(parts)


def _panel_note(draft: _Draft, rng: random.Random, panel: str) -> str:
    if panel == "breast":
        return _breast_note(draft, rng)
    if panel == "lung":
        return _lung_note(draft, rng)
    if panel == "cps":
        return _said(draft, _cps_path(rng)).replace("PD-L1 (22C3) ", "PD-L1 ")
    return ""


# --- Cases: the patient a document is about ---------------------------------------------------


@dataclass(frozen=True)
class _Case:
    cancer: _Cancer
    histology: _Histology
    stage: _Stage  # at diagnosis; the current one too unless sites is not empty
    sites: tuple[str, ...]  # affirmed distant metastases, now
    recurrence: bool  # metastatic after a stage I-III diagnosis (stage is then historical)
    sex: str
    age: int
    surname: str
    organ: str
    size_cm: str  # "2.1"
    grade: str


def _case(rng: random.Random, metastatic_share: float) -> _Case:
    cancer = rng.choice(CANCERS)
    sex = cancer.sex or rng.choice(("female", "male"))
    sites: tuple[str, ...] = ()
    if rng.random() < metastatic_share:
        count = rng.choices((1, 2, 3), (5, 3, 1))[0]
        sites = tuple(sorted(rng.sample(cancer.sites, min(count, len(cancer.sites)))))
    return _Case(
        cancer=cancer,
        histology=rng.choice(cancer.histologies),
        stage=rng.choice(cancer.stages),
        sites=sites,
        recurrence=bool(sites) and rng.random() < 0.4,
        sex=sex,
        age=rng.randint(38, 86),
        surname=rng.choice(SURNAMES),
        organ=rng.choice(cancer.organs),
        size_cm=f"{rng.randint(6, 58) / 10:.1f}",
        grade=rng.choice(cancer.grades),
    )


def _m1(case: _Case) -> tuple[str, str]:
    """M1 subcategory and stage group for a metastatic case, as AJCC 8th has them."""
    key, sites = case.cancer.key, case.sites
    if key == "lung":
        return ("b", "IVA") if len(sites) == 1 else ("c", "IVB")
    if key in ("colon", "rectum"):
        if "C78.6" in sites:
            return "c", "IVC"
        return ("a", "IVA") if len(sites) == 1 else ("b", "IVB")
    if key == "melanoma":
        letter = "d" if "C79.3" in sites else "b" if sites == ("C78.0",) else "c"
        return letter, "IV"
    if key == "prostate":
        return ("b" if sites == ("C79.5",) else "c"), "IVB"
    if key == "bladder":
        return "b", "IVB"
    if key == "ovary":
        return "b", "IVB"
    return "", "IV"


def _main_number(group: str) -> str:
    for roman, number in (("IV", "4"), ("III", "3"), ("II", "2"), ("I", "1")):
        if group.startswith(roman):
            return number
    raise ValueError(group)


def _arabic(group: str) -> str:
    number = _main_number(group)
    roman = {"4": "IV", "3": "III", "2": "II", "1": "I"}[number]
    return number + group[len(roman) :]


STAGE_FORMS: Final = (
    "stage {roman}",
    "Stage {roman}",
    "stage {arabic}",
    "AJCC stage group {roman}",
    "AJCC 8th edition stage {roman}",
    "clinical stage {roman}",
    "pathologic stage {roman}",
)


def _stage_phrase(rng: random.Random, case: _Case, group: str) -> _Said:
    form = rng.choice(STAGE_FORMS)
    if case.cancer.figo and rng.random() < 0.6:
        form = "FIGO stage {roman}"
    text = form.format(roman=group, arabic=_arabic(group))
    facts = {concepts.STAGE_GROUP: _main_number(group)}
    if group.startswith("IV"):
        facts[concepts.METASTATIC] = "true"
    return _Said(text, facts)


def _tnm_facts(t: str, n: str, m: str | None) -> dict[str, str]:
    facts = {concepts.TNM_T: t, concepts.TNM_N: n}
    if m is not None:
        facts[concepts.TNM_M] = m
        facts[concepts.METASTATIC] = "true" if m == "M1" else "false"
    return facts


def _tnm_note(rng: random.Random, stage: _Stage, m: str | None, m_sub: str = "") -> _Said:
    """TNM as clinicians write it: "pT2N1aM0", "T2 N0 M0", "(pT2 pN1a cM0)", "ypT1c ypN0"."""
    prefix = rng.choice(("p", "c", "", "yp"))
    t = stage.t + stage.t_sub
    n = stage.n + stage.n_sub
    m_text = "" if m is None else m + m_sub
    if rng.random() < 0.5:
        text = f"{prefix}{t}{n}{m_text}" if prefix != "yp" else f"yp{t}yp{n}"
    else:
        parts = [f"{prefix}{t}", f"{prefix}{n}"]
        if m is not None and prefix != "yp":
            parts.append(("c" if prefix else "") + m_text)
        text = " ".join(parts)
    stated_m = None if prefix == "yp" else m
    return _Said(text, _tnm_facts(stage.t, stage.n, stated_m))


# --- Pathology reports ------------------------------------------------------------------------


def _accession(rng: random.Random, written: datetime) -> str:
    return f"S{written:%y}-{rng.randint(1000, 39999):05d}"


def _path_header(draft: _Draft, rng: random.Random, written: datetime) -> None:
    collected = written - timedelta(days=rng.randint(2, 6), hours=rng.randint(0, 8))
    draft.add(
        rng.choice(("SURGICAL PATHOLOGY REPORT", "SURGICAL PATHOLOGY", "PATHOLOGY REPORT")),
        "",
        f"Accession #: {_accession(rng, written)}",
        f"Collected: {collected:%m/%d/%Y %H:%M}",
        f"Received: {collected + timedelta(hours=3):%m/%d/%Y}",
        f"Reported: {written:%m/%d/%Y %H:%M}",
    )


def _person(case: _Case) -> str:
    return f"{case.age}-year-old {'woman' if case.sex == 'female' else 'man'}"


def _clinical_history(draft: _Draft, rng: random.Random, case: _Case, presentation: str) -> None:
    lines = [f"{_person(case)} with {presentation}."]
    extra = rng.random()
    if extra < 0.15:
        lines.append(f"Past medical history includes {_historical_other(draft, rng, case)}.")
    elif extra < 0.25 and not case.sites:
        phrase = "clinical concern for metastatic disease"
        draft.trap(concepts.METASTATIC, "true", "possible", phrase)
        lines.append(f"Staging pending; {phrase}.")
    draft.section(rng.choice(("CLINICAL HISTORY:", "CLINICAL INFORMATION:")), *lines)


_FEMALE_SITES: Final = frozenset({"C50", "C56"})
_MALE_SITES: Final = frozenset({"C61"})


def _possible_for(case: _Case, icd10: str) -> bool:
    """Another cancer the patient could have had: not the current one, and fits their sex."""
    barred = _MALE_SITES if case.sex == "female" else _FEMALE_SITES
    return icd10 != case.cancer.icd10 and icd10 not in barred


def _historical_other(draft: _Draft, rng: random.Random, case: _Case) -> str:
    options = [h for h in HISTORICAL if _possible_for(case, h[0])]
    icd10, phrase = rng.choice(options)
    draft.trap(concepts.PRIMARY_SITE, icd10, "historical", phrase)
    return phrase


def _nodes(rng: random.Random, n: str) -> tuple[int, int]:
    involved = {
        "N0": 0,
        "N1": rng.randint(1, 3),
        "N2": rng.randint(4, 9),
        "N3": rng.randint(10, 14),
    }[n]
    return involved, involved + rng.randint(2, 18)


def _pathologic_stage(draft: _Draft, rng: random.Random, case: _Case) -> list[str]:
    stage = case.stage
    prefix = "yp" if rng.random() < 0.15 else "p"
    t, n = f"{prefix}{stage.t}{stage.t_sub}", f"{prefix}{stage.n}{stage.n_sub}"
    if stage.n == "N0" and rng.random() < 0.2:
        n = rng.choice((f"{prefix}N0(sn)", f"{prefix}N0(i+)", f"{prefix}N0(i-)"))
    draft.state(_tnm_facts(stage.t, stage.n, None))
    style = rng.randrange(3)
    if style == 0:
        lines = [f"Pathologic stage (pTNM, AJCC 8th): {t} {n}"]
    elif style == 1:
        lines = [f"Primary tumor (pT): {t}", f"Regional lymph nodes (pN): {n}"]
    else:
        lines = [f"Pathologic stage classification (pTNM, AJCC 8th Edition): {t} {n}"]
    if rng.random() < 0.4:
        lines.append(
            rng.choice(
                (
                    "Distant metastasis (pM): Not applicable",
                    "pM: Cannot be determined from the submitted specimen(s)",
                )
            )
        )
    if rng.random() < 0.3:
        group = _said(
            draft, _Said(case.stage.group, {concepts.STAGE_GROUP: _main_number(case.stage.group)})
        )
        label = "FIGO stage" if case.cancer.figo else "AJCC anatomic stage group"
        lines.append(f"{label}: {group}")
    if prefix == "yp":
        lines.insert(0, "Treatment effect: Present (residual cancer burden class II)")
    return lines


def _synoptic(
    draft: _Draft, rng: random.Random, case: _Case, histology: str, procedure: str
) -> list[str]:
    involved, examined = _nodes(rng, case.stage.n)
    draft.state({concepts.HISTOLOGY: case.histology.code})
    lines = [
        rng.choice(
            ("SYNOPTIC REPORT", f"SYNOPTIC REPORT - {case.cancer.key.upper()} (CAP protocol)")
        ),
        f"Procedure: {_procedure(procedure)}",
        f"Tumor site: {case.organ.capitalize()}",
        f"Histologic type: {histology}",
        f"Histologic grade: {case.grade}",
        f"Tumor size: {case.size_cm} cm (greatest dimension)",
        f"Lymphovascular invasion: {rng.choice(('Not identified', 'Present', 'Not identified'))}",
        f"Margins: Negative; closest margin {rng.randint(1, 15)} mm",
        f"Regional lymph nodes: {involved} of {examined} involved",
    ]
    if involved and rng.random() < 0.5:
        lines.append(f"Size of largest nodal metastatic deposit: {rng.randint(3, 22)} mm")
    return lines + _pathologic_stage(draft, rng, case)


def _final_part(letter: str, specimen: str, findings: list[str]) -> list[str]:
    return [f"{letter}. {specimen}:", *(f"- {f}" for f in findings)]


def _node_part(rng: random.Random, case: _Case) -> list[str]:
    if case.stage.n != "N0":
        return []
    count = rng.randint(1, 4)
    finding = rng.choice(
        (
            f"{count} lymph node(s), negative for metastatic carcinoma (0/{count}).",
            f"Benign lymph nodes (0/{count}).",
        )
    )
    return _final_part(
        "B",
        rng.choice(("SENTINEL LYMPH NODE(S), EXCISION", "REGIONAL LYMPH NODES, DISSECTION")),
        [finding],
    )


def _liver_part(draft: _Draft, rng: random.Random, case: _Case, letter: str) -> list[str]:
    """A separate liver wedge, negative: the liver is stated free of metastasis."""
    if case.cancer.key not in ("colon", "rectum", "pancreas") or case.sites:
        return []
    phrase = rng.choice(
        ("Negative for metastatic carcinoma", "Negative for metastatic adenocarcinoma")
    )
    draft.state({concepts.METASTATIC_SITE_PREFIX + "C78.7": "false"})
    draft.trap(concepts.METASTATIC_SITE_PREFIX + "C78.7", "true", "negated", phrase)
    finding = rng.choice(
        (
            "Benign biliary hamartoma (von Meyenburg complex).",
            "Focal fibrosis and chronic inflammation.",
        )
    )
    return _final_part(letter, "LIVER, SEGMENT 4 NODULE, WEDGE BIOPSY", [finding, phrase + "."])


def _specimen(rng: random.Random, case: _Case, choices: tuple[str, ...]) -> str:
    return rng.choice(choices).replace("{ORGAN}", case.organ.upper())


_ACRONYMS: Final = ("BSO", "VATS", "TURBT", "CT", "EUS", "MRI", "PI", "WHIPPLE")


def _procedure(specimen: str) -> str:
    """The procedure of a specimen line, in sentence case: "Total hysterectomy and BSO"."""
    words = specimen.rsplit(", ", 1)[-1].lower().capitalize().split(" ")
    return " ".join(w.upper() if w.upper().split("-")[0] in _ACRONYMS else w for w in words)


def _histology_name(rng: random.Random, case: _Case) -> str:
    return rng.choice(case.histology.names)


def _resection(draft: _Draft, rng: random.Random, case: _Case) -> tuple[list[str], list[str]]:
    """Final diagnosis and synoptic report of a resection of the primary."""
    procedure = _specimen(rng, case, case.cancer.resections)
    histology = _histology_name(rng, case)
    draft.state({concepts.PRIMARY_SITE: case.cancer.icd10, concepts.HISTOLOGY: case.histology.code})
    upper = rng.random() < 0.5
    findings = [
        f"{histology.upper() if upper else histology}.",
        f"{case.grade}.",
        f"Tumor size {case.size_cm} cm.",
        "Margins negative.",
        "See synoptic report.",
    ]
    final = _final_part("A", procedure, findings) + _node_part(rng, case)
    final += _liver_part(draft, rng, case, "C" if len(final) > len(findings) + 1 else "B")
    return final, _synoptic(draft, rng, case, histology, procedure)


def _primary_biopsy(draft: _Draft, rng: random.Random, case: _Case) -> tuple[list[str], list[str]]:
    histology = _histology_name(rng, case)
    draft.state({concepts.PRIMARY_SITE: case.cancer.icd10, concepts.HISTOLOGY: case.histology.code})
    findings = [f"{histology.upper()}.", case.grade + "."]
    if rng.random() < 0.5:
        findings.append("See biomarker results below.")
    return _final_part("A", _specimen(rng, case, case.cancer.biopsies), findings), []


def _metastasis_biopsy(
    draft: _Draft, rng: random.Random, case: _Case
) -> tuple[list[str], list[str]]:
    site = case.sites[0]
    name, code = case.histology.metastatic
    draft.state(
        {
            concepts.PRIMARY_SITE: case.cancer.icd10,
            concepts.HISTOLOGY: code,
            concepts.METASTATIC: "true",
            concepts.METASTATIC_SITE_PREFIX + site: "true",
        }
    )
    findings = [
        f"{name.upper()}.",
        f"The immunoprofile ({case.cancer.immunoprofile}) supports origin from the patient's known "
        f"{case.cancer.origin} primary ({case.organ}).",
    ]
    return _final_part("A", rng.choice(SITE_SPECIMENS[site]), findings), []


GROSS: Final = (
    "Received in formalin, labeled with the patient's name and '{label}', is a {a} x {b} x {c} cm "
    "{tissue}. The specimen is inked and serially sectioned. Representative sections are "
    "submitted in cassettes A1-A{n}.",
    "The specimen is received fresh in a container labeled '{label}' and consists of {tissue} "
    "measuring {a} x {b} x {c} cm. Sectioning reveals a firm, tan-white lesion. Submitted "
    "entirely in {n} cassettes.",
)
MICROSCOPIC: Final = (
    "H&E sections show an infiltrative neoplasm with the features summarized above. "
    "Immunohistochemical stains were performed with appropriate controls.",
    "Sections demonstrate {histology} infiltrating desmoplastic stroma. Controls (H&E and IHC) "
    "stain appropriately.",
    "The microscopic findings support the diagnosis above.",
)
COMMENTS: Final = (
    "Case reviewed at intradepartmental consensus conference.",
    "Results were communicated to the ordering provider on the date of this report.",
    "Biomarker testing was performed on formalin-fixed tissue with cold ischemia time < 1 hour "
    "and fixation 6-72 hours (ASCO/CAP guidelines).",
)


def _gross_and_micro(draft: _Draft, rng: random.Random, tissue: str, histology: str) -> None:
    gross = rng.choice(GROSS).format(
        label=tissue.split(",")[0].title(),
        a=rng.randint(1, 14),
        b=rng.randint(1, 9),
        c=rng.randint(1, 5),
        tissue=rng.choice(("fibrofatty tissue", "tan-pink soft tissue", "portion of tissue")),
        n=rng.randint(1, 12),
    )
    draft.section("GROSS DESCRIPTION:", gross)
    micro = rng.choice(MICROSCOPIC).format(histology=histology.lower())
    draft.section("MICROSCOPIC DESCRIPTION:", micro)


def _cancer_pathology(draft: _Draft, rng: random.Random, written: datetime) -> str:
    case = _case(rng, 0.2)
    kind = "metastasis" if case.sites else rng.choice(("resection", "resection", "biopsy"))
    _path_header(draft, rng, written)
    presentation = _presentation(rng, case, kind)
    _clinical_history(draft, rng, case, presentation)
    if kind == "metastasis":
        final, synoptic = _metastasis_biopsy(draft, rng, case)
    elif kind == "resection":
        final, synoptic = _resection(draft, rng, case)
    else:
        final, synoptic = _primary_biopsy(draft, rng, case)
    draft.section("FINAL DIAGNOSIS:", *final)
    if synoptic:
        draft.section(synoptic[0], *synoptic[1:])
    markers, addendum = _panel_path(draft, rng, case.cancer.panel)
    if markers:
        draft.section(
            rng.choice(
                ("BIOMARKER STUDIES (block A1):", "ANCILLARY STUDIES:", "PROGNOSTIC MARKERS:")
            ),
            *markers,
        )
    _gross_and_micro(draft, rng, final[0], case.histology.names[0])
    if rng.random() < 0.6:
        draft.section("COMMENT:", rng.choice(COMMENTS))
    if addendum:
        draft.section(f"ADDENDUM ({(written + timedelta(days=3)):%m/%d/%Y}):", *addendum)
    draft.blank()
    draft.add(f"Electronically signed by: {rng.choice(PATHOLOGISTS)}, {written:%m/%d/%Y}")
    return "Surgical Pathology Report"


def _presentation(rng: random.Random, case: _Case, kind: str) -> str:
    if kind == "metastasis":
        site = case.sites[0]
        noun = rng.choice(("new lesion", "enlarging mass", "FDG-avid lesion"))
        where = SITE_TO[site][0]
        return f"known {case.cancer.origin} primary of the {case.organ} and a {noun} in the {where}"
    return rng.choice(
        (
            f"a {case.size_cm} cm mass of the {case.organ} on imaging",
            f"an abnormal finding of the {case.organ}; biopsy requested",
            f"a lesion of the {case.organ} identified on workup",
        )
    )


BENIGN: Final[tuple[tuple[str, str, str, tuple[str, ...]], ...]] = (
    # (category a naive reader would assert, assertion, trap phrase, final diagnosis lines)
    (
        "C50",
        "negated",
        "Negative for atypia and malignancy",
        ("LEFT BREAST, 3:00, CORE BIOPSY", "Fibroadenoma.", "Negative for atypia and malignancy."),
    ),
    (
        "C18",
        "negated",
        "Negative for high-grade dysplasia and malignancy",
        (
            "COLON, SIGMOID, POLYPECTOMY",
            "Tubular adenoma.",
            "Negative for high-grade dysplasia and malignancy.",
        ),
    ),
    (
        "C61",
        "possible",
        "suspicious for but not diagnostic of adenocarcinoma",
        (
            "PROSTATE, LEFT APEX, NEEDLE CORE BIOPSY",
            "Atypical small acinar proliferation (ASAP), suspicious for but not diagnostic of "
            "adenocarcinoma.",
            "Recommend repeat biopsy.",
        ),
    ),
    (
        "C61",
        "negated",
        "Negative for carcinoma",
        (
            "PROSTATE, RIGHT BASE, NEEDLE CORE BIOPSY",
            "Benign prostatic tissue with focal chronic inflammation.",
            "Negative for carcinoma.",
        ),
    ),
    (
        "C43",
        "negated",
        "Negative for melanoma",
        (
            "SKIN, RIGHT UPPER BACK, SHAVE BIOPSY",
            "Compound nevus with mild architectural atypia.",
            "Negative for melanoma; margins free.",
        ),
    ),
    (
        "C34",
        "negated",
        "Negative for malignancy",
        (
            "LUNG, RIGHT LOWER LOBE NODULE, WEDGE RESECTION",
            "Necrotizing granuloma; AFB and GMS stains pending.",
            "Negative for malignancy.",
        ),
    ),
    (
        "C34",
        "possible",
        "suspicious for non-small cell carcinoma",
        (
            "LUNG, LEFT UPPER LOBE, BRONCHOSCOPIC BIOPSY",
            "Rare atypical cells, suspicious for non-small cell carcinoma.",
            "Insufficient for definitive diagnosis; recommend rebiopsy.",
        ),
    ),
    (
        "C56",
        "negated",
        "Negative for malignancy",
        (
            "LEFT OVARY, LAPAROSCOPIC OOPHORECTOMY",
            "Mature cystic teratoma (dermoid cyst).",
            "Negative for malignancy.",
        ),
    ),
    (
        "C16",
        "negated",
        "negative for dysplasia and malignancy",
        (
            "STOMACH, ANTRUM, BIOPSY",
            "Chronic active gastritis, Helicobacter pylori-associated; negative for dysplasia "
            "and malignancy.",
        ),
    ),
)


def _benign_pathology(draft: _Draft, rng: random.Random, written: datetime) -> str:
    icd10, assertion, phrase, (specimen, *findings) = rng.choice(BENIGN)
    draft.trap(concepts.PRIMARY_SITE, icd10, assertion, phrase)
    _path_header(draft, rng, written)
    history = [
        f"{rng.randint(30, 80)}-year-old with an abnormal finding; "
        f"{specimen.split(',')[0].lower()} sampled."
    ]
    if rng.random() < 0.3:
        family_icd10, family = rng.choice(FAMILY)
        draft.trap(concepts.PRIMARY_SITE, family_icd10, "family", family)
        history.append(family)
    elif rng.random() < 0.2:
        history.append("Rule out malignancy.")
    draft.section("CLINICAL HISTORY:", *history)
    draft.section("FINAL DIAGNOSIS:", *_final_part("A", specimen, findings))
    _gross_and_micro(draft, rng, specimen, "the lesion")
    draft.blank()
    draft.add(f"Electronically signed by: {rng.choice(PATHOLOGISTS)}, {written:%m/%d/%Y}")
    return "Surgical Pathology Report"


# --- Oncology notes ---------------------------------------------------------------------------


def _join(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


def _sites_said(rng: random.Random, sites: tuple[str, ...]) -> _Said:
    facts = {concepts.METASTATIC: "true"}
    facts.update({concepts.METASTATIC_SITE_PREFIX + s: "true" for s in sites})
    if rng.random() < 0.5:
        return _Said("metastatic to " + _join([rng.choice(SITE_TO[s]) for s in sites]), facts)
    return _Said("with " + _join([rng.choice(SITE_NOUNS[s]) for s in sites]), facts)


def _diagnosis(draft: _Draft, rng: random.Random, case: _Case) -> str:
    """The cancer as a clinician names it: "adenocarcinoma of the right upper lobe"."""
    if case.cancer.disease and rng.random() < 0.35:
        return _said(
            draft,
            _Said(rng.choice(case.cancer.disease), {concepts.PRIMARY_SITE: case.cancer.icd10}),
        )
    names = [n for n in case.histology.names if " of " not in n and "," not in n]
    name = rng.choice(names or [case.histology.names[0]])
    facts = {concepts.PRIMARY_SITE: case.cancer.icd10, concepts.HISTOLOGY: case.histology.code}
    return _said(draft, _Said(f"{name[0].lower()}{name[1:]} of the {case.organ}", facts))


def _current_stage(draft: _Draft, rng: random.Random, case: _Case) -> str:
    """The stage the note gives now: the diagnosis's, or IV when metastatic (or none)."""
    if case.sites:
        if rng.random() < 0.4:
            return ""
        m_sub, group = _m1(case)
        stage = _said(draft, _stage_phrase(rng, case, group))
        if rng.random() < 0.3 and not case.recurrence:
            tnm = _said(
                draft,
                _tnm_note(rng, _Stage(case.stage.t, "", case.stage.n, "", group), "M1", m_sub),
            )
            return f"{stage} ({tnm})"
        return stage
    if rng.random() < 0.2:
        return ""
    stage = _said(draft, _stage_phrase(rng, case, case.stage.group))
    if rng.random() < 0.35:
        m = rng.choice((None, "M0"))
        return f"{stage} ({_said(draft, _tnm_note(rng, case.stage, m))})"
    return stage


def _hpi(draft: _Draft, rng: random.Random, case: _Case, therapy: str) -> None:
    title = "Ms." if case.sex == "female" else "Mr."
    stage = _current_stage(draft, rng, case)
    dx = _diagnosis(draft, rng, case)
    metastatic = ""
    if case.sites:
        metastatic = ", " + _said(draft, _sites_said(rng, case.sites))
        if not stage and rng.random() < 0.5:
            dx = "metastatic " + dx
    lead = f"{stage} {dx}" if stage else dx
    context = rng.choice(
        (
            f"on {therapy}, who presents for follow-up",
            f"here for cycle {rng.randint(2, 12)} of {therapy}",
            f"currently receiving {therapy}, seen today to review restaging",
        )
    )
    lines = [f"{title} {case.surname} is a {_person(case)} with {lead}{metastatic}, {context}."]
    markers = _panel_note(draft, rng, case.cancer.panel) if rng.random() < 0.8 else ""
    if markers:
        lines.append(
            rng.choice(
                ("Tumor profile: {m}.", "Biomarkers: {m}.", "Pathology notable for {m}.")
            ).format(m=markers)
        )
    lines.append(
        rng.choice(
            (
                "Reports mild fatigue; appetite stable.",
                "Denies new pain. ECOG 1.",
                "Tolerating treatment well; grade 1 neuropathy.",
                "Some nausea after the last cycle, controlled with ondansetron.",
            )
        )
    )
    draft.section(rng.choice(("HPI:", "History of present illness:")), *lines)


def _oncologic_history(draft: _Draft, rng: random.Random, case: _Case, written: datetime) -> None:
    start = written.year - rng.randint(1, 6)
    if case.recurrence:
        lines = _original_diagnosis(draft, rng, case, start)
        nouns = _join([rng.choice(SITE_NOUNS[s]) for s in case.sites])
        lines.append(
            f"- {written.year}: Restaging imaging showed new {nouns}; biopsy confirmed "
            "metastatic disease."
        )
    else:
        lines = [
            f"- {start}: {rng.choice(('Presented with', 'Workup for', 'Imaging showed'))} a mass "
            f"of the {case.organ}; biopsy confirmed the diagnosis."
        ]
        lines.append(f"- {start}: {rng.choice(HISTORY_EVENTS)}.")
    draft.section(
        rng.choice(("Oncologic history:", "Oncology history:", "ONCOLOGIC HISTORY:")), *lines
    )


def _original_diagnosis(draft: _Draft, rng: random.Random, case: _Case, year: int) -> list[str]:
    stage = case.stage
    stage_text = rng.choice(("stage {roman}", "Stage {roman}", "stage {arabic}")).format(
        roman=stage.group, arabic=_arabic(stage.group)
    )
    tnm = f"p{stage.t}{stage.t_sub} p{stage.n}{stage.n_sub}"
    phrase = f"Originally diagnosed in {year} with {stage_text} ({tnm}) disease"
    draft.trap(concepts.STAGE_GROUP, _main_number(stage.group), "historical", phrase)
    draft.trap(concepts.TNM_T, stage.t, "historical", phrase)
    draft.trap(concepts.TNM_N, stage.n, "historical", phrase)
    lines = [f"- {phrase}, treated with surgery and adjuvant therapy."]
    if rng.random() < 0.5:
        response = "achieved a complete response"
        draft.trap(concepts.DISEASE_STATUS, "complete-response", "historical", response)
        lines.append(f"- {year + 1}: Completed treatment and {response}; on surveillance.")
    return lines


def _disease_status(case: _Case, rng: random.Random) -> str | None:
    if case.sites:
        return rng.choice(("progression", "stable", "partial-response", None))
    return rng.choice(("partial-response", "complete-response", None, None))


def _imaging(
    draft: _Draft, rng: random.Random, case: _Case, status: str | None, written: datetime
) -> bool:
    """The imaging section; whether it said anything about distant metastasis of its own."""
    when = (written - timedelta(days=rng.randint(2, 12))).strftime("%m/%d/%Y")
    exam = rng.choice(("CT chest/abdomen/pelvis", "CT C/A/P with contrast", "PET/CT"))
    lines: list[str] = []
    if status is not None:
        lines.append(f"{exam} {when}: {_said(draft, _status_finding(rng, case, status))}.")
    negated = [
        s
        for s in SITE_NEGATIONS
        if s not in case.sites and (s, case.cancer.key) != ("C78.0", "lung")
    ]
    if negated and rng.random() < 0.3:
        site = rng.choice(negated)
        phrase = rng.choice(SITE_NEGATIONS[site])
        draft.state({concepts.METASTATIC_SITE_PREFIX + site: "false"})
        draft.trap(concepts.METASTATIC_SITE_PREFIX + site, "true", "negated", phrase)
        lines.append(f"{SITE_EXAMS[site]}: {phrase}.")
        negated.remove(site)
    if negated and rng.random() < 0.3:
        site = rng.choice(negated)
        phrase = rng.choice(SITE_POSSIBLE[site])
        draft.trap(concepts.METASTATIC_SITE_PREFIX + site, "true", "possible", phrase)
        lines.append(f"{SITE_EXAMS[site]}: {phrase}.")
    if not case.sites and status != "complete-response" and rng.random() < 0.45:
        lines.append(f"Staging {exam}: {_global_negation(draft, rng)}")
    if lines:
        draft.section(rng.choice(("Imaging:", "IMAGING:", "Radiology:")), *lines)
    return bool(lines)


def _global_negation(draft: _Draft, rng: random.Random) -> str:
    sentence = rng.choice(GLOBAL_NEGATIONS)
    draft.state({concepts.METASTATIC: "false"})
    draft.trap(concepts.METASTATIC, "true", "negated", sentence.rstrip("."))
    return sentence


def _status_finding(rng: random.Random, case: _Case, status: str) -> _Said:
    facts = {concepts.DISEASE_STATUS: status}
    if case.sites and status in STATUS_IMAGING:
        nouns = _join([rng.choice(SITE_NOUNS[s]) for s in case.sites])
        facts.update(_sites_said(rng, case.sites).facts)
        return _Said(rng.choice(STATUS_IMAGING[status]).format(sites=nouns), facts)
    return _Said(rng.choice(STATUS_LOCAL[status]).format(organ=case.organ), facts)


def _past_history(draft: _Draft, rng: random.Random, case: _Case) -> None:
    items = rng.sample(
        ("hypertension", "hyperlipidemia", "type 2 diabetes", "hypothyroidism", "GERD", "COPD"), 2
    )
    text = ", ".join(items)
    lines = [text[0].upper() + text[1:]]
    roll = rng.random()
    if roll < 0.25:
        lines[0] += f"; {_historical_other(draft, rng, case)}"
    elif roll < 0.4:
        options = [n for n in NEGATED_PRIMARY if _possible_for(case, n[0])]
        icd10, sentence = rng.choice(options)
        phrase = sentence[sentence.index("negative for") :].rstrip(".")
        draft.trap(concepts.PRIMARY_SITE, icd10, "negated", phrase)
        lines.append(sentence)
    draft.section(rng.choice(("Past medical history:", "PMH:")), *lines)


def _family_history(draft: _Draft, rng: random.Random, case: _Case) -> None:
    if rng.random() < 0.4:
        icd10, sentence = rng.choice([f for f in FAMILY if f[0] != case.cancer.icd10])
        draft.trap(concepts.PRIMARY_SITE, icd10, "family", sentence.rstrip("."))
        line = sentence
    else:
        line = rng.choice(
            (
                "Noncontributory.",
                "Mother with hypertension; father with coronary artery disease.",
                "No family history of malignancy.",
            )
        )
    draft.section(rng.choice(("Family history:", "FAMILY HISTORY:")), line)


def _plan(draft: _Draft, rng: random.Random, case: _Case, status: str | None, therapy: str) -> None:
    sex = "F" if case.sex == "female" else "M"
    lines = [f"{case.age}{sex} as above."]
    if case.cancer.disease and rng.random() < 0.5:
        disease = _said(
            draft, _Said(case.cancer.disease[0], {concepts.PRIMARY_SITE: case.cancer.icd10})
        )
        lines = [f"{case.age}{sex} with {disease} as above."]
    if status is not None:
        lines.append(
            _said(
                draft,
                _Said(rng.choice(STATUS_ASSESSMENT[status]), {concepts.DISEASE_STATUS: status}),
            )
        )
    lines.append(
        rng.choice(
            (
                f"Continue {therapy}.",
                f"Proceed with {therapy} today; labs reviewed and adequate.",
                f"Continue {therapy}; dose unchanged.",
            )
        )
    )
    lines += _plan_traps(draft, rng, case, status)
    lines.append(
        rng.choice(
            (
                "RTC in 3 weeks with labs.",
                "Return to clinic in 4 weeks.",
                "Follow up after next restaging scans.",
            )
        )
    )
    draft.section(rng.choice(("Assessment and Plan:", "ASSESSMENT AND PLAN:", "A/P:")), *lines)


def _plan_traps(draft: _Draft, rng: random.Random, case: _Case, status: str | None) -> list[str]:
    lines: list[str] = []
    if status != "progression" and rng.random() < 0.4:
        sentence = rng.choice(HYPOTHETICAL_PROGRESSION).format(
            next=rng.choice(case.cancer.therapies)
        )
        if case.sex == "male":
            sentence = sentence.replace("Should she", "Should he")
        draft.trap(concepts.DISEASE_STATUS, "progression", "hypothetical", sentence.split(",")[0])
        lines.append(sentence)
    free = [s for s in HYPOTHETICAL_SITE if s not in case.sites]
    if free and rng.random() < 0.2:
        site = rng.choice(free)
        sentence = HYPOTHETICAL_SITE[site]
        draft.trap(
            concepts.METASTATIC_SITE_PREFIX + site, "true", "hypothetical", sentence.split(",")[0]
        )
        lines.append(sentence)
    if "C79.3" not in case.sites and rng.random() < 0.1:
        sentence = rng.choice(RULE_OUT_BRAIN)
        draft.trap(
            concepts.METASTATIC_SITE_PREFIX + "C79.3", "true", "possible", sentence.rstrip(".")
        )
        lines.append(sentence)
    if status is None and rng.random() < 0.3:
        sentence = rng.choice(POSSIBLE_RECURRENCE)
        draft.trap(
            concepts.DISEASE_STATUS, "progression", "possible", sentence.split(";")[0].rstrip(".")
        )
        lines.append(sentence)
    return lines


def _oncology_note(draft: _Draft, rng: random.Random, written: datetime) -> str:
    case = _case(rng, 0.5)
    therapy = rng.choice(case.cancer.therapies)
    status = _disease_status(case, rng)
    title = rng.choice(
        (
            "Hematology/Oncology Progress Note",
            "Oncology Follow-up Visit",
            "Medical Oncology Clinic Note",
        )
    )
    draft.add(
        title.upper(),
        f"Date of service: {written:%m/%d/%Y}",
        f"Provider: {rng.choice(ONCOLOGISTS)}",
    )
    _hpi(draft, rng, case, therapy)
    if rng.random() < 0.7:
        _oncologic_history(draft, rng, case, written)
    _past_history(draft, rng, case)
    _family_history(draft, rng, case)
    draft.section(
        "Physical exam:",
        rng.choice(
            (
                "Well-appearing, no acute distress. Lungs clear. Abdomen soft, nontender.",
                "ECOG 1. No lymphadenopathy. No hepatomegaly.",
            )
        ),
    )
    _imaging(draft, rng, case, status, written)
    _plan(draft, rng, case, status, therapy)
    draft.blank()
    draft.add(f"Electronically signed: {rng.choice(ONCOLOGISTS)} {written:%m/%d/%Y %H:%M}")
    return title


# --- Ordinary notes: no oncology at all --------------------------------------------------------

ORDINARY: Final[tuple[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...]] = (
    (
        "Primary Care Visit",
        (
            "Here for routine follow-up of hypertension and hyperlipidemia. Home BP readings "
            "128-136/78-84.",
            "Annual wellness visit. No acute complaints. Exercising 3 times weekly.",
        ),
        (
            "1. Essential hypertension, well controlled. Continue lisinopril 20 mg daily.",
            "2. Hyperlipidemia. Continue atorvastatin 40 mg nightly; repeat lipid panel in 6 "
            "months.",
            "3. Health maintenance: influenza vaccine given today; colonoscopy 2022 normal, next "
            "due 2032.",
        ),
        ("Return in 6 months, sooner if needed.",),
    ),
    (
        "Diabetes Follow-up",
        (
            "Type 2 diabetes follow-up. Hemoglobin A1c 7.8% (was 8.4% three months ago). Reports "
            "occasional missed evening doses.",
            "Follow-up for type 2 diabetes with peripheral neuropathy. Fasting glucose 140-160 "
            "mg/dL at home.",
        ),
        (
            "1. Type 2 diabetes mellitus, improving. Continue metformin 1000 mg twice daily; add "
            "empagliflozin 10 mg daily.",
            "2. Diabetic foot exam performed: monofilament sensation decreased bilaterally; "
            "podiatry referral.",
            "3. Urine albumin/creatinine ratio and retinal exam ordered.",
        ),
        ("Return in 3 months with A1c. Call if glucose readings exceed 300 mg/dL.",),
    ),
    (
        "Urgent Care Note",
        (
            "Four days of nasal congestion, sore throat and dry cough. No fever, no shortness of "
            "breath. Sick contact at home.",
            "Cough and rhinorrhea for 5 days; low-grade temperature 99.8 F yesterday.",
        ),
        (
            "1. Viral upper respiratory infection. Supportive care: fluids, rest, saline rinses, "
            "acetaminophen as needed.",
            "2. No indication for antibiotics at this time.",
        ),
        ("Return if fever persists beyond 3 days, or if shortness of breath develops.",),
    ),
    (
        "Orthopedic Clinic Note",
        (
            "Right knee pain for 6 weeks after a hiking trip; worse on stairs, ~2 hours of "
            "stiffness after rest.",
            "Left knee pain and swelling, gradual onset over 3 months; no trauma.",
        ),
        (
            "1. Knee pain, likely early osteoarthritis; X-ray shows mild medial joint space "
            "narrowing.",
            "2. Start physical therapy 2x/week for 6 weeks; naproxen 500 mg twice daily with "
            "food as needed.",
            "3. Consider corticosteroid injection if no improvement.",
        ),
        ("Return in 6 weeks, or sooner if locking or instability.",),
    ),
    (
        "Primary Care Visit",
        (
            "Low back pain for 10 days after lifting boxes; no leg weakness, no bowel or bladder "
            "changes.",
            "Acute low back pain with right-sided muscle spasm since the weekend.",
        ),
        (
            "1. Acute mechanical low back pain. No red flags on history or exam.",
            "2. Heat, activity as tolerated, ibuprofen 400 mg three times daily with food for 7 "
            "days.",
        ),
        ("Return if numbness, weakness or incontinence develops.",),
    ),
)
ORDINARY_FAMILY: Final = (
    "Father with type 2 diabetes and myocardial infarction at 62.",
    "Mother with hypertension and osteoarthritis.",
    "Noncontributory.",
    "Sister with asthma.",
)
VITALS: Final = (
    "BP 132/84, HR 76, T 98.4 F, SpO2 98% on room air.",
    "BP 118/72, HR 88, T 99.1 F, RR 16, SpO2 97%.",
    "BP 144/90, HR 70, BMI 31.2.",
)


def _ordinary_note(draft: _Draft, rng: random.Random, written: datetime) -> str:
    title, complaints, plans, returns = rng.choice(ORDINARY)
    age = rng.randint(22, 84)
    draft.add(title.upper(), f"Date of service: {written:%m/%d/%Y}")
    draft.section(
        "Subjective:", f"{age}-year-old {rng.choice(('woman', 'man'))}. {rng.choice(complaints)}"
    )
    draft.section("Family history:", rng.choice(ORDINARY_FAMILY))
    draft.section(
        "Objective:",
        f"Vitals: {rng.choice(VITALS)}",
        "Exam: Alert, no distress. Otherwise as documented.",
    )
    draft.section(
        rng.choice(("Assessment and Plan:", "Assessment/Plan:", "A/P:")), *plans, *returns
    )
    draft.blank()
    draft.add(f"Electronically signed {written:%m/%d/%Y %H:%M}")
    return title


# --- The generator ------------------------------------------------------------------------------

_EPOCH = datetime(2019, 1, 1, tzinfo=UTC)
_SPAN_SECONDS = 6 * 365 * 24 * 3600


def narrative_documents(rng: random.Random, count: int) -> list[NarrativeDocument]:
    """`count` documents drawn from `rng` alone: the same seed gives the same documents."""
    return [_document(rng, index) for index in range(count)]


def _document(rng: random.Random, index: int) -> NarrativeDocument:
    written = _EPOCH + timedelta(seconds=rng.randrange(_SPAN_SECONDS))
    document_id = f"narr-{index + 1:06d}-{rng.getrandbits(32):08x}"
    draft = _Draft()
    roll = rng.random()
    if roll < 0.52:
        kind, title = PATHOLOGY, _cancer_pathology(draft, rng, written)
    elif roll < 0.60:
        kind, title = PATHOLOGY, _benign_pathology(draft, rng, written)
    elif roll < 0.87:
        kind, title = NOTE, _oncology_note(draft, rng, written)
    else:
        kind, title = NOTE, _ordinary_note(draft, rng, written)
    return draft.finish(document_id, kind, title, written)


# --- Renderers ------------------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def renders_as_html(doc: NarrativeDocument) -> bool:
    """Whether its DocumentReference carries HTML: about 30% of notes, fixed per document."""
    return doc.kind == NOTE and zlib.crc32(doc.document_id.encode()) % 10 < 3


def to_html(text: str) -> str:
    """Paragraphs (runs of non-blank lines) as <p>, their lines joined by <br>."""
    paragraphs: list[list[str]] = [[]]
    for line in text.split("\n"):
        if line:
            paragraphs[-1].append(html.escape(line))
        elif paragraphs[-1]:
            paragraphs.append([])
    body = "\n".join(f"<p>{'<br>'.join(p)}</p>" for p in paragraphs if p)
    return f"<!DOCTYPE html>\n<html><body>\n{body}\n</body></html>"


def _loinc(doc: NarrativeDocument) -> tuple[str, str]:
    return PATHOLOGY_STUDY if doc.kind == PATHOLOGY else PROGRESS_NOTE


def to_fhir_document_reference(doc: NarrativeDocument, patient_ref: str) -> dict[str, Any]:
    code, display = _loinc(doc)
    as_html = renders_as_html(doc)
    data = to_html(doc.text) if as_html else doc.text
    return {
        "resourceType": "DocumentReference",
        "id": doc.document_id,
        "status": "current",
        "docStatus": "final",
        "type": {
            "coding": [{"system": LOINC, "code": code, "display": display}],
            "text": doc.title,
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                        "code": "clinical-note",
                    }
                ]
            }
        ],
        "subject": {"reference": patient_ref},
        "date": _iso(doc.written),
        "description": doc.title,
        "content": [
            {
                "attachment": {
                    "contentType": TEXT_HTML if as_html else TEXT_PLAIN,
                    "language": "en-US",
                    "data": _b64(data),
                    "title": doc.title,
                    "creation": _iso(doc.written),
                }
            }
        ],
    }


def final_diagnosis(text: str) -> str:
    """The FINAL DIAGNOSIS section's lines, up to the first blank line."""
    lines = text.split("\n")
    start = lines.index("FINAL DIAGNOSIS:") + 1
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return "\n".join(lines[start:end])


def to_fhir_diagnostic_report(doc: NarrativeDocument, patient_ref: str) -> dict[str, Any]:
    if doc.kind != PATHOLOGY:
        raise ValueError("a DiagnosticReport is rendered for pathology reports only")
    code, display = PATHOLOGY_STUDY
    return {
        "resourceType": "DiagnosticReport",
        "id": doc.document_id,
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "code": "SP",
                        "display": "Surgical Pathology",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": LOINC, "code": code, "display": display}],
            "text": doc.title,
        },
        "subject": {"reference": patient_ref},
        "effectiveDateTime": _iso(doc.written - timedelta(days=3)),
        "issued": _iso(doc.written),
        "conclusion": final_diagnosis(doc.text),
        "presentedForm": [
            {
                "contentType": TEXT_PLAIN,
                "language": "en-US",
                "data": _b64(doc.text),
                "title": doc.title,
            }
        ],
    }


_HL7_ESCAPES: Final = (
    ("\\", "\\E\\"),
    ("|", "\\F\\"),
    ("^", "\\S\\"),
    ("&", "\\T\\"),
    ("~", "\\R\\"),
)


def hl7_escape(text: str) -> str:
    for plain, escaped in _HL7_ESCAPES:
        text = text.replace(plain, escaped)
    return text


def _hl7_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _msh(doc: NarrativeDocument, message_type: str, application: str) -> str:
    control = f"{message_type.split('^')[0]}-{doc.document_id}"
    return (
        f"MSH|^~\\&|{application}|SYNTH|CONCORD|CONCORD|{_hl7_time(doc.written)}||{message_type}|"
        f"{control}|P|2.5.1||||||UNICODE UTF-8"
    )


def _pid(mrn: str) -> str:
    return f"PID|1||{hl7_escape(mrn)}^^^SYNTH^MR"


def _obx_lines(doc: NarrativeDocument, code: tuple[str, str]) -> list[str]:
    identifier = f"{code[0]}^{code[1]}^LN"
    return [
        f"OBX|{number}|TX|{identifier}|1|{hl7_escape(line)}||||||F"
        for number, line in enumerate(doc.text.split("\n"), start=1)
    ]


def _fields(name: str, values: dict[int, str], last: int) -> str:
    return "|".join([name, *(values.get(i, "") for i in range(1, last + 1))])


def to_hl7_oru(doc: NarrativeDocument, mrn: str) -> str:
    """ORU^R01 of a pathology report: one OBX per line of the text (blank lines too)."""
    if doc.kind != PATHOLOGY:
        raise ValueError("an ORU^R01 is rendered for pathology reports only")
    code, display = PATHOLOGY_STUDY
    when = _hl7_time(doc.written)
    obr = _fields(
        "OBR",
        {
            1: "1",
            2: doc.document_id,
            3: doc.document_id,
            4: f"{code}^{display}^LN",
            7: when,
            22: when,
            24: "SP",
            25: "F",
        },
        25,
    )
    segments = [
        _msh(doc, "ORU^R01^ORU_R01", "PATHLAB"),
        _pid(mrn),
        obr,
        *_obx_lines(doc, FINAL_DIAGNOSIS),
    ]
    return "\r".join(segments)


def to_hl7_mdm(doc: NarrativeDocument, mrn: str) -> str:
    """MDM^T02 of a note (a pathology report goes as "SP" under 11526-1): one OBX per line."""
    note = doc.kind == NOTE
    when = _hl7_time(doc.written)
    txa = _fields(
        "TXA",
        {
            1: "1",
            2: "PN" if note else "SP",
            3: "TX",
            4: when,
            6: when,
            12: doc.document_id,
            17: "AU",
            19: "AV",
        },
        19,
    )
    segments = [
        _msh(doc, "MDM^T02^MDM_T02", "EHRNOTES"),
        f"EVN|T02|{when}",
        _pid(mrn),
        "PV1|1|O",
        txa,
        *_obx_lines(doc, PROGRESS_NOTE if note else PATHOLOGY_STUDY),
    ]
    return "\r".join(segments)
