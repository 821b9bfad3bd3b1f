"""Terminology, pure: standard codes pass, local codes map through versioned crosswalks."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from concord.ingestion.codes import CPT, ICD10_CM, LOINC, NDC, RXNORM, SNOMED_CT
from concord.ingestion.hl7v2 import CODING_SYSTEMS
from concord.normalization.terminology import (
    HL7_LOCAL_SYSTEM_PREFIX,
    CrosswalkError,
    MappedCode,
    Terminology,
    hl7_system,
    ndc11,
    parse_crosswalk,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "data" / "fhir-converter-samples" / "hl7v2"
NDC_CROSSWALK = "ndc-rxnorm-ingredient"
HEADER = "# name: test-walk\n# version: 3.1\n# source: made for a test\n# licence: CC0\n"
COLUMNS = "from_system,from_code,to_system,to_code,to_display\n"


@cache
def _shared() -> Terminology:
    return Terminology.load()


@pytest.fixture
def terminology() -> Terminology:
    return _shared()


def _crosswalk_version(terminology: Terminology, name: str) -> str:
    return next(c.version for c in terminology.crosswalks if c.name == name)


@pytest.mark.parametrize(
    ("system", "code"),
    [
        (LOINC, "2345-7"),
        (SNOMED_CT, "91936005"),
        (ICD10_CM, "E11.9"),
        (RXNORM, "29046"),
    ],
)
def test_a_standard_code_passes_unchanged(terminology: Terminology, system: str, code: str) -> None:
    assert terminology.map(system, code) == MappedCode(
        system=system, code=code, mapped=True, crosswalk=None
    )


def test_a_local_lab_code_maps_to_loinc_with_its_crosswalk(terminology: Terminology) -> None:
    mapped = terminology.map("http://lab-system.example.com/CodeSystem/test", "GLU")
    assert (mapped.system, mapped.code, mapped.mapped) == (LOINC, "2345-7", True)
    assert mapped.display == "Glucose [Mass/volume] in Serum or Plasma"
    assert mapped.crosswalk == "concord-demo-local@1"


def test_local_medication_and_allergy_codes_map(terminology: Terminology) -> None:
    formulary = terminology.map(
        "http://hospital-ehr.example.org/fhir/CodeSystem/formulary", "F-1001"
    )
    assert (formulary.system, formulary.code, formulary.display) == (RXNORM, "29046", "lisinopril")
    allergen = terminology.map(
        "http://hospital-ehr.example.org/fhir/CodeSystem/allergen", "ALG-PCN"
    )
    assert (allergen.system, allergen.code) == (SNOMED_CT, "91936005")


@pytest.mark.parametrize(
    ("ndc", "ingredient", "name"),
    [
        ("00182106105", "1191", "aspirin"),
        ("0182-1061-05", "1191", "aspirin"),  # 4-4-2, padded to 5-4-2
        ("00047-0402-30", "733", "ampicillin"),
        ("00185-0602-01", "29046", "lisinopril"),
        ("0143963401", "7396", "nicardipine"),  # as the public HL7 v2 sample sends it
        (" 47682060933 ", "5640", "ibuprofen"),
    ],
)
def test_an_ndc_maps_to_its_rxnorm_ingredient(
    terminology: Terminology, ndc: str, ingredient: str, name: str
) -> None:
    mapped = terminology.map(NDC, ndc)
    assert (mapped.system, mapped.code, mapped.display, mapped.mapped) == (
        RXNORM,
        ingredient,
        name,
        True,
    )
    assert mapped.crosswalk == f"{NDC_CROSSWALK}@{_crosswalk_version(terminology, NDC_CROSSWALK)}"


def test_the_ndc_crosswalk_says_it_is_a_dated_sample_and_where_it_comes_from(
    terminology: Terminology,
) -> None:
    crosswalk = next(c for c in terminology.crosswalks if c.name == NDC_CROSSWALK)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", crosswalk.version)
    assert "RxNorm" in crosswalk.source and "OMOP" in crosswalk.source
    assert len(crosswalk.rows) >= 30
    assert all(target[0] == RXNORM for target in crosswalk.rows.values())


@pytest.mark.parametrize(
    ("system", "code"),
    [
        ("http://lab-system.example.com/CodeSystem/test", "NOPE"),
        (NDC, "99999-9999-99"),
        (CPT, "71045"),  # not a system facts are keyed by, and no crosswalk for it
        ("", ""),
        ("L", "3DHISTECH_SLD"),
    ],
)
def test_an_unmapped_code_comes_back_as_sent_flagged_unmapped(
    terminology: Terminology, system: str, code: str
) -> None:
    assert terminology.map(system, code) == MappedCode(system=system, code=code, mapped=False)


@given(st.text(max_size=40), st.text(max_size=40))
def test_map_never_raises_and_never_drops(system: str, code: str) -> None:
    mapped = _shared().map(system, code)
    if not mapped.mapped:
        assert (mapped.system, mapped.code) == (system, code)


def test_hl7_table_0396_names_become_the_ingestion_uris(terminology: Terminology) -> None:
    for name, uri in CODING_SYSTEMS.items():
        assert hl7_system(name) == uri
        assert hl7_system(name.lower()) == uri
    assert hl7_system("LN") == LOINC and hl7_system("SCT") == SNOMED_CT
    assert hl7_system("I10") == hl7_system("ICD10CM") == ICD10_CM
    assert hl7_system("C4") == CPT and hl7_system("NDC") == NDC
    assert hl7_system("L") == f"{HL7_LOCAL_SYSTEM_PREFIX}L"
    # map() reads the names too, as the system of a CWE is often given that way.
    assert terminology.map("LN", "2345-7") == MappedCode(system=LOINC, code="2345-7", mapped=True)
    assert terminology.map("NDC", "0182-1061-05").code == "1191"
    assert terminology.map(f"{HL7_LOCAL_SYSTEM_PREFIX}LN", "718-7").system == LOINC


def test_the_public_samples_local_codes_map_from_both_twins(terminology: Terminology) -> None:
    hl7 = terminology.map(hl7_system("XYZ"), "625-4")
    fhir = terminology.map("http://example.com/v2-to-fhir-converter/CodeSystem/XYZ", "625-4")
    assert hl7 == fhir
    assert (hl7.system, hl7.code, hl7.crosswalk) == (
        LOINC,
        "625-4",
        "fhir-converter-samples-local@1",
    )
    glucose = terminology.map(hl7_system("POST 12H CFST:MCNC:PT:SER/PLAS:QN"), "1554-5")
    assert (glucose.system, glucose.code) == (LOINC, "1554-5")
    peanut = terminology.map(hl7_system("L"), "12345")
    assert (peanut.system, peanut.code) == (SNOMED_CT, "91935009")


@pytest.mark.shared_data
def test_every_mapped_sample_code_occurs_in_the_public_hl7_samples(
    terminology: Terminology,
) -> None:
    if not SAMPLES.is_dir():
        pytest.skip(f"NOT RUN: the public HL7 v2 samples are absent ({SAMPLES} not found)")
    text = "\n".join(p.read_text("utf-8", errors="replace") for p in SAMPLES.glob("*.hl7"))
    walk = next(c for c in terminology.crosswalks if c.name == "fhir-converter-samples-local")
    for system, code in walk.rows:
        if system.startswith(HL7_LOCAL_SYSTEM_PREFIX):
            name = system[len(HL7_LOCAL_SYSTEM_PREFIX) :]
            assert f"{code}^" in text and f"^{name}" in text, (system, code)


# --- the file format ----------------------------------------------------------------------------


def test_a_crosswalk_header_gives_name_version_source_and_licence() -> None:
    walk = parse_crosswalk(HEADER + COLUMNS + "urn:x,A1,http://loinc.org,2345-7,Glucose\n")
    assert (walk.name, walk.version, walk.ref) == ("test-walk", "3.1", "test-walk@3.1")
    assert (walk.source, walk.licence) == ("made for a test", "CC0")
    assert walk.rows == {("urn:x", "A1"): (LOINC, "2345-7", "Glucose")}


def test_a_folder_of_crosswalks_loads_and_maps(tmp_path: Path) -> None:
    (tmp_path / "walk.csv").write_text(HEADER + COLUMNS + "urn:x,A1,http://loinc.org,2345-7,\n")
    (tmp_path / "README.txt").write_text("not a crosswalk")
    terminology = Terminology.load(tmp_path)
    assert terminology.map("urn:x", "A1") == MappedCode(
        system=LOINC, code="2345-7", mapped=True, crosswalk="test-walk@3.1"
    )
    assert terminology.map("urn:x", "A2").mapped is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# name: w\n# source: s\n# licence: l\n" + COLUMNS, "version"),
        (HEADER + "a,b,c\n", "columns"),
        (HEADER + COLUMNS + "urn:x,A1,http://loinc.org,2345-8,Bad check digit\n", "LOINC"),
        (HEADER + COLUMNS + "urn:x,A1,http://hl7.org/fhir/sid/ndc,00182106105,\n", "keyed"),
        (
            HEADER
            + COLUMNS
            + "urn:x,A1,http://loinc.org,2345-7,\nurn:x,A1,http://loinc.org,2160-0,\n",
            "twice",
        ),
        (HEADER + COLUMNS + "urn:x,,http://loinc.org,2345-7,\n", "empty"),
        (HEADER + COLUMNS + "LN,2345-7,http://loinc.org,2345-7,\n", "maps a code to itself"),
        ("#no colon here\n" + COLUMNS, "key: value"),
    ],
)
def test_a_bad_crosswalk_fails_at_load_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(CrosswalkError, match=message):
        parse_crosswalk(text, origin="bad.csv")


def test_two_crosswalks_mapping_one_code_are_refused(tmp_path: Path) -> None:
    row = "urn:x,A1,http://loinc.org,2345-7,\n"
    (tmp_path / "a.csv").write_text(HEADER + COLUMNS + row)
    (tmp_path / "b.csv").write_text(HEADER.replace("test-walk", "other") + COLUMNS + row)
    with pytest.raises(CrosswalkError, match="mapped by"):
        Terminology.load(tmp_path)


def test_ndc_forms() -> None:
    assert ndc11("49281-0215-88") == "49281021588"  # 5-4-2
    assert ndc11("0143-9634-01") == "00143963401"  # 4-4-2
    assert ndc11("12345-678-90") == "12345067890"  # 5-3-2
    assert ndc11("12345-6789-0") == "12345678900"  # 5-4-1
    assert ndc11("0143963401") == "0143963401"  # 10 digits, no hyphens: ambiguous, as given
