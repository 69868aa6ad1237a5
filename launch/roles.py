"""The identity sources and the role grant types: the vocabulary shared by the launch registration
(``[[ehr]]``), identity resolution and the access register (kept apart from them to avoid import cycles)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

CIS2_CLAIMS, PRACTITIONER_ROLE, REGISTER, EHR_DEFAULT = "cis2_claims", "practitioner_role", "register", "ehr_default"
IDENTITY_SOURCES = (CIS2_CLAIMS, PRACTITIONER_ROLE, REGISTER, EHR_DEFAULT)
DEFAULT_IDENTITY_ORDER = (CIS2_CLAIMS, PRACTITIONER_ROLE, REGISTER)
IDENTITY_SOURCE_LABELS = {
    CIS2_CLAIMS: "NHS Care Identity Service role (sign-in claims)",
    PRACTITIONER_ROLE: "your role in your clinical system (PractitionerRole)",
    REGISTER: "the Shared Care Record access register",
    EHR_DEFAULT: "the default role configured for this clinical system",
}


@dataclass(frozen=True)
class Organisation:
    ods: str | None
    name: str | None = None
    reference: str | None = None  # the Organization at the launching EHR


@dataclass(frozen=True)
class RoleGrant:
    """Role and activity codes from one identity source."""

    role_codes: tuple[str, ...]
    activity_codes: tuple[str, ...]
    source: str  # one of IDENTITY_SOURCES
    organisation: Organisation | None = None
    expires: str | None = None  # YYYY-MM-DD, for register entries


# The access register's lookup: (issuer, the user's subjects) → their current grant, or None.
RegisterLookup = Callable[[str, tuple[str, ...]], RoleGrant | None]


@dataclass(frozen=True)
class IdentityPolicy:
    """How one registered EHR's users are identified (from its ``[[ehr]]`` entry)."""

    order: tuple[str, ...] = DEFAULT_IDENTITY_ORDER
    default_grant: RoleGrant | None = None  # for ehr_default
    organisation: Organisation | None = None  # the organisation the EHR belongs to, when it is bound to one
