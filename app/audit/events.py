"""FHIR R4 AuditEvents following IHE Basic Audit Log Patterns (BALP).

Who (user, role, organisation), about whom (patient), why (purposeOfUse), what (section, export,
decision), with what result, and the request id that also travels to every FHIR source.
"""

from __future__ import annotations

import time

from core.identifiers import JOB_ROLE_SYSTEM as JOB_ROLE
from core.identifiers import NHS_NUMBER_SYSTEM as NHS_NUMBER
from core.identifiers import SDS_USER_SYSTEM as SDS_USER
from launch.identity import UserIdentity

DCM = "http://dicom.nema.org/resources/ontology/DCM"
REST = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ACTION_SYSTEM = "https://shared-care-record.example.nhs.uk/CodeSystem/audit-action"
BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition"

PURPOSES = {
    "TREAT": "treatment",
    "ETREAT": "Emergency Treatment",
    "BTG": "break the glass",
    "COC": "coordination of care",
    "ERTREAT": "emergency room treatment",
    "HOPERAT": "healthcare operations",
    "PATRQT": "patient requested",
}
# action code → (AuditEvent.type, subtype, action letter, BALP profile)
KINDS = {
    "launch": ((DCM, "110114", "User Authentication"), None, "E", None),
    "access-decision": ((DCM, "110113", "Security Alert"), None, "E", f"{BALP}/IHE.BasicAudit.AuthZconsent"),
    "reason-recorded": ((DCM, "110113", "Security Alert"), None, "E", f"{BALP}/IHE.BasicAudit.AuthZconsent"),
    "break-glass": ((DCM, "110113", "Security Alert"), (DCM, "110127", "Emergency Override Started"), "E", None),
    "view": ((REST, "rest", "Restful Operation"), (RESTFUL, "read", "read"), "R", f"{BALP}/IHE.BasicAudit.PatientRead"),
    "export": (
        (REST, "rest", "Restful Operation"),
        (RESTFUL, "search-type", "search"),
        "E",
        f"{BALP}/IHE.BasicAudit.PatientQuery",
    ),
    "refusal": ((DCM, "110113", "Security Alert"), None, "E", None),
    # Identical refusals after the first in a window, counted (app/audit/refusals.py): one event per window.
    "refusal-summary": ((DCM, "110113", "Security Alert"), None, "E", None),
    # Emergency access ended: expired (recorded at the next request or by the housekeeping worker) or ended.
    "break-glass-end": ((DCM, "110113", "Security Alert"), (DCM, "110138", "Emergency Override Stopped"), "E", None),
    "error": ((DCM, "110113", "Security Alert"), None, "E", None),
    "privacy-officer": ((REST, "rest", "Restful Operation"), (RESTFUL, "search-type", "search"), "E", None),
    # The access register (app/access/register.py): entries changed, requests submitted and decided.
    "register-change": ((DCM, "110136", "Security Roles Changed"), None, "U", None),
    "access-request": ((DCM, "110137", "User Security Attributes Changed"), None, "E", None),
    "session-end": ((DCM, "110114", "User Authentication"), (DCM, "110123", "Logout"), "E", None),  # why: details
}
OUTCOMES = {"success": "0", "minor-failure": "4", "serious-failure": "8"}


def _coding(t: tuple[str, str, str]) -> dict:
    return {"system": t[0], "code": t[1], "display": t[2]}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def audit_event(
    kind: str,
    *,
    user: UserIdentity | None,
    client_id: str,
    observer: str,
    request_id: str,
    outcome: str = "success",
    description: str = "",
    patient_nhs: str | None = None,
    patient_name: str | None = None,
    purpose: str | None = None,
    what: str | None = None,
    details: dict | None = None,
) -> dict:
    """One AuditEvent. ``user`` is the resolved identity (name, sub, SDS id, roles, organisation)."""
    type_, subtype, action, profile = KINDS[kind]
    event: dict = {
        "resourceType": "AuditEvent",
        "type": _coding(type_),
        "action": action,
        "recorded": now(),
        "outcome": OUTCOMES[outcome],
        "source": {
            "site": "Shared Care Record viewer",
            "observer": {"display": observer},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
    }
    if profile:
        event["meta"] = {"profile": [profile]}
    subtypes = [{"system": ACTION_SYSTEM, "code": kind}]
    if subtype:
        subtypes.insert(0, _coding(subtype))
    event["subtype"] = subtypes
    if description:
        event["outcomeDesc"] = description[:1000]
    if purpose:
        event["purposeOfEvent"] = [
            {"coding": [{"system": ACT_REASON, "code": purpose, "display": PURPOSES.get(purpose, purpose)}]}
        ]
    event["agent"] = [
        _user_agent(user, purpose),
        {
            "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
            "who": {"identifier": {"value": client_id}, "display": "Shared Care Record viewer"},
            "requestor": False,
        },
    ]
    entities = []
    if patient_nhs:
        entities.append(
            {
                "what": {"identifier": {"system": NHS_NUMBER, "value": patient_nhs}, "display": patient_name or None},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    if what:
        entities.append(
            {
                "what": {"display": what},
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                "description": what,
            }
        )
    detail = [{"type": "request-id", "valueString": request_id}]
    for key, value in (details or {}).items():
        if value not in (None, ""):
            detail.append({"type": key, "valueString": str(value)[:1000]})
    entities.append(
        {
            "what": {"display": f"request {request_id}"},
            "type": {"system": ENTITY_TYPE, "code": "4", "display": "Other"},
            "detail": detail,
        }
    )
    for e in entities:
        e["what"] = {k: v for k, v in e["what"].items() if v is not None}
    event["entity"] = entities
    return event


ROLE_SOURCE_POLICY = "urn:scr:role-source:"  # + cis2_claims | practitioner_role | register | ehr_default


def _user_agent(user: UserIdentity | None, purpose: str | None) -> dict:
    agent: dict = {
        "type": {"coding": [{"system": PARTICIPATION, "code": "IRCP", "display": "information recipient"}]},
        "who": {"display": (user.name if user else None) or "unknown user"},
        "requestor": True,
    }
    if user and user.sds_user_id:
        agent["who"]["identifier"] = {"system": SDS_USER, "value": user.sds_user_id}
    elif user and user.sub:
        agent["who"]["identifier"] = {"value": user.sub}
    roles = [{"coding": [{"system": JOB_ROLE, "code": code}]} for code in (user.role_codes if user else ())]
    if roles:
        agent["role"] = roles
    if user and user.role_source:  # which identity source gave the role (docs/configuration.md)
        agent["policy"] = [f"{ROLE_SOURCE_POLICY}{user.role_source}"]
    org = user.organisation if user else None
    if org and org.ods:
        agent["location"] = {"display": f"{org.name or ''} ({org.ods})".strip()}
    if purpose:
        agent["purposeOfUse"] = [{"coding": [{"system": ACT_REASON, "code": purpose}]}]
    return agent
