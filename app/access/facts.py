"""Plain facts for the access decision, read from the consolidated record and the launching EHR."""

from __future__ import annotations

import logging

from app.record.service import ConsolidatedRecord
from core.identifiers import NHS_NUMBER_SYSTEM as NHS_NUMBER
from core.identifiers import ODS_SYSTEM as ODS
from core.identifiers import SDS_USER_SYSTEM as SDS_USER
from launch.context import LaunchContext
from launch.ehr_client import EhrFhirClient
from launch.errors import SourceError

from .policy import PatientFacts

log = logging.getLogger(__name__)
PRIVACY_SCOPE = "patient-privacy"


def patient_facts(
    ctx: LaunchContext, record: ConsolidatedRecord, client: EhrFhirClient | None, colleague: bool | None = None
) -> PatientFacts:
    """``colleague`` may be given when it was asked in advance (alongside the fetch)."""
    identity = ctx.identity or {}
    registered, episodes, teams = set(), set(), set()
    for result in record.loaded:
        for gp in (result.patient or {}).get("generalPractitioner") or []:
            ods = _ods_of(gp, result.source.ods_code if result.source.kind == "gp" else None)
            if ods:
                registered.add(ods)
    for row in record.section("episodes"):
        if row.status == "active":
            episodes.update(_holder_ods(row, "managingOrganization"))
    for row in record.section("care_teams"):
        if row.status == "active":
            teams.update(_holder_ods(row, "managingOrganization"))
    whole, per_org = objection(record)
    sds = identity.get("sds_user_id")
    family = bool(sds) and any(
        i.get("system") == SDS_USER and i.get("value") == sds
        for row in record.section("contacts")
        for r in row.resources
        for i in r.get("identifier") or []
    )
    return PatientFacts(
        registered_ods=frozenset(registered),
        episode_ods=frozenset(episodes),
        care_team_ods=frozenset(teams),
        encounter_in_context=bool(ctx.encounter),
        objection_whole=whole,
        objection_ods=frozenset(per_org),
        is_user=bool(identity.get("nhs_number")) and identity.get("nhs_number") == record.nhs_number,
        family=family,
        colleague=colleague
        if colleague is not None
        else (is_colleague(client, record.nhs_number, identity) if client else False),
    )


def objection(record: ConsolidatedRecord) -> tuple[bool, set[str]]:
    """An active deny Consent about sharing: for the whole record, or naming organisations (ODS)."""
    whole, orgs = False, set()
    for row in record.section("consents"):
        for consent in row.resources:
            if consent.get("status") != "active":
                continue
            scope_codes = {c.get("code") for c in (consent.get("scope") or {}).get("coding") or []}
            provision = consent.get("provision") or {}
            if PRIVACY_SCOPE not in scope_codes or provision.get("type") != "deny":
                continue
            actors = [a.get("reference") or {} for a in provision.get("actor") or []]
            named = {
                (a.get("identifier") or {}).get("value")
                for a in actors
                if (a.get("identifier") or {}).get("system") == ODS
            }
            named.discard(None)
            if named:
                orgs |= named
            else:
                whole = True
    return whole, orgs


def _ods_of(ref: dict, default: str | None) -> str | None:
    ident = ref.get("identifier") or {}
    if ident.get("system") == ODS and ident.get("value"):
        return ident["value"]
    if (ref.get("reference") or "").startswith("Organization/"):
        return default  # a reference into the GP practice's own system: the practice itself
    return None


def _holder_ods(row, field: str) -> set[str]:
    out = {s.ods for s in row.sources if s.ods}
    for r in row.resources:
        refs = r.get(field) or []
        for ref in refs if isinstance(refs, list) else [refs]:
            ident = (ref.get("identifier") if isinstance(ref, dict) else None) or {}
            if ident.get("system") == ODS and ident.get("value"):
                out.add(ident["value"])
    return out


def is_colleague(client: EhrFhirClient, nhs: str | None, identity: dict) -> bool:
    """Is the patient on the staff of the user's organisation? Asked of the user's own system."""
    if not nhs:
        return False
    try:
        bundle = client.get("Practitioner", {"identifier": f"{NHS_NUMBER}|{nhs}"})
    except SourceError as exc:
        log.warning("colleague check failed: %s", exc.detail)
        return False
    staff = [
        e.get("resource")
        for e in bundle.get("entry") or []
        if (e.get("resource") or {}).get("resourceType") == "Practitioner"
    ]
    return any(s.get("id") and f"Practitioner/{s['id']}" != identity.get("practitioner") for s in staff)
