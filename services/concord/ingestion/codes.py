"""Is a Coding well formed for its code system? Format and check digits, no terminology server.

A code without a system cannot be compared across sources, and a LOINC or SNOMED CT code
whose check digit is wrong was mistyped somewhere upstream: both are rejected at the door
rather than turned into facts that can never match. Systems not listed are not judged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from stdnum import luhn, verhoeff

LOINC = "http://loinc.org"
SNOMED_CT = "http://snomed.info/sct"
ICD10_CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC = "http://hl7.org/fhir/sid/ndc"
CPT = "http://www.ama-assn.org/go/cpt"

# The claim-line schema states these formats as JSON Schema patterns; written here in the
# schema's own spelling, so a test can hold the two equal.
ICD10_CM_PATTERN = r"^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$"
NDC_PATTERN = (
    r"^([0-9]{4}-[0-9]{4}-[0-9]{2}|[0-9]{5}-[0-9]{3}-[0-9]{2}|[0-9]{5}-[0-9]{4}-[0-9]{1,2}"
    r"|[0-9]{10,11})$"
)
CPT_PATTERN = r"^[0-9]{4}[0-9FTU]$"

_LOINC = re.compile(r"(?a)^(?:L[APG])?(\d{1,8})-(\d)$")
_SNOMED = re.compile(r"(?a)^\d{6,18}$")
_ICD10_CM = re.compile(ICD10_CM_PATTERN, re.ASCII)
_RXNORM = re.compile(r"(?a)^\d{1,9}$")
_NDC = re.compile(NDC_PATTERN, re.ASCII)
_CPT = re.compile(CPT_PATTERN, re.ASCII)


def _loinc(code: str) -> bool:
    match = _LOINC.fullmatch(code)
    if match is None:
        return False
    if code.startswith("L"):
        return True  # answer, part and group codes: the format is all that is checked
    return luhn.is_valid(match[1] + match[2])


def _snomed(code: str) -> bool:
    if ":" in code or "|" in code or "+" in code:
        return True  # a post-coordinated expression; its concept ids are not checked here
    # The partition digits (second and third from the right) say concept, description or
    # relationship; only concept ids (x0) and their extension forms (x0 with namespace) code.
    return bool(_SNOMED.fullmatch(code)) and verhoeff.is_valid(code) and code[-2] == "0"


CHECKS: dict[str, tuple[str, Callable[[str], bool]]] = {
    LOINC: ("LOINC", _loinc),
    SNOMED_CT: ("SNOMED CT", _snomed),
    ICD10_CM: ("ICD-10-CM", lambda code: bool(_ICD10_CM.fullmatch(code))),
    RXNORM: ("RxNorm", lambda code: bool(_RXNORM.fullmatch(code))),
    NDC: ("NDC", lambda code: bool(_NDC.fullmatch(code))),
    CPT: ("CPT", lambda code: bool(_CPT.fullmatch(code))),
}


def check_coding(
    coding: Mapping[str, Any], *, system_required: bool = True
) -> tuple[str, str] | None:
    """(reason code, reason) when the Coding is unusable; the reason never quotes the code."""
    code = coding.get("code")
    if code is None:
        return None
    system = coding.get("system")
    if not isinstance(system, str) or not system:
        if not system_required:
            return None
        return ("CODE_WITHOUT_SYSTEM", "a coding has a code but no system")
    check = CHECKS.get(system)
    if check is not None and not (isinstance(code, str) and check[1](code.strip())):
        name = check[0]
        return (
            "INVALID_CODE",
            f"the code is not a well-formed {name} code (format or check digit)",
        )
    return None
