"""SMART scopes, v1 (``patient/Observation.read``) and v2 (``patient/Observation.rs``).

What the viewer asks for (minimum necessary), what it needs granted, and the grammar the sandbox's
servers honour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RESOURCE_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)(\?.*)?$")
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}


@dataclass(frozen=True)
class ResourceScope:
    level: str  # patient | user | system
    resource_type: str  # a FHIR type or "*"
    permissions: str  # subset of "cruds"

    def covers(self, other: ResourceScope) -> bool:
        return (
            self.level == other.level
            and self.resource_type in ("*", other.resource_type)
            and set(other.permissions) <= set(self.permissions)
        )


def parse(scope: str) -> ResourceScope | None:
    """A resource scope, or None for anything else (``launch``, ``openid``…) and for malformed ones."""
    m = _RESOURCE_SCOPE.match(scope)
    if not m:
        return None
    level, rtype, perms = m.group(1), m.group(2), m.group(3)
    if perms in V1_PERMISSIONS:
        perms = V1_PERMISSIONS[perms]
    elif not perms or any(c not in "cruds" for c in perms) or list(perms) != sorted(perms, key="cruds".index):
        return None  # v2 permissions must be a subset of c r u d s, in that order
    return ResourceScope(level, rtype, perms)


def allowed_subset(requested: str, registered: str) -> str:
    """The requested scopes a client may be granted: each must be registered or covered by one that is."""
    registered_list = registered.split()
    parsed_registered = [p for p in (parse(s) for s in registered_list) if p]
    granted = []
    for s in requested.split():
        if s in registered_list:
            granted.append(s)
            continue
        wanted = parse(s)
        if wanted and any(r.covers(wanted) for r in parsed_registered):
            granted.append(s)
    return " ".join(dict.fromkeys(granted))


def permits(scope: str, level_options: tuple[str, ...], resource_type: str, permission: str) -> str | None:
    """The level (patient/user/system) under which ``scope`` allows ``permission`` on ``resource_type``."""
    wanted = {lvl: ResourceScope(lvl, resource_type, permission) for lvl in level_options}
    levels = set()
    for s in scope.split():
        p = parse(s)
        if p and p.level in wanted and p.covers(wanted[p.level]):
            levels.add(p.level)
    for lvl in ("system", "user", "patient"):  # broadest first
        if lvl in levels:
            return lvl
    return None


# Practitioner search lets the viewer ask the user's own system whether the patient is a colleague.
IDENTITY_SCOPES = ("user/Practitioner.rs", "user/PractitionerRole.rs", "user/Organization.r")


def launch_scopes(record_types: tuple[str, ...], standalone: bool) -> str:
    """Minimum-necessary v2 scopes: identity, refresh while the user is online, and read/search on exactly
    the patient's resource types the record reads (given by the record catalogue)."""
    context = "launch/patient" if standalone else "launch"
    resources = ["patient/Patient.r", *(f"patient/{t}.rs" for t in sorted(set(record_types)))]
    return " ".join([context, "openid", "fhirUser", "online_access", *resources, *IDENTITY_SCOPES])


def missing_scopes(granted: str) -> list[str]:
    """What the viewer cannot work without: identity (openid fhirUser) and reading the patient."""
    have = set(granted.split())
    missing = [s for s in ("openid", "fhirUser") if s not in have]
    if permits(granted, ("patient", "user"), "Patient", "r") is None:
        missing.append("patient/Patient.r")
    return missing
