"""The fixed vocabularies of the generator: lab tests, conditions, allergens, nicknames.

Every code here must pass Concord's own code checks (LOINC and SNOMED CT check digits,
ICD-10-CM and RxNorm format): tests/unit/test_generate.py runs each through check_coding,
because a generated set that ingestion rejects measures nothing downstream.
"""

from __future__ import annotations

from dataclasses import dataclass

from concord.ingestion.codes import RXNORM, SNOMED_CT

UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class LabUnit:
    """One way a source reports an analyte: its LOINC code, UCUM unit and precision."""

    loinc: str
    display: str
    unit: str
    factor: float  # value in this unit = conventional value x factor
    decimals: int


@dataclass(frozen=True)
class LabTest:
    """An analyte, with the unit sources that report conventional units use and the SI one.

    Molar and mass concentrations are different LOINC codes (2345-7 mg/dL, 14749-6 mmol/L for
    glucose), so normalization needs its per-analyte factors to see that they agree; a mass
    unit that only changes scale (hemoglobin g/dL vs g/L) keeps its LOINC code.
    """

    key: str
    panel: str  # OBR-4 of the HL7 order that carries it
    conventional: LabUnit
    si: LabUnit
    mean: float  # in conventional units
    spread: float
    low: float
    high: float


_BMP = "51990-0^Basic metabolic panel - Blood^LN"
_CBC = "58410-2^CBC panel - Blood by Automated count^LN"
_LIPID = "57698-3^Lipid panel with direct LDL - Serum or Plasma^LN"
_A1C = "4548-4^Hemoglobin A1c/Hemoglobin.total in Blood^LN"

LAB_TESTS: tuple[LabTest, ...] = (
    LabTest(
        "glucose",
        _BMP,
        LabUnit("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 1.0, 0),
        # 1 mmol/L of glucose (180.16 g/mol) is 18.016 mg/dL.
        LabUnit("14749-6", "Glucose [Moles/volume] in Serum or Plasma", "mmol/L", 1 / 18.016, 1),
        mean=105,
        spread=25,
        low=70,
        high=99,
    ),
    LabTest(
        "creatinine",
        _BMP,
        LabUnit("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 1.0, 2),
        # 1 mg/dL of creatinine (113.12 g/mol) is 88.4 umol/L.
        LabUnit("14682-9", "Creatinine [Moles/volume] in Serum or Plasma", "umol/L", 88.4, 0),
        mean=1.0,
        spread=0.25,
        low=0.6,
        high=1.2,
    ),
    LabTest(
        "potassium",
        _BMP,
        LabUnit("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 1.0, 1),
        LabUnit("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 1.0, 1),
        mean=4.2,
        spread=0.4,
        low=3.5,
        high=5.1,
    ),
    LabTest(
        "sodium",
        _BMP,
        LabUnit("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 1.0, 0),
        LabUnit("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 1.0, 0),
        mean=139,
        spread=3,
        low=135,
        high=145,
    ),
    LabTest(
        "hemoglobin",
        _CBC,
        LabUnit("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 1.0, 1),
        LabUnit("718-7", "Hemoglobin [Mass/volume] in Blood", "g/L", 10.0, 0),
        mean=13.8,
        spread=1.5,
        low=12.0,
        high=17.5,
    ),
    LabTest(
        "cholesterol",
        _LIPID,
        LabUnit("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 1.0, 0),
        # 1 mmol/L of cholesterol (386.65 g/mol) is 38.67 mg/dL.
        LabUnit("14647-2", "Cholesterol [Moles/volume] in Serum or Plasma", "mmol/L", 1 / 38.67, 2),
        mean=190,
        spread=35,
        low=0,
        high=200,
    ),
    LabTest(
        "hba1c",
        _A1C,
        LabUnit("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 1.0, 1),
        LabUnit("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 1.0, 1),
        mean=5.9,
        spread=0.9,
        low=4.0,
        high=5.6,
    ),
)


@dataclass(frozen=True)
class ConditionConcept:
    key: str
    display: str
    snomed: str
    icd10: str


CONDITIONS: tuple[ConditionConcept, ...] = (
    ConditionConcept("diabetes-t2", "Type 2 diabetes mellitus", "44054006", "E11.9"),
    ConditionConcept("hypertension", "Essential hypertension", "38341003", "I10"),
    ConditionConcept("asthma", "Asthma", "195967001", "J45.909"),
    ConditionConcept("copd", "Chronic obstructive pulmonary disease", "13645005", "J44.9"),
    ConditionConcept("hyperlipidemia", "Hyperlipidemia", "55822004", "E78.5"),
    ConditionConcept("depression", "Depressive disorder", "35489007", "F32.9"),
    ConditionConcept("atrial-fibrillation", "Atrial fibrillation", "49436004", "I48.91"),
    ConditionConcept("ckd", "Chronic kidney disease", "709044004", "N18.9"),
    ConditionConcept("hypothyroidism", "Hypothyroidism", "40930008", "E03.9"),
    ConditionConcept("gerd", "Gastroesophageal reflux disease", "235595009", "K21.9"),
)


@dataclass(frozen=True)
class Substance:
    key: str
    display: str
    system: str  # RxNorm for medications, SNOMED CT for foods and the environment
    code: str
    category: str  # FHIR AllergyIntolerance.category
    hl7_type: str  # HL7 table 0127 allergen type

    @property
    def hl7_system(self) -> str:
        return "RXNORM" if self.system == RXNORM else "SCT"


SUBSTANCES: tuple[Substance, ...] = (
    Substance("penicillin", "Penicillin", RXNORM, "70618", "medication", "DA"),
    Substance("amoxicillin", "Amoxicillin", RXNORM, "723", "medication", "DA"),
    Substance("codeine", "Codeine", RXNORM, "2670", "medication", "DA"),
    Substance("ibuprofen", "Ibuprofen", RXNORM, "5640", "medication", "DA"),
    Substance("aspirin", "Aspirin", RXNORM, "1191", "medication", "DA"),
    Substance("peanut", "Peanut", SNOMED_CT, "256349002", "food", "FA"),
    Substance("cashew", "Cashew nut", SNOMED_CT, "227493005", "food", "FA"),
    Substance("egg", "Egg", SNOMED_CT, "102263004", "food", "FA"),
    Substance("latex", "Latex", SNOMED_CT, "111088007", "environment", "EA"),
    Substance("pollen", "Pollen", SNOMED_CT, "256259004", "environment", "EA"),
)


@dataclass(frozen=True)
class Drug:
    """A medication by RxNorm ingredient, with the daily doses it is commonly given at."""

    display: str
    rxnorm: str
    doses_mg: tuple[float, ...]


# Only planted disagreements and stale records mention medications.
DRUGS: tuple[Drug, ...] = (
    Drug("Metformin", "6809", (500, 850, 1000)),
    Drug("Lisinopril", "29046", (5, 10, 20, 40)),
    Drug("Atorvastatin", "83367", (10, 20, 40, 80)),
    Drug("Amlodipine", "17767", (2.5, 5, 10)),
    Drug("Levothyroxine", "10582", (0.05, 0.075, 0.1)),
    Drug("Metoprolol", "6918", (25, 50, 100)),
    Drug("Omeprazole", "7646", (20, 40)),
    Drug("Sertraline", "36437", (50, 100)),
)


@dataclass(frozen=True)
class Cancer:
    """A primary cancer (ICD-10-CM), for planted oncology disagreements."""

    display: str
    icd10: str


CANCERS: tuple[Cancer, ...] = (
    Cancer("Malignant neoplasm of unspecified site of right female breast", "C50.911"),
    Cancer("Malignant neoplasm of unspecified part of unspecified bronchus or lung", "C34.90"),
    Cancer("Malignant neoplasm of colon, unspecified", "C18.9"),
    Cancer("Malignant neoplasm of prostate", "C61"),
)
# Secondary neoplasms (C77-C79): a claim coded so says the cancer has spread.
METASTASES: tuple[Cancer, ...] = (
    Cancer("Secondary malignant neoplasm of unspecified lung", "C78.00"),
    Cancer("Secondary malignant neoplasm of liver and intrahepatic bile duct", "C78.7"),
    Cancer("Secondary malignant neoplasm of bone", "C79.51"),
)
# Estrogen receptor status as claims and problem lists code it (ICD-10-CM Z17), by status.
RECEPTOR_STATUS: dict[str, Cancer] = {
    "positive": Cancer("Estrogen receptor positive status [ER+]", "Z17.0"),
    "negative": Cancer("Estrogen receptor negative status [ER-]", "Z17.1"),
}
# SNOMED CT stage groups (DICOM CID 3778), by stage number.
STAGES: dict[int, str] = {1: "258215001", 2: "258219007", 3: "258224005", 4: "258228008"}


@dataclass(frozen=True)
class Biomarker:
    """A tumour marker result as pathology reports it: its LOINC test, the name Concord's
    derived attribute gives it (Oncology.biomarker/<name>), and its SNOMED CT result codes."""

    name: str
    loinc: str
    display: str
    positive: str
    negative: str


POSITIVE, NEGATIVE = "10828004", "260385009"  # SNOMED CT |Positive|, |Negative|
DETECTED, NOT_DETECTED = "260373001", "260415000"  # SNOMED CT |Detected|, |Not detected|
BIOMARKERS: tuple[Biomarker, ...] = (
    Biomarker("ER", "16112-5", "Estrogen receptor [Interpretation] in Tissue", POSITIVE, NEGATIVE),
    Biomarker(
        "PR", "16113-3", "Progesterone receptor [Interpretation] in Tissue", POSITIVE, NEGATIVE
    ),
    Biomarker("HER2", "48676-1", "HER2 [Interpretation] in Tissue", POSITIVE, NEGATIVE),
    Biomarker(
        "EGFR",
        "21665-5",
        "EGFR gene mutations found [Identifier] in Blood or Tissue by "
        "Molecular genetics method Nominal",
        DETECTED,
        NOT_DETECTED,
    ),
    Biomarker(
        "ALK", "78205-2", "ALK gene rearrangements in Tissue by FISH", DETECTED, NOT_DETECTED
    ),
    Biomarker(
        "PD-L1",
        "83052-1",
        "PD-L1 by clone 22C3 [Presence] in Tissue by Immune stain",
        POSITIVE,
        NEGATIVE,
    ),
)


@dataclass(frozen=True)
class Reaction:
    display: str
    snomed: str


REACTIONS: tuple[Reaction, ...] = (
    Reaction("Hives", "247472004"),
    Reaction("Rash", "271807003"),
    Reaction("Anaphylaxis", "39579001"),
    Reaction("Shortness of breath", "267036007"),
    Reaction("Nausea", "422587007"),
)

# Given name → nicknames people are registered under. Keys are the spellings the Faker
# locales in use produce; a name not listed simply never gets the nickname variation.
NICKNAMES: dict[str, tuple[str, ...]] = {
    "Robert": ("Bob", "Rob", "Bobby"),
    "William": ("Bill", "Will", "Billy"),
    "James": ("Jim", "Jimmy", "Jamie"),
    "John": ("Jack", "Johnny"),
    "Richard": ("Rick", "Rich", "Dick"),
    "Michael": ("Mike", "Mikey"),
    "Thomas": ("Tom", "Tommy"),
    "Joseph": ("Joe", "Joey"),
    "Charles": ("Charlie", "Chuck"),
    "Christopher": ("Chris",),
    "Daniel": ("Dan", "Danny"),
    "Matthew": ("Matt",),
    "Anthony": ("Tony",),
    "Andrew": ("Andy", "Drew"),
    "Benjamin": ("Ben",),
    "Edward": ("Ed", "Ted", "Eddie"),
    "Samuel": ("Sam",),
    "Nicholas": ("Nick",),
    "Jonathan": ("Jon",),
    "Steven": ("Steve",),
    "Stephen": ("Steve",),
    "Timothy": ("Tim",),
    "Kenneth": ("Ken", "Kenny"),
    "Ronald": ("Ron",),
    "Donald": ("Don",),
    "Gregory": ("Greg",),
    "Patrick": ("Pat",),
    "Jeffrey": ("Jeff",),
    "Joshua": ("Josh",),
    "Jacob": ("Jake",),
    "Zachary": ("Zach",),
    "Nathaniel": ("Nate",),
    "Alexander": ("Alex",),
    "Frederick": ("Fred",),
    "Lawrence": ("Larry",),
    "Raymond": ("Ray",),
    "Gerald": ("Jerry",),
    "Theodore": ("Ted", "Theo"),
    "David": ("Dave",),
    "Elizabeth": ("Liz", "Beth", "Betsy"),
    "Margaret": ("Maggie", "Peggy", "Meg"),
    "Katherine": ("Kate", "Kathy"),
    "Catherine": ("Cathy", "Kate"),
    "Jennifer": ("Jen", "Jenny"),
    "Patricia": ("Pat", "Patty"),
    "Susan": ("Sue",),
    "Deborah": ("Debbie", "Deb"),
    "Rebecca": ("Becky",),
    "Christina": ("Tina",),
    "Victoria": ("Vicky",),
    "Jessica": ("Jess",),
    "Samantha": ("Sam",),
    "Alexandra": ("Alex",),
    "Abigail": ("Abby",),
    "Kimberly": ("Kim",),
    "Pamela": ("Pam",),
    "Barbara": ("Barb",),
    "Dorothy": ("Dot",),
    "Amanda": ("Mandy",),
    "Melissa": ("Missy",),
    "Francisco": ("Paco", "Pancho"),
    "José": ("Pepe",),
    "Guadalupe": ("Lupe",),
    "Alejandro": ("Alex",),
    "Jesús": ("Chuy",),
    "Manuel": ("Manolo",),
    "Ignacio": ("Nacho",),
    "Enrique": ("Quique",),
    "Dolores": ("Lola",),
    "Concepción": ("Concha",),
    "Rosario": ("Charo",),
}
