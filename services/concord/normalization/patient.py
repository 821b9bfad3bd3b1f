"""Demographic facts as Concord compares them, pure: their attribute keys, and the name.

A name is compared on its official (else first) HumanName as "family|given given",
case-folded, whitespace collapsed, Unicode NFC — accents are kept, because José and Jose may
be different people. (Which patient a record is about is identity/'s business.)
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

BIRTH_DATE = "Patient.birthDate"
GENDER = "Patient.gender"
NAME = "Patient.name"


def _collapse(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def _chosen_name(names: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for name in names:
        if name.get("use") == "official":
            return name
    return names[0] if names else None


def normalized_name(patient: Mapping[str, Any]) -> tuple[str, str] | None:
    """(comparison value, display) of the patient's official name, or None without one."""
    name = _chosen_name([n for n in patient.get("name") or () if isinstance(n, dict)])
    if name is None:
        return None
    family = _collapse(str(name.get("family") or ""))
    given = _collapse(" ".join(str(g) for g in name.get("given") or ()))
    if not family and not given:
        return None
    return f"{family}|{given}".casefold(), f"{given} {family}".strip()
