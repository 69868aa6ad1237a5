"""Who the user is: ``fhirUser`` (Practitioner or PractitionerRole) resolved at the launching EHR,
combined with the national RBAC claims (CIS2 style) carried in the id_token.

The result is one typed value, ``UserIdentity``, stored with the launch context and handed to the access
decision and the audit trail.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from core.identifiers import JOB_ROLE_SYSTEM, NHS_NUMBER_SYSTEM, ODS_SYSTEM, SDS_USER_SYSTEM
from core.names import display_name

from .ehr_client import EhrFhirClient
from .errors import IdentityUnresolved, SourceError

JOB_ROLE_SYSTEMS = (
    JOB_ROLE_SYSTEM,
    "https://fhir.hl7.org.uk/CodeSystem/UKCore-SDSJobRoleName",
)
STAFF_TYPES = ("Practitioner", "PractitionerRole")


@dataclass(frozen=True)
class Organisation:
    ods: str | None
    name: str | None = None
    reference: str | None = None  # the Organization at the launching EHR


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

    @classmethod
    def from_dict(cls, data: dict) -> UserIdentity:
        org = data.get("organisation")
        return cls(
            **{
                **data,
                "role_codes": tuple(data.get("role_codes") or ()),
                "activity_codes": tuple(data.get("activity_codes") or ()),
                "organisation": Organisation(**org) if org else None,
            }
        )


def resolve_identity(client: EhrFhirClient, fhir_user: str | None, claims: dict) -> UserIdentity:
    identity = {
        "sub": claims.get("sub"),
        "fhir_user": fhir_user,
        "name": claims.get("name"),
        "sds_user_id": claims.get("nhsid_useruid"),
        "role_codes": [],
        "activity_codes": [],
        "organisation": None,  # {"ods": ..., "name": ..., "reference": ...}
        "practitioner": None,  # "Practitioner/<id>" at the launching EHR
        "nhs_number": None,  # when the EHR links the user's staff record to their own patient identity
    }
    _apply_rbac_claims(identity, claims)
    rtype = _reference_type(fhir_user)
    if fhir_user and rtype not in STAFF_TYPES:
        raise IdentityUnresolved(f"fhirUser {fhir_user!r} is not a Practitioner or PractitionerRole")
    if fhir_user and client.resolve(fhir_user):
        try:
            _apply_fhir(identity, client, fhir_user, rtype)
        except SourceError as exc:
            raise IdentityUnresolved(f"could not read fhirUser: {exc.detail}") from exc
    if not identity["name"]:
        raise IdentityUnresolved("neither the id_token nor the EHR gave the user's name")
    org = identity["organisation"]
    return UserIdentity(
        name=identity["name"],
        sub=identity["sub"],
        fhir_user=identity["fhir_user"],
        sds_user_id=identity["sds_user_id"],
        role_codes=tuple(sorted(set(identity["role_codes"]))),
        activity_codes=tuple(sorted(set(identity["activity_codes"]))),
        organisation=Organisation(**org) if org else None,
        practitioner=identity["practitioner"],
        nhs_number=identity["nhs_number"],
    )


def _reference_type(ref: str | None) -> str | None:
    if not ref:
        return None
    parts = ref.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else None


def _apply_rbac_claims(identity: dict, claims: dict) -> None:
    """CIS2 ``nhsid_nrbac_roles``: the selected role's job role code (R-part) and activity codes."""
    roles = claims.get("nhsid_nrbac_roles")
    if not isinstance(roles, list):
        return
    selected = claims.get("selected_roleid")
    for role in roles:
        if not isinstance(role, dict) or (selected and role.get("person_roleid") != selected):
            continue
        code = str(role.get("role_code", "")).split(":")[-1]
        if code:
            identity["role_codes"].append(code)
        identity["activity_codes"].extend(str(a) for a in role.get("activity_codes") or [])
        if role.get("org_code") and not identity["organisation"]:
            identity["organisation"] = {"ods": role["org_code"], "name": None, "reference": None}


def _apply_fhir(identity: dict, client: EhrFhirClient, fhir_user: str, rtype: str | None) -> None:
    if rtype == "PractitionerRole":
        roles = [client.get(fhir_user)]
        practitioner_ref = (roles[0].get("practitioner") or {}).get("reference")
        practitioner = client.get(practitioner_ref) if practitioner_ref and client.resolve(practitioner_ref) else None
    else:
        # The Practitioner's id is in the reference: ask for it and its roles at the same time (one round trip).
        pid = fhir_user.rstrip("/").split("/")[-1]
        with ThreadPoolExecutor(max_workers=2) as pool:
            asked = pool.submit(client.get, fhir_user)
            bundle = client.get("PractitionerRole", {"practitioner": f"Practitioner/{pid}"})
            practitioner = asked.result()
        roles = [
            e["resource"]
            for e in bundle.get("entry", [])
            if e.get("resource", {}).get("resourceType") == "PractitionerRole"
        ]
    if practitioner:
        identity["practitioner"] = f"Practitioner/{practitioner.get('id')}"
        identity["name"] = identity["name"] or display_name(practitioner.get("name"), with_title=True)
        for ident in practitioner.get("identifier") or []:
            if ident.get("system") == SDS_USER_SYSTEM and not identity["sds_user_id"]:
                identity["sds_user_id"] = ident.get("value")
            if ident.get("system") == NHS_NUMBER_SYSTEM:
                identity["nhs_number"] = (ident.get("value") or "").replace(" ", "") or None
    for role in roles:
        for concept in role.get("code") or []:
            for coding in concept.get("coding") or []:
                if coding.get("system") in JOB_ROLE_SYSTEMS and coding.get("code"):
                    identity["role_codes"].append(str(coding["code"]).split(":")[-1])
        org = role.get("organization") or {}
        org_ref, ods = org.get("reference"), (org.get("identifier") or {}).get("value")
        known = identity["organisation"] or {}
        if ods or (known.get("ods") and org.get("display")):
            # The ODS code is already known (reference identifier, or the CIS2 claims): no extra round trip.
            identity["organisation"] = {"ods": ods or known["ods"], "name": org.get("display"), "reference": org_ref}
        elif org_ref and client.resolve(org_ref):
            org_resource = client.get(org_ref)
            ods = next(
                (i.get("value") for i in org_resource.get("identifier") or [] if i.get("system") == ODS_SYSTEM), None
            )
            identity["organisation"] = {"ods": ods, "name": org_resource.get("name"), "reference": org_ref}
