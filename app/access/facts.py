"""Plain facts for the access decision, read from the raw resources each organisation returned (not from
merged rows, so the record is merged once, after the decision) and from the launching EHR.

A fact is a relationship only when the one who states it can vouch for it:

- **registration**: only a GP-practice source (kind ``gp``) and only about itself — its Patient's
  ``generalPractitioner`` carries that source's own ODS code, or is a relative ``Organization/<id>``
  reference resolving (in that source's answer, or read at the launching EHR alongside the fetch) to an
  Organization with that code. What a hospital, council or any other source says about the GP is ignored.
- **episodes and care teams**: an active EpisodeOfCare/CareTeam counts for the organisation whose source
  holds it; only a source trusted for them (``[[source]] trusted_for``) may name other organisations
  (``managingOrganization``).
- **the launch encounter**: read at the launching EHR with the user's token alongside the fetch; it counts
  only when it exists, is this patient's, and is current (``encounter_current``).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime

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
GP_KIND = "gp"
USER_SOURCE = "user"  # app.record.sources.USER: the launching EHR's organisation, read with the user's token
CURRENT_STATUSES = frozenset({"in-progress", "arrived", "triaged", "onleave"})
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@dataclass(frozen=True)
class EncounterRead:
    """What the launching EHR said about the launch encounter, read with the user's token."""

    resource: dict | None = None  # the Encounter, when the EHR returned one
    problem: str | None = None  # why it could not be read (not found, refused, unreachable, not an Encounter)


@dataclass(frozen=True)
class LaunchChecks:
    """What is asked of the launching EHR alongside the fetch (never after it)."""

    colleague: bool = False
    encounter: EncounterRead | None = None  # None: the launch carried no encounter
    practices: dict[str, str] | None = None  # relative Organization reference → its ODS code, read at the EHR


def patient_facts(
    ctx: LaunchContext,
    nhs: str | None,
    results: list[SourceResult],
    colleague: bool = False,
    *,
    checks: LaunchChecks | None = None,
    recent_hours: float = 24,
    now: float | None = None,
) -> PatientFacts:
    """``results``: the organisations that returned this person's record; ``checks``: what the launching EHR
    answered alongside the fetch (colleague, the launch encounter, the practice it names)."""
    identity = ctx.identity
    checks = checks or LaunchChecks(colleague=colleague)
    registered, episodes, teams = set(), set(), set()
    consents, contacts = [], []
    for result in results:
        source_ods = result.source.ods_code or None
        registered |= _registered_at(result, (checks.practices or {}) if result.source.auth == USER_SOURCE else {})
        trusted = getattr(result.source.config, "trusted_for", None) or frozenset()
        for episode in _active(result, "EpisodeOfCare"):
            episodes.update(_holder_ods(episode, source_ods, "episodes" in trusted))
        for team in _active(result, "CareTeam"):
            teams.update(_holder_ods(team, source_ods, "care_team" in trusted))
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
        encounter_in_context=bool(ctx.encounter)
        and checks.encounter is not None
        and encounter_current(checks.encounter.resource, ctx.patient, ctx.iss, recent_hours, now),
        objection_whole=whole,
        objection_ods=frozenset(per_org),
        is_user=bool(identity and identity.nhs_number) and identity.nhs_number == nhs,
        family=family,
        colleague=checks.colleague,
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


def _registered_at(result: SourceResult, practices: dict[str, str]) -> set[str]:
    """The practice a GP source says the patient is registered at, when that is the source itself."""
    own = result.source.ods_code
    if result.source.kind != GP_KIND or not own:
        return set()
    patient = result.patient or {}
    found = {r.get("id"): r for r in result.resources.get("Organization") or [] if isinstance(r, dict)}
    contained = {r.get("id"): r for r in patient.get("contained") or [] if isinstance(r, dict)}
    for ref in patient.get("generalPractitioner") or []:
        if not isinstance(ref, dict):
            continue
        ident = ref.get("identifier") or {}
        if ident.get("system") == ODS and ident.get("value"):
            if ident["value"] == own:
                return {own}
            continue  # names another practice: never resolved to this one
        literal = ref.get("reference") or ""
        if literal.startswith("#"):
            ods = _organisation_ods(contained.get(literal[1:]))
        elif re.fullmatch(r"Organization/[A-Za-z0-9\-.]{1,64}", literal):  # relative: inside this source
            ods = _organisation_ods(found.get(literal.split("/", 1)[1])) or practices.get(literal)
        else:
            ods = None  # absolute URLs point at another server: not this practice's own statement
        if ods == own:
            return {own}
    return set()


def _organisation_ods(org: dict | None) -> str | None:
    if not org or org.get("resourceType") != "Organization":
        return None
    return next(
        (i.get("value") for i in org.get("identifier") or [] if i.get("system") == ODS and i.get("value")), None
    )


def practice_references(patient: dict | None) -> list[str]:
    """The relative ``Organization/<id>`` references a launching EHR's Patient gives as its GP."""
    refs = []
    for ref in (patient or {}).get("generalPractitioner") or []:
        literal = (ref.get("reference") or "") if isinstance(ref, dict) else ""
        if re.fullmatch(r"Organization/[A-Za-z0-9\-.]{1,64}", literal):
            refs.append(literal)
    return refs[:3]


def read_practices(client: EhrFhirClient, refs: list[str]) -> dict[str, str]:
    """Each referenced Organization's ODS code, read at the launching EHR with the user's token."""
    out = {}
    for ref in refs:
        try:
            ods = _organisation_ods(client.get(ref))
        except SourceError as exc:
            log.info("practice %s could not be read: %s", ref, exc.detail)
            continue
        if ods:
            out[ref] = ods
    return out


def read_encounter(client: EhrFhirClient, encounter_id: str | None) -> EncounterRead | None:
    """The launch encounter as the launching EHR returns it to this user (None when the launch has none)."""
    if not encounter_id:
        return None
    ref = encounter_id if encounter_id.startswith("Encounter/") else f"Encounter/{encounter_id}"
    if not FHIR_ID.fullmatch(ref.split("/", 1)[1]):
        return EncounterRead(problem="not a FHIR id")
    try:
        body = client.get(ref)
    except SourceError as exc:
        return EncounterRead(problem=exc.detail)
    if not isinstance(body, dict) or body.get("resourceType") != "Encounter":
        return EncounterRead(problem="not an Encounter")
    return EncounterRead(body)


def encounter_current(
    encounter: dict | None, patient_id: str, iss: str, recent_hours: float = 24, now: float | None = None
) -> bool:
    """This patient's encounter, and current: in progress (arrived, triaged, in progress, on leave) or finished
    with ``period.end`` at most ``recent_hours`` ago (and not in the future)."""
    if not encounter or encounter.get("resourceType") != "Encounter" or not patient_id:
        return False
    subject = (encounter.get("subject") or {}).get("reference") or ""
    if subject not in (f"Patient/{patient_id}", f"{iss.rstrip('/')}/Patient/{patient_id}"):
        return False
    status = encounter.get("status")
    if status in CURRENT_STATUSES:
        return True
    if status != "finished":
        return False
    end = _instant((encounter.get("period") or {}).get("end"))
    now = time.time() if now is None else now
    return end is not None and now - recent_hours * 3600 <= end <= now + 300  # five minutes of clock skew


def _instant(value: str | None) -> float | None:
    """A FHIR dateTime with a time and zone → epoch seconds; a date alone is not precise enough (None)."""
    if not value or "T" not in value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo else None


def _holder_ods(resource: dict, source_ods: str | None, trusted: bool = False) -> set[str]:
    """The organisation holding an episode or team: the source itself; a source trusted for these facts may
    also name other organisations (``managingOrganization``)."""
    out = {source_ods} if source_ods else set()
    if not trusted:
        return out
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
