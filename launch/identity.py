"""Who the user is and what they may do, from what the launching EHR actually provides.

Identity (name, user id, Practitioner) comes from the id_token and ``fhirUser``. The national RBAC role
and activity codes come from the first of the EHR's configured *identity sources* that yields any:

- ``cis2_claims``: the CIS2-style ``nhsid_nrbac_roles`` claim in the id_token (NHS Care Identity Service 2);
- ``practitioner_role``: national job role and activity codes on the user's PractitionerRole.code;
- ``register``: the viewer's local access register (issuer + user id or fhirUser → codes, with an expiry);
- ``ehr_default``: an explicit per-EHR grant ("only clinical staff can reach this EHR"), off by default.

Codes are never mixed across sources: the audit records which one gave them (``role_source``), and what
each of the others lacked (``tried``) is shown to a user for whom nothing maps.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from core.identifiers import ACTIVITY_CODE_SYSTEM, JOB_ROLE_SYSTEM, NHS_NUMBER_SYSTEM, ODS_SYSTEM, SDS_USER_SYSTEM
from core.names import display_name

from .ehr_client import EhrFhirClient
from .errors import IdentityUnresolved, SourceError
from .roles import (
    CIS2_CLAIMS,
    EHR_DEFAULT,
    PRACTITIONER_ROLE,
    REGISTER,
    IdentityPolicy,
    Organisation,
    RegisterLookup,
    RoleGrant,
)

JOB_ROLE_SYSTEMS = (
    JOB_ROLE_SYSTEM,
    "https://fhir.hl7.org.uk/CodeSystem/UKCore-SDSJobRoleName",
)
ACTIVITY_CODE_SYSTEMS = (ACTIVITY_CODE_SYSTEM,)
STAFF_TYPES = ("Practitioner", "PractitionerRole")
INCLUDE_PRACTITIONER = "PractitionerRole:practitioner"


class _NoInclude:
    """EHRs (issuers) seen answering a PractitionerRole search with roles but without the ``_include``d
    Practitioner: they are asked for both at once, in two reads side by side, from then on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issuers: set[str] = set()

    def __contains__(self, issuer: str) -> bool:
        with self._lock:
            return issuer in self._issuers

    def add(self, issuer: str) -> None:
        with self._lock:
            if len(self._issuers) > 256:  # only configured EHRs are ever asked
                self._issuers.clear()
            self._issuers.add(issuer)

    def clear(self) -> None:
        with self._lock:
            self._issuers.clear()


NO_INCLUDE = _NoInclude()


@dataclass(frozen=True)
class UserIdentity:
    """The signed-in user, as far as the launching EHR and the id_token say."""

    name: str
    sub: str | None = None
    fhir_user: str | None = None
    sds_user_id: str | None = None
    role_codes: tuple[str, ...] = ()
    activity_codes: tuple[str, ...] = ()
    organisation: Organisation | None = None
    practitioner: str | None = None  # "Practitioner/<id>" at the launching EHR
    nhs_number: str | None = None  # when the EHR links the user's staff record to their own patient identity
    issuer: str | None = None  # the launching EHR (the access register is keyed on it)
    role_source: str | None = None  # the identity source that gave the codes (IDENTITY_SOURCES), None if none did
    tried: tuple[str, ...] = ()  # "<source>: what it lacked", for each source tried without result

    @property
    def user_id(self) -> str | None:
        """The id the audit trail and break-glass are keyed on: the national SDS user id, else the subject."""
        return self.sds_user_id or self.sub

    @property
    def ods(self) -> str | None:
        return self.organisation.ods if self.organisation else None

    @property
    def organisation_label(self) -> str:
        org = self.organisation
        return (org.name or org.ods or "unknown organisation") if org else "unknown organisation"

    @property
    def subjects(self) -> tuple[str, ...]:
        """What the access register may be keyed on for this user: the id_token subject, fhirUser, SDS id."""
        return tuple(dict.fromkeys(s for s in (self.sub, self.fhir_user, self.sds_user_id) if s))

    @classmethod
    def from_dict(cls, data: dict) -> UserIdentity:
        org = data.get("organisation")
        return cls(
            **{
                **data,
                "role_codes": tuple(data.get("role_codes") or ()),
                "activity_codes": tuple(data.get("activity_codes") or ()),
                "tried": tuple(data.get("tried") or ()),
                "organisation": Organisation(**org) if org else None,
            }
        )


def resolve_identity(
    client: EhrFhirClient,
    fhir_user: str | None,
    claims: dict,
    *,
    issuer: str = "",
    policy: IdentityPolicy | None = None,
    register: RegisterLookup | None = None,
) -> UserIdentity:
    policy = policy or IdentityPolicy()
    rtype = _reference_type(fhir_user)
    if fhir_user and rtype not in STAFF_TYPES:
        raise IdentityUnresolved(f"fhirUser {fhir_user!r} is not a Practitioner or PractitionerRole")
    staff = _Staff()
    if fhir_user and client.resolve(fhir_user):
        try:
            _read_staff(staff, client, fhir_user, rtype)
        except SourceError as exc:
            raise IdentityUnresolved(f"could not read fhirUser: {exc.detail}") from exc
    name = claims.get("name") or staff.name
    if not name:
        raise IdentityUnresolved("neither the id_token nor the EHR gave the user's name")
    identity = UserIdentity(
        name=name,
        sub=claims.get("sub"),
        fhir_user=fhir_user,
        sds_user_id=claims.get("nhsid_useruid") or staff.sds_user_id,
        practitioner=staff.practitioner,
        nhs_number=staff.nhs_number,
        issuer=issuer or None,
    )
    grant, tried = None, []
    for source in policy.order:
        found, lacked = _grant_from(source, claims, staff, identity, policy, register)
        if found is not None and found.activity_codes:
            grant = found
            break
        tried.append(f"{source}: {lacked}")
        if found is not None and found.role_codes and grant is None:
            grant = found  # a role without activities (administrative staff): kept unless a later source maps
    # The EHR's own organisation when it is bound to one; else what the role says (read only if needed).
    organisation = (
        policy.organisation
        or (grant.organisation if grant else None)
        or _role_organisation(client, staff.organisation_ref)
        or _claims_org(claims)
    )
    return replace(
        identity,
        role_codes=tuple(sorted(set(grant.role_codes))) if grant else (),
        activity_codes=tuple(sorted(set(grant.activity_codes))) if grant else (),
        role_source=grant.source if grant else None,
        organisation=organisation,
        tried=tuple(tried),
    )


def _grant_from(
    source: str,
    claims: dict,
    staff: _Staff,
    identity: UserIdentity,
    policy: IdentityPolicy,
    register: RegisterLookup | None,
) -> tuple[RoleGrant | None, str]:
    """One identity source's grant (or None), and what it lacked in plain words."""
    if source == CIS2_CLAIMS:
        grant = _cis2_grant(claims)
        if grant is None:
            return None, "the sign-in carried no national RBAC role (nhsid_nrbac_roles)"
        return grant, "the selected role has no activity codes"
    if source == PRACTITIONER_ROLE:
        if not staff.roles_read:
            return None, "the sign-in named no staff record (fhirUser) to read"
        if not staff.role_codes and not staff.activity_codes:
            return None, "no PractitionerRole with national RBAC codes for this user"
        grant = RoleGrant(tuple(staff.role_codes), tuple(staff.activity_codes), PRACTITIONER_ROLE)
        return grant, "the PractitionerRole has a job role code but no activity codes"
    if source == REGISTER:
        if register is None or not identity.issuer:
            return None, "the access register is not available"
        grant = register(identity.issuer, identity.subjects)
        return grant, "no current entry for this user"
    if source == EHR_DEFAULT:
        return policy.default_grant, "no default role is configured for this clinical system"
    return None, "unknown identity source"


def _cis2_grant(claims: dict) -> RoleGrant | None:
    """CIS2 ``nhsid_nrbac_roles``: the selected role's job role code (R-part) and activity codes."""
    roles = claims.get("nhsid_nrbac_roles")
    if not isinstance(roles, list):
        return None
    selected = claims.get("selected_roleid")
    role_codes: list[str] = []
    activities: list[str] = []
    org = None
    for role in roles:
        if not isinstance(role, dict) or (selected and role.get("person_roleid") != selected):
            continue
        code = str(role.get("role_code", "")).split(":")[-1]
        if code:
            role_codes.append(code)
        activities.extend(str(a) for a in role.get("activity_codes") or [])
        if role.get("org_code") and org is None:
            org = Organisation(ods=str(role["org_code"]))
    if not role_codes and not activities:
        return None
    return RoleGrant(tuple(role_codes), tuple(activities), CIS2_CLAIMS, org)


def _claims_org(claims: dict) -> Organisation | None:
    grant = _cis2_grant(claims)
    return grant.organisation if grant else None


@dataclass
class _Staff:
    """What the EHR says about the user's staff record (Practitioner and PractitionerRole)."""

    name: str | None = None
    practitioner: str | None = None
    sds_user_id: str | None = None
    nhs_number: str | None = None
    roles_read: bool = False
    role_codes: list[str] = field(default_factory=list)
    activity_codes: list[str] = field(default_factory=list)
    organisation_ref: dict | None = None  # PractitionerRole.organization


def _reference_type(ref: str | None) -> str | None:
    if not ref:
        return None
    parts = ref.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else None


def _read_staff(staff: _Staff, client: EhrFhirClient, fhir_user: str, rtype: str | None) -> None:
    """The user's Practitioner and PractitionerRole(s) in one round trip: a PractitionerRole search with
    ``_include=PractitionerRole:practitioner``. When the answer lacks the Practitioner (no role, or an EHR that
    does not include), it is read on its own; an EHR that does not include is then asked for both side by
    side at later launches."""
    issuer = client.iss
    fid = fhir_user.rstrip("/").split("/")[-1]
    if rtype == "PractitionerRole":
        bundle = client.get("PractitionerRole", {"_id": fid, "_include": INCLUDE_PRACTITIONER})
        roles = [r for r in _resources(bundle, "PractitionerRole") if r.get("id") == fid] or [client.get(fhir_user)]
        practitioner_ref = (roles[0].get("practitioner") or {}).get("reference")
        pid = practitioner_ref.rstrip("/").split("/")[-1] if practitioner_ref else None
        practitioner = next((p for p in _resources(bundle, "Practitioner") if pid and p.get("id") == pid), None)
        if practitioner is None and practitioner_ref and client.resolve(practitioner_ref):
            if _resources(bundle, "PractitionerRole"):
                NO_INCLUDE.add(issuer)
            practitioner = client.get(practitioner_ref)
    elif issuer in NO_INCLUDE:
        # The Practitioner's id is in the reference: ask for it and its roles at the same time (one round trip).
        with ThreadPoolExecutor(max_workers=2) as pool:
            asked = pool.submit(client.get, fhir_user)
            bundle = client.get("PractitionerRole", {"practitioner": f"Practitioner/{fid}"})
            practitioner = asked.result()
        roles = _resources(bundle, "PractitionerRole")
    else:
        bundle = client.get(
            "PractitionerRole", {"practitioner": f"Practitioner/{fid}", "_include": INCLUDE_PRACTITIONER}
        )
        roles = _resources(bundle, "PractitionerRole")
        practitioner = next((p for p in _resources(bundle, "Practitioner") if p.get("id") == fid), None)
        if practitioner is None:  # no role to include it from, or an EHR that does not include
            if roles:
                NO_INCLUDE.add(issuer)
            practitioner = client.get(fhir_user)
    staff.roles_read = True
    if practitioner:
        staff.practitioner = f"Practitioner/{practitioner.get('id')}"
        staff.name = display_name(practitioner.get("name"), with_title=True)
        for ident in practitioner.get("identifier") or []:
            if ident.get("system") == SDS_USER_SYSTEM and not staff.sds_user_id:
                staff.sds_user_id = ident.get("value")
            if ident.get("system") == NHS_NUMBER_SYSTEM:
                staff.nhs_number = (ident.get("value") or "").replace(" ", "") or None
    for role in roles:
        if role.get("active") is False:
            continue
        for concept in role.get("code") or []:
            for coding in concept.get("coding") or []:
                code = str(coding.get("code") or "").split(":")[-1]
                if coding.get("system") in JOB_ROLE_SYSTEMS and code:
                    staff.role_codes.append(code)
                elif coding.get("system") in ACTIVITY_CODE_SYSTEMS and code:
                    staff.activity_codes.append(code)
        if staff.organisation_ref is None and role.get("organization"):
            staff.organisation_ref = role["organization"]


def _resources(bundle: dict, rtype: str) -> list[dict]:
    return [
        e["resource"]
        for e in bundle.get("entry") or []
        if isinstance(e, dict) and isinstance(e.get("resource"), dict) and e["resource"].get("resourceType") == rtype
    ]


def _role_organisation(client: EhrFhirClient, org: dict | None) -> Organisation | None:
    """The role's organisation: its ODS identifier when the reference carries one, else read from the EHR."""
    if not org:
        return None
    org_ref, ods = org.get("reference"), (org.get("identifier") or {}).get("value")
    if ods:
        return Organisation(ods=ods, name=org.get("display"), reference=org_ref)
    if org_ref and client.resolve(org_ref):
        try:
            resource = client.get(org_ref)
        except SourceError:
            return Organisation(ods=None, name=org.get("display"), reference=org_ref)
        ods = next((i.get("value") for i in resource.get("identifier") or [] if i.get("system") == ODS_SYSTEM), None)
        return Organisation(ods=ods, name=resource.get("name") or org.get("display"), reference=org_ref)
    return None
