"""The review service's roles and permissions: the matrix, refusals, purposes of use."""

from __future__ import annotations

import pytest

from concord.review.access import (
    PHI_PERMISSIONS,
    PURPOSE_OF_USE_SYSTEM,
    PURPOSES_OF_USE,
    ROLE_PERMISSIONS,
    Forbidden,
    Permission,
    Principal,
    PurposeOfUseRequired,
    Role,
    allowed,
    purpose_of_use,
    require,
)

# The matrix as the documentation states it (docs/review-access.md): Y where the role has the
# permission. Columns: reviewer, clinician, auditor, sre, admin.
ROLES = (Role.REVIEWER, Role.CLINICIAN, Role.AUDITOR, Role.SRE, Role.ADMIN)
MATRIX = {
    Permission.ALERTS_LIST: "Y Y Y . .",
    Permission.ALERTS_READ: "Y Y . . .",
    Permission.ALERTS_DECIDE: "Y . . . .",
    Permission.IDENTITY_LIST: "Y Y Y . .",
    Permission.IDENTITY_READ: "Y Y . . .",
    Permission.IDENTITY_DECIDE: "Y . . . .",
    Permission.TEXT_LIST: "Y Y Y . .",
    Permission.TEXT_READ: "Y Y . . .",
    Permission.TEXT_DECIDE: "Y . . . .",
    Permission.AUDIT_READ: ". . Y . .",
    Permission.OPS_READ: ". . . Y Y",
    Permission.ADMIN_MANAGE: ". . . . Y",
}
CASES = [
    (role, permission, mark == "Y")
    for permission, row in MATRIX.items()
    for role, mark in zip(ROLES, row.split(), strict=True)
]


def principal(role: Role) -> Principal:
    return Principal(subject="u-1", role=role, issuer="https://idp.example")


def test_the_table_covers_every_role_and_permission() -> None:
    assert set(MATRIX) == set(Permission)
    assert set(ROLES) == set(Role) == set(ROLE_PERMISSIONS)


@pytest.mark.parametrize(("role", "permission", "expected"), CASES)
def test_matrix(role: Role, permission: Permission, expected: bool) -> None:
    assert allowed(principal(role), permission) is expected
    if expected:
        require(principal(role), permission)
    else:
        with pytest.raises(Forbidden) as refused:
            require(principal(role), permission)
        assert refused.value.status_code == 403
        assert f"'{role}'" in refused.value.message
        assert f"'{permission}'" in refused.value.message


def test_sre_never_reaches_phi_nor_enterprise_ids() -> None:
    sre = principal(Role.SRE)
    for permission in Permission:
        if permission is not Permission.OPS_READ:
            assert not allowed(sre, permission)


def test_only_reviewers_and_clinicians_read_phi() -> None:
    readers = {role for role in Role for p in PHI_PERMISSIONS if allowed(principal(role), p)}
    assert readers == {Role.REVIEWER, Role.CLINICIAN}


def test_forbidden_names_the_roles_that_have_the_permission() -> None:
    with pytest.raises(Forbidden) as refused:
        require(principal(Role.AUDITOR), Permission.ALERTS_DECIDE)
    assert "reviewer" in refused.value.message
    assert refused.value.headers == {}


def test_principal_key_is_issuer_and_subject() -> None:
    a = Principal(subject="s", role=Role.REVIEWER, issuer="https://a.example")
    b = Principal(subject="s", role=Role.REVIEWER, issuer="https://b.example")
    assert a.key != b.key


# --- purposes of use --------------------------------------------------------------------------


def test_catalogue_is_hl7_purpose_of_use_codes() -> None:
    assert set(PURPOSES_OF_USE) == {"TREAT", "HOPERAT", "RECORDMGT", "PATADMIN", "HQUALIMP"}
    for code, purpose in PURPOSES_OF_USE.items():
        assert purpose.code == code
        assert purpose.display and purpose.when
        assert purpose.system == PURPOSE_OF_USE_SYSTEM


@pytest.mark.parametrize(
    ("given", "code"),
    [
        ("HOPERAT", "HOPERAT"),
        (" treat ", "TREAT"),
        (f"{PURPOSE_OF_USE_SYSTEM}|PATADMIN", "PATADMIN"),
    ],
)
def test_purpose_of_use_accepted(given: str, code: str) -> None:
    assert purpose_of_use(given).code == code


@pytest.mark.parametrize(
    "given", [None, "", "  ", "HRESCH", "HMARKT", "http://example.org|TREAT", "Jane Doe"]
)
def test_purpose_of_use_refused(given: str | None) -> None:
    with pytest.raises(PurposeOfUseRequired) as refused:
        purpose_of_use(given)
    assert refused.value.status_code == 422
    assert "HOPERAT" in refused.value.message
    if given and given.strip():
        assert given.strip() not in refused.value.message  # never echoed: it may be PHI
