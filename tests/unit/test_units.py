"""Units, pure: canonical UCUM units, molar factors by LOINC, aliases and flags."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from concord.normalization.units import (
    ALIASES,
    NOT_CONVERTIBLE,
    UNIT_UNKNOWN,
    NormalizedQuantity,
    load_canonical_units,
    load_molar_factors,
    normalize_quantity,
)

GLUCOSE = "2345-7"
GLUCOSE_BLOOD = "2339-0"
CREATININE = "2160-0"
CHOLESTEROL = "2093-3"
TRIGLYCERIDES = "2571-8"
UREA_NITROGEN = "3094-0"
CALCIUM = "17861-6"
HEMOGLOBIN = "718-7"
SODIUM = "2951-2"
MCV = "30428-7"


def _close(a: float | None, b: float, rel: float = 1e-3) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=rel)


# --- canonical units by kind --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "expected_value", "expected_unit"),
    [
        (99.0, "mg/dL", 99.0, "mg/dL"),
        (0.99, "g/L", 99.0, "mg/dL"),
        (5.5, "mmol/L", 5.5, "mmol/L"),
        (5500, "umol/L", 5.5, "mmol/L"),
        (250, "10*3/uL", 250, "10*3/uL"),
        (250, "10*9/L", 250, "10*3/uL"),
        (4.5, "10*6/uL", 4500, "10*3/uL"),
        (7000, "{cells}/uL", 7, "10*3/uL"),
        (70, "kg", 70, "kg"),
        (154, "[lb_av]", 69.8532, "kg"),
        (180, "cm", 180, "cm"),
        (70, "[in_i]", 177.8, "cm"),
        (120, "mm[Hg]", 120, "mm[Hg]"),
        (72, "/min", 72, "/min"),
        (72, "{beats}/min", 72, "/min"),
        (45, "%", 45, "%"),
        (0.45, "L/L", 45, "%"),
        (2.5, "{INR}", 2.5, "1"),
        (35, "U/L", 35, "U/L"),
        (24.2, "kg/m2", 24.2, "kg/m2"),
        (5, "mg/(24.h)", 5, "mg/d"),
        (0.5, "mg", 5e-7, "kg"),
    ],
)
def test_a_quantity_is_given_in_the_canonical_unit_of_its_kind(
    value: float, unit: str, expected_value: float, expected_unit: str
) -> None:
    result = normalize_quantity(value, unit)
    assert result.flag is None
    assert result.unit == expected_unit
    assert _close(result.value, expected_value)
    assert (result.original_value, result.original_unit) == (value, unit)
    assert result.factor_reference is None


@pytest.mark.parametrize(
    ("value", "unit", "celsius"),
    [(37, "Cel", 37.0), (98.6, "[degF]", 37.0), (32, "[degF]", 0.0), (-40, "[degF]", -40.0)],
)
def test_temperatures_convert_with_their_offset(value: float, unit: str, celsius: float) -> None:
    result = normalize_quantity(value, unit, loinc="8310-5")
    assert result.unit == "Cel" and result.flag is None
    assert result.value is not None and abs(result.value - celsius) < 1e-6


# --- molar factors ------------------------------------------------------------------------------


def test_glucose_in_mmol_per_litre_and_in_mg_per_decilitre_meet_in_mg_per_decilitre() -> None:
    molar = normalize_quantity(5.5, "mmol/L", loinc=GLUCOSE)
    mass = normalize_quantity(99.09, "mg/dL", loinc=GLUCOSE)
    assert molar.unit == mass.unit == "mg/dL"
    assert molar.value == 99.0858  # 5.5 * 180.156 / 10, six significant digits
    assert mass.value == 99.09
    # Close, not equal: the tolerance that says "same result" belongs to the conflicts policy.
    assert molar.value is not None and mass.value is not None
    assert abs(molar.value - mass.value) / mass.value < 0.001
    assert molar.factor_reference is not None and "180.156 g/mol" in molar.factor_reference
    assert "Young" in molar.factor_reference
    assert mass.factor_reference is None  # no molar factor was needed
    assert _close(normalize_quantity(5.5, "mmol/L", loinc=GLUCOSE_BLOOD).value, 99.0858)


def test_creatinine_in_micromoles_converts_to_mg_per_decilitre() -> None:
    assert _close(normalize_quantity(88.4, "umol/L", loinc=CREATININE).value, 1.0)
    assert _close(normalize_quantity(0.0884, "mmol/L", loinc=CREATININE).value, 1.0)
    result = normalize_quantity(1.0, "mg/dL", loinc=CREATININE)
    assert (result.value, result.unit) == (1.0, "mg/dL")
    assert normalize_quantity(88.42, "µmol/L", loinc=CREATININE).unit == "mg/dL"


@pytest.mark.parametrize(
    ("loinc", "si_value", "si_unit", "conventional"),
    [
        (CHOLESTEROL, 5.17, "mmol/L", 199.9),  # * 38.665
        (TRIGLYCERIDES, 1.7, "mmol/L", 150.6),  # * 88.57
        (UREA_NITROGEN, 5.0, "mmol/L", 14.0),  # mmol/L urea → mg/dL urea nitrogen, * 2.8014
        (CALCIUM, 2.5, "mmol/L", 10.02),  # * 4.0078
        (HEMOGLOBIN, 8.69, "mmol/L", 14.0),  # per Hb(Fe) monomer, ÷ 0.6206
    ],
)
def test_each_factor_converts_si_results_to_the_analytes_canonical_unit(
    loinc: str, si_value: float, si_unit: str, conventional: float
) -> None:
    result = normalize_quantity(si_value, si_unit, loinc=loinc)
    assert result.flag is None and result.factor_reference is not None
    assert _close(result.value, conventional, rel=2e-3)


def test_milliequivalents_use_the_analytes_valence() -> None:
    calcium = normalize_quantity(5.0, "meq/L", loinc=CALCIUM)  # Ca2+: 5 mEq/L = 2.5 mmol/L
    assert calcium.unit == "mg/dL" and _close(calcium.value, 10.02, rel=2e-3)
    sodium = normalize_quantity(140, "mEq/L", loinc=SODIUM)  # Na+: 1 mEq = 1 mmol
    assert (sodium.value, sodium.unit, sodium.flag) == (140, "mmol/L", None)
    # Without an analyte the valence is unknown: mEq stays a kind of its own, not mmol.
    unknown = normalize_quantity(10, "meq/L")
    assert (unknown.value, unknown.unit) == (10, "meq/L")
    # An analyte with a canonical unit but no valence cannot take mEq.
    assert normalize_quantity(5, "meq/L", loinc=GLUCOSE).flag == NOT_CONVERTIBLE


@given(st.floats(min_value=1e-3, max_value=1e4), st.sampled_from([GLUCOSE, CREATININE, CALCIUM]))
def test_molar_and_mass_forms_of_a_result_agree(mg_per_dl: float, loinc: str) -> None:
    """mg/dL → (by hand) mmol/L → normalize → mg/dL again, within the six-digit rounding
    (half a unit in the sixth digit is 5e-6 relative)."""
    factor = load_molar_factors()[loinc]
    mmol_per_l = mg_per_dl * 10 / factor.molar_mass_g_per_mol
    via_molar = normalize_quantity(mmol_per_l, "mmol/L", loinc=loinc)
    direct = normalize_quantity(mg_per_dl, "mg/dL", loinc=loinc)
    assert via_molar.unit == direct.unit == "mg/dL"
    assert via_molar.value is not None and direct.value is not None
    assert math.isclose(via_molar.value, direct.value, rel_tol=1e-5)


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_conversions_round_trip_within_the_rounding(value: float) -> None:
    grams = normalize_quantity(value, "g/L")
    milligrams = normalize_quantity(value * 100, "mg/dL")
    assert grams.value is not None and milligrams.value is not None
    assert math.isclose(grams.value, milligrams.value, rel_tol=1e-5, abs_tol=1e-9)
    fahrenheit = normalize_quantity(value * 9 / 5 + 32, "[degF]")
    assert fahrenheit.value is not None
    assert math.isclose(fahrenheit.value, value, rel_tol=1e-5, abs_tol=1e-3)


@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["mg/dL", "mmol/L"]))
def test_values_keep_six_significant_digits(value: float, unit: str) -> None:
    result = normalize_quantity(value, unit)
    assert result.value is not None
    assert result.value == float(f"{value:.6g}")


def test_analytes_with_their_own_canonical_unit_keep_readable_numbers() -> None:
    mcv = normalize_quantity(90, "fL", loinc=MCV)
    assert (mcv.value, mcv.unit) == (90, "fL")
    assert normalize_quantity(90, "fL").unit == "mL"  # the kind's unit, without the LOINC
    mch = normalize_quantity(29, "pg/{cell}", loinc="28539-5")
    assert (mch.value, mch.unit) == (29, "pg")


# --- aliases and flags --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "canonical", "value"),
    [
        ("mg/dl", "mg/dL", 100),
        ("MG/DL", "mg/dL", 100),
        ("mmol/l", "mmol/L", 5.5),
        ("MMOL/L", "mmol/L", 5.5),
        ("10*3/uL", "10*3/uL", 7.2),
        ("K/uL", "10*3/uL", 7.2),  # valid UCUM for kelvin per microlitre: the alias wins
        ("x10E3/uL", "10*3/uL", 7.2),
        ("giga.l-1", "10*3/uL", 7.2),  # the public HL7 v2 samples' spelling
        ("deg C", "Cel", 37),
        ("°F", "Cel", 37),
        ("mmHg", "mm[Hg]", 120),
        ("beats/min", "/min", 72),
        ("mcg/dL", "mg/dL", 0.1),
        ("mEq/L", "meq/L", 4),
    ],
)
def test_common_non_ucum_spellings_are_read_through_the_alias_table(
    unit: str, canonical: str, value: float
) -> None:
    source_value = {"mcg/dL": 100.0, "°F": 98.6}.get(unit, value)
    result = normalize_quantity(source_value, unit)
    assert result.flag is None
    assert result.unit == canonical
    assert _close(result.value, value)
    assert result.original_unit == unit


def test_every_alias_target_is_valid_ucum() -> None:
    for alias, target in ALIASES.items():
        assert normalize_quantity(1.0, target).flag is None, (alias, target)


@pytest.mark.parametrize("unit", ["foo", "MG/DLL", "mg//dL", "cells per what", "1/0/"])
def test_a_unit_that_is_not_ucum_is_flagged_not_raised(unit: str) -> None:
    result = normalize_quantity(12.0, unit)
    assert result == NormalizedQuantity(
        value=None, unit=None, original_value=12.0, original_unit=unit, flag=UNIT_UNKNOWN
    )


@pytest.mark.parametrize(
    ("value", "unit", "loinc"),
    [
        (5.5, "%", GLUCOSE),  # a fraction is not a concentration
        (99, "kg", GLUCOSE),
        (135, "g/l-1", HEMOGLOBIN),  # valid UCUM (g·L), but no concentration
        (10, "[IU]/L", GLUCOSE),  # arbitrary units convert to nothing else
        (90, "mmol/L", MCV),  # no molar factor for a volume
    ],
)
def test_a_unit_that_does_not_convert_for_the_analyte_is_flagged(
    value: float, unit: str, loinc: str
) -> None:
    result = normalize_quantity(value, unit, loinc=loinc)
    assert result.flag == NOT_CONVERTIBLE
    assert result.value is None and result.unit is None
    assert (result.original_value, result.original_unit) == (value, unit)


def test_a_missing_unit_is_fine_for_a_count_but_not_for_an_analyte() -> None:
    count = normalize_quantity(3, None)
    assert (count.value, count.unit, count.flag) == (3, None, None)
    assert normalize_quantity(3, "  ").flag is None
    assert normalize_quantity(5.5, None, loinc=GLUCOSE).flag == UNIT_UNKNOWN
    assert normalize_quantity(math.nan, "mg/dL").flag == NOT_CONVERTIBLE


def test_arbitrary_units_and_counters_are_kept_as_sent() -> None:
    # pint holds [IU] and [HPF] as plain numbers; converting them would be a silent error.
    for value, unit in [(10, "[IU]/L"), (3, "/[HPF]"), (2, "m[IU]/mL"), (7.4, "[pH]")]:
        result = normalize_quantity(value, unit)
        assert (result.value, result.unit, result.flag) == (value, unit, None)


def test_an_unknown_loinc_uses_the_kind_of_the_quantity() -> None:
    result = normalize_quantity(5.5, "mmol/L", loinc="99999-9")
    assert (result.value, result.unit, result.factor_reference) == (5.5, "mmol/L", None)


# --- the data files -----------------------------------------------------------------------------


def test_every_factor_names_its_reference_and_a_valid_canonical_unit() -> None:
    factors = load_molar_factors()
    assert {GLUCOSE, GLUCOSE_BLOOD, CREATININE, CHOLESTEROL, TRIGLYCERIDES} <= factors.keys()
    assert {UREA_NITROGEN, CALCIUM, HEMOGLOBIN} <= factors.keys()
    for factor in factors.values():
        assert factor.reference and factor.molar_mass_g_per_mol > 0
        assert normalize_quantity(1.0, factor.canonical_unit, loinc=factor.loinc).flag is None
    assert factors[GLUCOSE].molar_mass_g_per_mol == 180.156
    assert factors[CREATININE].molar_mass_g_per_mol == 113.12
    assert MCV in load_canonical_units()


def test_a_broken_factor_file_fails_at_load(tmp_path: Path) -> None:
    header = "loinc,analyte,molar_mass_g_per_mol,canonical_unit,reference,valence\n"
    bad = tmp_path / "factors.csv"
    bad.write_text(header + "2345-7,Glucose,180.156,mg/dL,,\n")
    with pytest.raises(ValueError, match="reference"):
        load_molar_factors(bad)
    bad.write_text(header + "2345-7,Glucose,180.156,MG/DLL,Young 1987,\n")
    with pytest.raises(ValueError, match="not UCUM"):
        load_molar_factors(bad)


def test_the_alias_table_in_the_docs_is_the_one_in_the_code() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "normalization.md").read_text()
    text = text.split("### Alias table", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, str] = {}
    for target, spellings in re.findall(r"^\| `([^`]+)` \| (`.+`) \|$", text, flags=re.MULTILINE):
        for spelling in re.findall(r"`([^`]+)`", spellings):
            documented[spelling] = target
    assert documented == dict(ALIASES)


def test_preferred_units_win_over_the_kind_only_for_their_own_dimension() -> None:
    dose = normalize_quantity(0.5, "g", prefer=("mg", "mL"))
    assert (dose.value, dose.unit) == (500.0, "mg")
    volume = normalize_quantity(0.01, "L", prefer=("mg", "mL"))
    assert (volume.value, volume.unit) == (10.0, "mL")
    assert normalize_quantity(5, "h", prefer=("mg", "mL")).unit != "mg"  # time stays time
