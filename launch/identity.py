"""Who the user is: ``fhirUser`` (Practitioner or PractitionerRole) resolved at the launching EHR,
combined with the national RBAC claims (CIS2 style) carried in the id_token.

The result is a plain dict so it can be stored with the launch context and handed to access decisions.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from core.identifiers import JOB_ROLE_SYSTEM, NHS_NUMBER_SYSTEM, ODS_SYSTEM, SDS_USER_SYSTEM

from .ehr_client import EhrFhirClient
from .errors import IdentityUnresolved, SourceError

JOB_ROLE_SYSTEMS = (
    JOB_ROLE_SYSTEM,
    "https://fhir.hl7.org.uk/CodeSystem/UKCore-SDSJobRoleName",
)
STAFF_TYPES = ("Practitioner", "PractitionerRole")


def resolve_identity(client: EhrFhirClient, fhir_user: str | None, claims: dict) -> dict:
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
    identity["role_codes"] = sorted(set(identity["role_codes"]))
    identity["activity_codes"] = sorted(set(identity["activity_codes"]))
    return identity


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
        identity["name"] = identity["name"] or _human_name(practitioner.get("name"))
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


def _human_name(names: list | None) -> str | None:
    if not names:
        return None
    n = names[0]
    if n.get("text"):
        return n["text"]
    return " ".join([*n.get("prefix", []), *n.get("given", []), n.get("family", "")]).strip() or None
