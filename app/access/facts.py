"""Plain facts for the access decision, read from the raw resources each organisation returned (not from
merged rows, so the record is merged once, after the decision) and from the launching EHR."""

from __future__ import annotations

import logging

from app.record.fetch import SourceResult
from core.identifiers import NHS_NUMBER_SYSTEM as NHS_NUMBER
from core.identifiers import ODS_SYSTEM as ODS
from core.identifiers import SDS_USER_SYSTEM as SDS_USER
from launch.context import LaunchContext
from launch.ehr_client import EhrFhirClient
from launch.errors import SourceError
from launch.identity import UserIdentity

from .policy import PatientFacts

log = logging.getLogger(__name__)
PRIVACY_SCOPE = "patient-privacy"


def patient_facts(
    ctx: LaunchContext, nhs: str | None, results: list[SourceResult], colleague: bool = False
) -> PatientFacts:
    """``results``: the organisations that returned this person's record; ``colleague`` is asked of the
    user's own system alongside the fetch (``is_colleague``)."""
    identity = ctx.identity
    registered, episodes, teams = set(), set(), set()
    consents, contacts = [], []
    for result in results:
        source_ods = result.source.ods_code or None
        for gp in (result.patient or {}).get("generalPractitioner") or []:
            ods = _ods_of(gp, source_ods if result.source.kind == "gp" else None)
            if ods:
                registered.add(ods)
        for episode in _active(result, "EpisodeOfCare"):
            episodes.update(_holder_ods(episode, source_ods))
        for team in _active(result, "CareTeam"):
            teams.update(_holder_ods(team, source_ods))
        consents.extend(result.resources.get("Consent") or [])
        contacts.extend(result.resources.get("RelatedPerson") or [])
    whole, per_org = objection(consents)
    sds = identity.sds_user_id if identity else None
    family = bool(sds) and any(
        i.get("system") == SDS_USER and i.get("value") == sds for r in contacts for i in r.get("identifier") or []
    )
    return PatientFacts(
        registered_ods=frozenset(registered),
        episode_ods=frozenset(episodes),
        care_team_ods=frozenset(teams),
        encounter_in_context=bool(ctx.encounter),
        objection_whole=whole,
        objection_ods=frozenset(per_org),
        is_user=bool(identity and identity.nhs_number) and identity.nhs_number == nhs,
        family=family,
        colleague=colleague,
    )


def _active(result: SourceResult, rtype: str) -> list[dict]:
    return [r for r in result.resources.get(rtype) or [] if r.get("status") == "active"]


def objection(consents: list[dict]) -> tuple[bool, set[str]]:
    """An active deny Consent about sharing: for the whole record, or naming organisations (ODS)."""
    whole, orgs = False, set()
    for consent in consents:
        if consent.get("status") != "active":
            continue
        scope_codes = {c.get("code") for c in (consent.get("scope") or {}).get("coding") or []}
        provision = consent.get("provision") or {}
        if PRIVACY_SCOPE not in scope_codes or provision.get("type") != "deny":
            continue
        actors = [a.get("reference") or {} for a in provision.get("actor") or []]
        named = {
            (a.get("identifier") or {}).get("value") for a in actors if (a.get("identifier") or {}).get("system") == ODS
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


def _holder_ods(resource: dict, source_ods: str | None) -> set[str]:
    """The organisation holding an episode or team: the source itself, and any managing organisation it names."""
    out = {source_ods} if source_ods else set()
    refs = resource.get("managingOrganization") or []
    for ref in refs if isinstance(refs, list) else [refs]:
        ident = (ref.get("identifier") if isinstance(ref, dict) else None) or {}
        if ident.get("system") == ODS and ident.get("value"):
            out.add(ident["value"])
    return out


def is_colleague(client: EhrFhirClient, nhs: str | None, identity: UserIdentity | None) -> bool:
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
    own = identity.practitioner if identity else None
    return any(s.get("id") and f"Practitioner/{s['id']}" != own for s in staff)
