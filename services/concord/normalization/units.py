"""Quantities in canonical UCUM units, so that two sources' results of one test compare.

Library: ucumvert (on pint). ucumvert parses the full UCUM grammar (generated from the
official ucum-essence.xml) and hands pint a quantity built from UCUM's own definitions, so
`10*3/uL`, `mm[Hg]`, `[degF]`, `{cells}/uL` and annotations mean what UCUM says. Plain pint
reads its own unit language, not UCUM: `10*3/uL` would be thirty per microlitre, `Cel`,
`[lb_av]` or `mm[Hg]` are unknown to it, and it accepts strings UCUM rejects, so we would have
had to write the UCUM grammar ourselves. ucumvert also rejects what is not UCUM (`MG/DL`,
`mEq/L`), which is how a unit is flagged UNIT_UNKNOWN rather than guessed. The registry is a
private pint UnitRegistry with ucumvert's definitions loaded, not pint's application
registry, so nothing global changes.

What UCUM conversion alone would get wrong, and is guarded here:
- arbitrary units (`[IU]`, `[arb'U]`, ...) and counters (`[HPF]`) are all "1" to pint, so
  pint would happily turn `[IU]/L` into cells per microlitre; they are kept as sent;
- `eq` is defined as `mol`, true only for monovalent ions: mEq ↔ mmol needs the analyte's
  valence (molar_factors.csv), otherwise mEq stays its own kind (`meq/L`);
- `K/uL` is valid UCUM (kelvin per microlitre); the alias table, which wins over the parser,
  reads it as thousands per microlitre, as every lab feed means it.

Canonical unit: per LOINC when data/molar_factors.csv names one (so that mg/dL and mmol/L
results of one test compare through the analyte's molar mass) or data/canonical_units.csv
does (where the kind's unit would read badly: MCV in mL), else per kind of quantity
(`KIND_UNITS`). Values are rounded to six significant digits: 5.5 mmol/L of glucose is
99.0858 mg/dL, which a tolerance (the conflicts policy's business, not ours) compares with a
99.09 mg/dL from another source.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pint
import ucumvert
from lark import Token, Tree
from lark.exceptions import LarkError
from pydantic import BaseModel, ConfigDict
from ucumvert import UcumToPintTransformer, get_ucum_parser, parse_ucum
from ucumvert.xml_util import get_units_with_full_definition

Flag = Literal["UNIT_UNKNOWN", "NOT_CONVERTIBLE"]
UNIT_UNKNOWN: Flag = "UNIT_UNKNOWN"
NOT_CONVERTIBLE: Flag = "NOT_CONVERTIBLE"
SIGNIFICANT_DIGITS = 6

# Spellings seen in HL7 v2 feeds that are not UCUM (or are UCUM with another meaning), keyed
# by the text with its spaces removed and case folded. A key must not collide with a valid
# UCUM unit of another meaning once case is folded: that is why "g/l" (grams, or giga in
# some European feeds) and bare "F"/"C" (farad, coulomb) are not here.
ALIASES: Mapping[str, str] = {
    # mass and substance concentrations, upper-case and lower-case feeds
    "mg/dl": "mg/dL",
    "g/dl": "g/dL",
    "ug/dl": "ug/dL",
    "ng/dl": "ng/dL",
    "ng/ml": "ng/mL",
    "pg/ml": "pg/mL",
    "ug/ml": "ug/mL",
    "mmol/l": "mmol/L",
    "umol/l": "umol/L",
    "nmol/l": "nmol/L",
    "pmol/l": "pmol/L",
    "meq/l": "meq/L",
    # enzyme and international units
    "u/l": "U/L",
    "iu/l": "[IU]/L",
    "iu/ml": "[IU]/mL",
    "miu/ml": "m[IU]/mL",
    "uiu/ml": "u[IU]/mL",
    # counts per volume: "K/uL" is thousands per microlitre, never kelvin
    "k/ul": "10*3/uL",
    "k/mm3": "10*3/uL",
    "thou/ul": "10*3/uL",
    "x10e3/ul": "10*3/uL",
    "10^3/ul": "10*3/uL",
    "10*3/ul": "10*3/uL",
    "x10^3/ul": "10*3/uL",
    "mil/ul": "10*6/uL",
    "m/ul": "10*6/uL",
    "x10e6/ul": "10*6/uL",
    "10^6/ul": "10*6/uL",
    "10*6/ul": "10*6/uL",
    "x10^6/ul": "10*6/uL",
    "10^9/l": "10*9/L",
    "x10^9/l": "10*9/L",
    "x10e9/l": "10*9/L",
    "10^12/l": "10*12/L",
    "x10^12/l": "10*12/L",
    "x10e12/l": "10*12/L",
    # ISO 2955-style spellings in the public HL7 v2 samples
    "giga.l-1": "10*9/L",
    "tera.l-1": "10*12/L",
    # vital signs
    "degc": "Cel",
    "°c": "Cel",
    "celsius": "Cel",
    "degf": "[degF]",
    "°f": "[degF]",
    "fahrenheit": "[degF]",
    "mmhg": "mm[Hg]",
    "beats/min": "{beats}/min",
    "beats/minute": "{beats}/min",
    "bpm": "{beats}/min",
    "breaths/min": "{breaths}/min",
    "kg/m^2": "kg/m2",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "oz": "[oz_av]",
    "in": "[in_i]",
    "inch": "[in_i]",
    "inches": "[in_i]",
    # volumes and times
    "ml": "mL",
    "fl": "fL",
    "sec": "s",
    "hr": "h",
    "hrs": "h",
    "yr": "a",
    "yrs": "a",
    "percent": "%",
    # dose forms (medication amounts), kept as annotations: counts of a thing
    "tab": "{tbl}",
    "tabs": "{tbl}",
    "tablet": "{tbl}",
    "tablets": "{tbl}",
    "cap": "{cap}",
    "caps": "{cap}",
    "capsule": "{cap}",
    "capsules": "{cap}",
}

# The canonical unit of each kind of quantity; a kind not here keeps the unit it was sent in.
KIND_UNITS: tuple[str, ...] = (
    "mg/dL",  # mass concentration
    "mmol/L",  # substance concentration
    "10*3/uL",  # number concentration (cells); same number as 10*9/L
    "U/L",  # catalytic concentration
    "kg",
    "cm",
    "m2",
    "mL",
    "Cel",
    "mm[Hg]",
    "/min",
    "h",
    "kg/m2",
    "mL/min",
    "mm/h",
    "mg/d",
    "mmol/kg",
)
# eq and osm are mol to UCUM; they are kinds of their own until an analyte says otherwise.
FAMILY_UNITS: Mapping[str, tuple[str, ...]] = {"eq": ("meq/L",), "osm": ("mosm/kg", "mosm/L")}
# Dimensionless atoms that are pure numbers, so that a unit made of them is a ratio (→ %).
_RATIO_ATOMS = frozenset({"%", "[ppth]", "[ppm]", "[ppb]", "[pptr]", "10*", "10^"})
_TEMPERATURES = frozenset({"Cel", "[degF]"})
_FAMILY_ATOMS = ("eq", "osm")

_DATA = resources.files("concord.normalization").joinpath("data")


class NormalizedQuantity(BaseModel):
    """A quantity in its canonical unit. `value` and `unit` are set exactly when `flag` is
    None; the original value and unit are always kept."""

    model_config = ConfigDict(frozen=True)

    value: float | None
    unit: str | None
    original_value: float
    original_unit: str | None
    flag: Flag | None = None
    # The analyte, molar mass and its reference, when a mass ↔ molar conversion was made.
    factor_reference: str | None = None


@dataclass(frozen=True)
class MolarFactor:
    loinc: str
    analyte: str
    molar_mass_g_per_mol: float
    canonical_unit: str
    reference: str
    valence: int | None = None

    def describe(self) -> str:
        return (
            f"{self.analyte} ({self.loinc}) {self.molar_mass_g_per_mol:g} g/mol: {self.reference}"
        )


def load_molar_factors(path: Path | None = None) -> dict[str, MolarFactor]:
    """LOINC → factor, from data/molar_factors.csv (or `path`); a bad row raises ValueError at
    load, never later."""
    text = (
        path.read_text("utf-8")
        if path is not None
        else _DATA.joinpath("molar_factors.csv").read_text("utf-8")
    )
    factors: dict[str, MolarFactor] = {}
    for line, row in enumerate(csv.DictReader(text.splitlines()), start=2):
        try:
            factor = MolarFactor(
                loinc=row["loinc"].strip(),
                analyte=row["analyte"].strip(),
                molar_mass_g_per_mol=float(row["molar_mass_g_per_mol"]),
                canonical_unit=row["canonical_unit"].strip(),
                reference=row["reference"].strip(),
                valence=int(row["valence"]) if (row.get("valence") or "").strip() else None,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"molar_factors.csv line {line}: {error}") from error
        if not factor.reference or factor.molar_mass_g_per_mol <= 0:
            raise ValueError(
                f"molar_factors.csv line {line}: a factor needs a mass and a reference"
            )
        if _parse(factor.canonical_unit) is None:
            raise ValueError(f"molar_factors.csv line {line}: {factor.canonical_unit!r} not UCUM")
        if factor.loinc in factors:
            raise ValueError(f"molar_factors.csv line {line}: LOINC {factor.loinc} twice")
        factors[factor.loinc] = factor
    return factors


def load_canonical_units(path: Path | None = None) -> dict[str, str]:
    """LOINC → canonical unit for analytes without a molar factor, from
    data/canonical_units.csv (or `path`)."""
    text = (
        path.read_text("utf-8")
        if path is not None
        else _DATA.joinpath("canonical_units.csv").read_text("utf-8")
    )
    units: dict[str, str] = {}
    for line, row in enumerate(csv.DictReader(text.splitlines()), start=2):
        loinc, unit = (row.get("loinc") or "").strip(), (row.get("canonical_unit") or "").strip()
        if not loinc or _parse(unit) is None or loinc in units:
            raise ValueError(f"canonical_units.csv line {line}: no LOINC, not UCUM, or twice")
        units[loinc] = unit
    return units


def normalize_quantity(
    value: float, unit: str | None, *, loinc: str | None = None, prefer: tuple[str, ...] = ()
) -> NormalizedQuantity:
    """`value` `unit` in the canonical unit of its analyte (`loinc`) or of its kind; `prefer`
    names units that win over the kind's where the dimension is the same (doses in mg, not
    kg). Never raises: a unit that is not UCUM (nor a known alias) is flagged UNIT_UNKNOWN,
    one that does not convert to the analyte's canonical unit NOT_CONVERTIBLE."""
    analyte = loinc if loinc and loinc in _analytes() else None
    text = "".join((unit or "").split())
    flagged = NormalizedQuantity(
        value=None, unit=None, original_value=value, original_unit=unit, flag=NOT_CONVERTIBLE
    )
    if not math.isfinite(value):
        return flagged
    if not text:
        # A bare number is fine for a count, but a glucose without a unit is a silent number.
        if analyte is not None:
            return flagged.model_copy(update={"flag": UNIT_UNKNOWN})
        return NormalizedQuantity(
            value=_round(value), unit=None, original_value=value, original_unit=unit
        )
    plan = _plan(text, analyte, prefer)
    if isinstance(plan, str):
        return flagged.model_copy(update={"flag": plan})
    return NormalizedQuantity(
        value=_round(value * plan.scale + plan.offset),
        unit=plan.unit,
        original_value=value,
        original_unit=unit,
        factor_reference=plan.factor_reference,
    )


# --- internals ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """canonical = value * scale + offset (offset only for temperatures)."""

    unit: str
    scale: float
    offset: float = 0.0
    factor_reference: str | None = None


@dataclass(frozen=True)
class _Unit:
    ucum: str
    quantity: Any  # pint Quantity of one of this unit; None when pint has no mapping for it
    atoms: frozenset[str]
    opaque: bool  # arbitrary, special or counting atoms: comparable only to themselves
    family: str | None  # "eq" or "osm"


class _Ucum:
    """The UCUM parser, a private pint registry and what UCUM says of each atom."""

    def __init__(self) -> None:
        self.registry: pint.UnitRegistry[Any] = pint.UnitRegistry(on_redefinition="raise")
        self.registry.load_definitions(Path(ucumvert.__file__).parent / "pint_ucum_defs.txt")
        self.parser = get_ucum_parser()
        self.transformer = UcumToPintTransformer(self.registry)
        definitions = get_units_with_full_definition()
        self.arbitrary = frozenset(d.code_cs for d in definitions if d.is_arbitrary)
        self.special = frozenset(d.code_cs for d in definitions if d.is_special)

    def quantity(self, tree: Tree[Any]) -> Any:
        result = self.transformer.transform(tree)
        if isinstance(result, Token):  # an annotation alone ({INR}): UCUM reads it as 1
            return self.registry.Quantity(1)
        return result


@cache
def _ucum() -> _Ucum:
    return _Ucum()


@cache
def _analytes() -> dict[str, tuple[str, MolarFactor | None]]:
    """LOINC → (canonical unit, molar factor) of the analytes the data files name."""
    factors = load_molar_factors()
    units = load_canonical_units()
    if both := factors.keys() & units.keys():
        raise ValueError(f"LOINC in both molar_factors.csv and canonical_units.csv: {both}")
    analytes: dict[str, tuple[str, MolarFactor | None]] = {
        loinc: (unit, None) for loinc, unit in units.items()
    }
    analytes.update((loinc, (f.canonical_unit, f)) for loinc, f in factors.items())
    return analytes


@cache
def _kinds() -> dict[tuple[str | None, Any], str]:
    """(family, pint dimensionality) → canonical unit."""
    kinds: dict[tuple[str | None, Any], str] = {}
    families: list[tuple[str | None, str]] = [(None, unit) for unit in KIND_UNITS]
    families += [(family, unit) for family, units in FAMILY_UNITS.items() for unit in units]
    for family, unit in families:
        kinds[(family, _known(unit).quantity.dimensionality)] = unit
    return kinds


def warm() -> None:
    """Build the UCUM parser, pint registry and analyte tables now (about 0.6 s of CPU on a
    2-core machine) rather than on the first quantity: a worker calls it before it joins its
    consumer group, so its first batch does not hold the event loop for seconds, past the
    group's session timeout, while it owns partitions."""
    _kinds()
    _analytes()


def _known(text: str) -> _Unit:
    """A unit this module itself names (a canonical unit): it must convert."""
    unit = _parse(text)
    if unit is None or unit.quantity is None:
        raise ValueError(f"{text!r} is not a UCUM unit pint can convert")
    return unit


def _atoms(tree: Tree[Any]) -> frozenset[str]:
    atoms = set()
    for node in tree.iter_subtrees():
        if node.data == "simple_unit":
            last = node.children[-1]
            if getattr(last, "type", "") in ("UNIT_METRIC", "UNIT_NON_METRIC"):
                atoms.add(str(last))
    return frozenset(atoms)


@lru_cache(maxsize=4096)
def _parse(text: str) -> _Unit | None:
    """The UCUM unit `text` (after the alias table), or None when it is not UCUM."""
    ucum = _ucum()
    # No UCUM unit holds a micro sign or "mcg": both are how feeds spell micro (u).
    cleaned = text.replace("µ", "u").replace("μ", "u")
    code = ALIASES.get(cleaned.casefold().replace("mcg", "ug")) or cleaned.replace("mcg", "ug")
    try:
        tree = parse_ucum(code, ucum.parser)
    except LarkError:
        return None
    atoms = _atoms(tree)
    try:
        quantity = ucum.quantity(tree)
    except (LarkError, pint.PintError, ValueError, TypeError):
        quantity = None  # valid UCUM that pint cannot model (e.g. [pH]): kept as sent
    opaque = quantity is None or any(_is_opaque(atom) for atom in atoms)
    family = next((atom for atom in _FAMILY_ATOMS if atom in atoms), None)
    return _Unit(code, quantity, atoms, opaque, family)


@lru_cache(maxsize=1024)
def _is_opaque(atom: str) -> bool:
    ucum = _ucum()
    if atom in ucum.arbitrary or (atom in ucum.special and atom not in _TEMPERATURES):
        return True
    if atom in _RATIO_ATOMS:
        return False
    try:
        quantity = ucum.quantity(parse_ucum(atom, ucum.parser))
    except (LarkError, pint.PintError, ValueError, TypeError):
        return True
    # Dimensionless atoms that are not ratios count things (fields, radians, ...).
    return bool(quantity.dimensionless)


@lru_cache(maxsize=8192)
def _plan(text: str, loinc: str | None, prefer: tuple[str, ...] = ()) -> _Plan | Flag:
    unit = _parse(text)
    if unit is None:
        return UNIT_UNKNOWN
    canonical, factor = _analytes()[loinc] if loinc else (None, None)
    if unit.opaque:
        # Arbitrary units compare only with themselves; an analyte with a canonical unit of
        # its own cannot be in one.
        return NOT_CONVERTIBLE if canonical is not None else _Plan(unit.ucum, 1.0)
    quantity = unit.quantity
    pre_scale = 1.0
    family = unit.family
    if family == "eq" and canonical is not None:
        if factor is None or factor.valence is None:
            return NOT_CONVERTIBLE
        pre_scale, family = 1.0 / factor.valence, None  # UCUM's eq is mol: divide by charge
    target = canonical if canonical is not None else _kind_unit(unit, family)
    if canonical is None and family is None:
        dimensionality = quantity.dimensionality
        target = next(
            (p for p in prefer if _known(p).quantity.dimensionality == dimensionality), target
        )
    if target is None:
        return _Plan(unit.ucum, 1.0)
    return _conversion(quantity, pre_scale, target, _known(target).quantity, factor)


def _kind_unit(unit: _Unit, family: str | None) -> str | None:
    dimensionality = unit.quantity.dimensionality
    if not dimensionality and family is None:
        # Pure numbers and annotations ({INR}, {tbl}) are "1"; ratios (%, L/L, mg/g) are %.
        return "%" if unit.atoms - {"10*", "10^"} else "1"
    return _kinds().get((family, dimensionality))


def _conversion(
    source: Any, pre_scale: float, target: str, target_quantity: Any, factor: MolarFactor | None
) -> _Plan | Flag:
    registry = _ucum().registry
    molar_mass = (
        registry.Quantity(factor.molar_mass_g_per_mol, "g/mol") if factor is not None else None
    )
    target_units = target_quantity.units
    target_magnitude = float(target_quantity.magnitude)

    def convert(x: float) -> tuple[float, bool] | None:
        quantity = registry.Quantity(x * pre_scale * float(source.magnitude), source.units)
        candidates = [(quantity, False)]
        if molar_mass is not None:
            candidates += [(quantity * molar_mass, True), (quantity / molar_mass, True)]
        for candidate, molar in candidates:
            try:
                converted = candidate.to(target_units)
            except (pint.PintError, TypeError, ValueError, ZeroDivisionError):
                continue
            return float(converted.magnitude) / target_magnitude, molar
        return None

    at_zero, at_one = convert(0.0), convert(1.0)
    if at_zero is None or at_one is None:
        return NOT_CONVERTIBLE
    offset = at_zero[0]
    reference = factor.describe() if factor is not None and at_one[1] else None
    return _Plan(target, at_one[0] - offset, offset, reference)


def _round(value: float) -> float:
    if value == 0 or not math.isfinite(value):
        return 0.0 if value == 0 else value
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
