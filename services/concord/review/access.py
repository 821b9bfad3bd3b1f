"""Who may do what in the review service: roles, permissions, the matrix between them, the
principal a verified token names, and the purposes of use a read of PHI must give.

Pure: no I/O, no framework. The API checks a permission with `require(principal, permission)`
before it reads anything, and maps the errors here to HTTP statuses through `status_code` and
`headers`, which every error of the review service's access layer carries.

What the permissions protect:

* a *list* (alerts.list, identity.list) shows enterprise ids, attribute names, rule ids,
  states and times: never a patient's name, birth date, address or a source's local id;
* a *read* (alerts.read, identity.read) is the detail with PHI (the disagreeing values, the
  demographics of an identity review) and must name a purpose of use, which the audit trail
  records with the read;
* *decide* is acknowledge, assign, comment, resolve, dismiss (alerts) and confirm, reject,
  unmerge (identity reviews);
* ops.read is operational views only: counts, ages, rates, with no patient identifier at all,
  not even an enterprise id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType


class Role(StrEnum):
    """A Concord role, as the token's role claim names it."""

    REVIEWER = "reviewer"
    CLINICIAN = "clinician"
    AUDITOR = "auditor"
    SRE = "sre"
    ADMIN = "admin"


class Permission(StrEnum):
    ALERTS_LIST = "alerts.list"
    ALERTS_READ = "alerts.read"
    ALERTS_DECIDE = "alerts.decide"
    IDENTITY_LIST = "identity.list"
    IDENTITY_READ = "identity.read"
    IDENTITY_DECIDE = "identity.decide"
    TEXT_LIST = "text.list"
    TEXT_READ = "text.read"
    TEXT_DECIDE = "text.decide"
    AUDIT_READ = "audit.read"
    OPS_READ = "ops.read"
    ADMIN_MANAGE = "admin.manage"


# What each permission lets a caller do, for error messages and the documentation.
PERMISSION_MEANING: Mapping[Permission, str] = MappingProxyType(
    {
        Permission.ALERTS_LIST: "list alerts (enterprise ids and attribute names, no PHI)",
        Permission.ALERTS_READ: "read an alert's detail, with PHI",
        Permission.ALERTS_DECIDE: "acknowledge, assign, comment on, resolve or dismiss alerts",
        Permission.IDENTITY_LIST: "list identity reviews (enterprise ids, no PHI)",
        Permission.IDENTITY_READ: "read an identity review's detail, with PHI",
        Permission.IDENTITY_DECIDE: "confirm or reject identity matches, unmerge",
        Permission.TEXT_LIST: "list text review tasks (enterprise ids and attributes, no PHI)",
        Permission.TEXT_READ: "read a text review task: the value and the words, with PHI",
        Permission.TEXT_DECIDE: "accept or reject what was read from clinical text",
        Permission.AUDIT_READ: "read the audit trail",
        Permission.OPS_READ: "operational views: counts, ages and rates, no patient identifiers",
        Permission.ADMIN_MANAGE: "manage the API's users and subscriptions",
    }
)

_P = Permission
# The matrix. Deliberately narrow: an auditor reads the audit trail and the lists that the
# trail's entries refer to, not PHI (an audit that needs a record's content asks a clinician
# to read it, with a purpose, which is audited in turn); an SRE sees operational views only,
# not even the lists, which name enterprise ids; an admin manages users and subscriptions and
# sees the operational views, but reads no alert.
ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = MappingProxyType(
    {
        Role.REVIEWER: frozenset(
            {
                _P.ALERTS_LIST,
                _P.ALERTS_READ,
                _P.ALERTS_DECIDE,
                _P.IDENTITY_LIST,
                _P.IDENTITY_READ,
                _P.IDENTITY_DECIDE,
                _P.TEXT_LIST,
                _P.TEXT_READ,
                _P.TEXT_DECIDE,
            }
        ),
        Role.CLINICIAN: frozenset(
            {
                _P.ALERTS_LIST,
                _P.ALERTS_READ,
                _P.IDENTITY_LIST,
                _P.IDENTITY_READ,
                _P.TEXT_LIST,
                _P.TEXT_READ,
            }
        ),
        Role.AUDITOR: frozenset({_P.AUDIT_READ, _P.ALERTS_LIST, _P.IDENTITY_LIST, _P.TEXT_LIST}),
        Role.SRE: frozenset({_P.OPS_READ}),
        Role.ADMIN: frozenset({_P.ADMIN_MANAGE, _P.OPS_READ}),
    }
)

# Permissions whose responses carry PHI: a request for one must name a purpose of use.
PHI_PERMISSIONS: frozenset[Permission] = frozenset({_P.ALERTS_READ, _P.IDENTITY_READ, _P.TEXT_READ})


class ReviewAccessError(Exception):
    """An access failure the API turns into a response: `status_code`, a `message` that says
    what to fix (never a token, never PHI) and the response `headers` it needs."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        return {}


class Forbidden(ReviewAccessError):
    """403: the caller is who they say, but their role does not allow this."""

    status_code = 403

    def __init__(self, role: Role, permission: Permission) -> None:
        super().__init__(
            f"role '{role}' lacks permission '{permission}' "
            f"({PERMISSION_MEANING[permission]}); roles that have it: "
            f"{', '.join(roles_with(permission)) or 'none'}"
        )
        self.role = role
        self.permission = permission


class PurposeOfUseRequired(ReviewAccessError):
    """422: a read of PHI without a purpose of use, or with one not in the catalogue."""

    status_code = 422


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as a verified token names them. `subject` is unique per `issuer` only."""

    subject: str
    role: Role
    issuer: str
    display_name: str | None = None
    expires_at: datetime | None = None

    @property
    def key(self) -> str:
        """Stable id of the caller across requests: for the rate limit and the audit trail."""
        return f"{self.issuer} {self.subject}"


def allowed(principal: Principal, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[principal.role]


def require(principal: Principal, permission: Permission) -> None:
    """Raise Forbidden unless the principal's role has the permission."""
    if not allowed(principal, permission):
        raise Forbidden(principal.role, permission)


def roles_with(permission: Permission) -> list[Role]:
    return [role for role in Role if permission in ROLE_PERMISSIONS[role]]


# --- purposes of use -------------------------------------------------------------------------

PURPOSE_OF_USE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
# The HTTP header an API call names its purpose in; the web page sends a form field instead.
PURPOSE_OF_USE_HEADER = "X-Purpose-Of-Use"


@dataclass(frozen=True, slots=True)
class PurposeOfUse:
    """A code of HL7's PurposeOfUse value set (v3-ActReason), with its display text and
    why a Concord reviewer would give it."""

    code: str
    display: str
    when: str

    @property
    def system(self) -> str:
        return PURPOSE_OF_USE_SYSTEM


# The codes of HL7's PurposeOfUse value set that fit reading a conflict or an identity review.
# Left out on purpose: HPAYMT (payment), HMARKT (marketing), HRESCH (research: needs its own
# approval and a de-identified extract, not a reviewer's screen), PUBHLTH (public health
# reporting: not done from this tool) and the emergency codes (there is no consent-based
# restriction here for a break-glass access to override).
PURPOSES_OF_USE: Mapping[str, PurposeOfUse] = MappingProxyType(
    {
        p.code: p
        for p in (
            PurposeOfUse(
                "TREAT",
                "treatment",
                "a clinician checks which value is right for a patient in their care",
            ),
            PurposeOfUse(
                "HOPERAT",
                "healthcare operations",
                "reviewing and resolving a conflict between two sources as part of the "
                "organisation's data reconciliation work",
            ),
            PurposeOfUse(
                "RECORDMGT",
                "records management",
                "correcting the health record in a source system after a conflict",
            ),
            PurposeOfUse(
                "PATADMIN",
                "patient administration",
                "registration work: deciding an identity match, a merge or an unmerge",
            ),
            PurposeOfUse(
                "HQUALIMP",
                "health quality improvement",
                "reviewing alerts to improve a source's data quality or a rule",
            ),
        )
    }
)


def purpose_of_use(value: str | None) -> PurposeOfUse:
    """The catalogue entry a request names (a code such as `HOPERAT`, any case, or
    `system|code`); PurposeOfUseRequired when it names none or one not in the catalogue."""
    codes = ", ".join(PURPOSES_OF_USE)
    if value is None or not value.strip():
        raise PurposeOfUseRequired(
            f"reading PHI needs a purpose of use: send the {PURPOSE_OF_USE_HEADER} header "
            f"with one of {codes}"
        )
    text = value.strip()
    system, bar, code = text.rpartition("|")
    if bar and system != PURPOSE_OF_USE_SYSTEM:
        raise PurposeOfUseRequired(
            f"purpose of use must be a code of {PURPOSE_OF_USE_SYSTEM} (one of {codes})"
        )
    found = PURPOSES_OF_USE.get(code.upper())
    if found is None:
        raise PurposeOfUseRequired(
            f"unknown purpose of use; send one of {codes} in {PURPOSE_OF_USE_HEADER}"
        )
    return found
