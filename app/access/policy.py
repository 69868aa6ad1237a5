"""Who may see what: RBAC capabilities, legitimate relationship, conflict of interest, objection,
break-glass and sensitive items — decided from plain facts, returning a decision the views act on.

The order matters and is part of the policy:

1. no clinical capability → refused (privacy officers see audit, not clinical content);
2. the user's own record → refused, always (a subject access request is the route);
3. an active break-glass for this user and patient → permitted (purpose BTG), everything in role;
4. the patient objected to sharing → break-glass required;
5. family (RelatedPerson) or colleague (patient is staff at the user's organisation) → break-glass required;
6. a legitimate relationship (registration, open episode or care team at the user's organisation, an
   encounter in the launch context) → permitted for TREAT; otherwise a recorded reason is required;
7. sensitive items are withheld unless the role has the sensitive-records activity (or break-glass).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REFUSE, PERMIT, NEED_REASON, NEED_BREAK_GLASS = "refuse", "permit", "need-reason", "need-break-glass"
DETAILED, SUMMARY, DEMOGRAPHICS = "detailed", "summary", "demographics"

DEFAULTS: dict[str, Any] = {
    "view_summary": ["B0370", "B0401"],
    "view_detailed": ["B0360"],
    "emergency_access": ["B0168"],
    "legal_override": ["B0082"],
    "sensitive_records": ["B1611"],
    "privacy_officer_roles": ["R0001", "R5105"],
    "privacy_officer_activities": ["B0015", "B0016"],
    "admin_roles": ["R8006", "R8008", "R8009", "R8010"],
    "reason_codes": ["TREAT", "COC", "ETREAT"],
    "break_glass_minutes": 30,
    "break_glass_min_justification": 25,
    "sensitive_labels": [
        "R",
        "V",
        "HIV",
        "STD",
        "SEX",
        "PSY",
        "MH",
        "BH",
        "ETH",
        "SUD",
        "SDV",
        "SPI",
        "GDIS",
        "PREGNANT",
    ],
    "sensitive_codes": [],
}
REASON_LABELS = {
    "TREAT": "Direct care: I am treating this person",
    "COC": "Coordinating this person's care",
    "ETREAT": "Emergency treatment",
}


@dataclass(frozen=True)
class AccessRules:
    view_summary: frozenset[str]
    view_detailed: frozenset[str]
    emergency_access: frozenset[str]
    legal_override: frozenset[str]
    sensitive_records: frozenset[str]
    privacy_officer_roles: frozenset[str]
    privacy_officer_activities: frozenset[str]
    admin_roles: frozenset[str]
    reason_codes: tuple[str, ...]
    break_glass_minutes: int
    break_glass_min_justification: int
    sensitive_labels: frozenset[str]
    sensitive_codes: frozenset[str]

    @classmethod
    def from_config(cls, raw: dict | None) -> AccessRules:
        d = {**DEFAULTS, **(raw or {})}
        sets = {
            k: frozenset(d[k])
            for k in (
                "view_summary",
                "view_detailed",
                "emergency_access",
                "legal_override",
                "sensitive_records",
                "privacy_officer_roles",
                "privacy_officer_activities",
                "admin_roles",
                "sensitive_labels",
                "sensitive_codes",
            )
        }
        return cls(
            **sets,
            reason_codes=tuple(d["reason_codes"]),
            break_glass_minutes=int(d["break_glass_minutes"]),
            break_glass_min_justification=int(d["break_glass_min_justification"]),
        )


@dataclass(frozen=True)
class Capabilities:
    scope: str | None  # detailed | summary | demographics | None (nothing clinical)
    emergency: bool
    sensitive: bool
    privacy_officer: bool

    @property
    def clinical(self) -> bool:
        return self.scope is not None


def capabilities(identity: dict, rules: AccessRules) -> Capabilities:
    roles = set(identity.get("role_codes") or [])
    activities = set(identity.get("activity_codes") or [])
    if activities & rules.view_detailed:
        scope = DETAILED
    elif activities & rules.view_summary:
        scope = SUMMARY
    elif roles & rules.admin_roles:
        scope = DEMOGRAPHICS
    else:
        scope = None
    return Capabilities(
        scope=scope,
        emergency=bool(activities & (rules.emergency_access | rules.legal_override)) and scope in (DETAILED, SUMMARY),
        sensitive=bool(activities & rules.sensitive_records),
        privacy_officer=bool(roles & rules.privacy_officer_roles)
        and bool(activities & rules.privacy_officer_activities),
    )


@dataclass(frozen=True)
class PatientFacts:
    """What the record says about this person and the user's relationship to them."""

    registered_ods: frozenset[str] = frozenset()
    episode_ods: frozenset[str] = frozenset()
    care_team_ods: frozenset[str] = frozenset()
    encounter_in_context: bool = False
    objection_whole: bool = False
    objection_ods: frozenset[str] = frozenset()
    is_user: bool = False
    family: bool = False
    colleague: bool = False


@dataclass(frozen=True)
class Overrides:
    reason: str | None = None  # a recorded legitimate reason (purpose code)
    break_glass: bool = False  # an active, unexpired break-glass for this user and patient


@dataclass
class Decision:
    outcome: str
    scope: str | None
    purpose: str | None
    basis: str
    withhold_sensitive: bool = True
    withheld_ods: frozenset[str] = frozenset()
    break_glass_for: list[str] = field(default_factory=list)  # why break-glass is needed
    can_break_glass: bool = False
    alert: str | None = None  # "colleague" / "family" when the access must be alerted

    @property
    def permitted(self) -> bool:
        return self.outcome == PERMIT


def decide(identity: dict, facts: PatientFacts, overrides: Overrides, rules: AccessRules) -> Decision:
    caps = capabilities(identity, rules)
    if not caps.clinical:
        why = (
            "Privacy officers review audit records and alerts; clinical records are not shown to this role."
            if caps.privacy_officer
            else "Your role does not include access to shared care records. Ask your registration authority if "
            "you need it for your work."
        )
        return Decision(REFUSE, None, None, why)
    if facts.is_user:
        return Decision(
            REFUSE,
            None,
            None,
            "This is your own record. Staff may not view their own record here; you can ask for a "
            "copy through a subject access request.",
        )
    withhold = not caps.sensitive
    if overrides.break_glass:
        return Decision(
            PERMIT,
            caps.scope,
            "BTG",
            "Emergency access (break-glass) is active for this patient.",
            withhold_sensitive=False,
            alert="break-glass",
        )
    needs = []
    if facts.objection_whole:
        needs.append("This person has objected to sharing their record.")
    if facts.family:
        needs.append("You are recorded as a relative of this person.")
    if facts.colleague:
        needs.append("This person works at your organisation.")
    if needs:
        return Decision(
            NEED_BREAK_GLASS,
            caps.scope,
            None,
            " ".join(needs),
            withhold_sensitive=withhold,
            break_glass_for=needs,
            can_break_glass=caps.emergency,
            alert="colleague" if facts.colleague else ("family" if facts.family else None),
        )
    org = (identity.get("organisation") or {}).get("ods")
    relationship = None
    if org and org in facts.registered_ods:
        relationship = "The patient is registered at your organisation."
    elif org and org in facts.episode_ods:
        relationship = "Your organisation has an open episode of care for this patient."
    elif org and org in facts.care_team_ods:
        relationship = "Your organisation is part of this patient's care team."
    elif facts.encounter_in_context:
        relationship = "You opened the record from an encounter with this patient."
    if relationship:
        return Decision(
            PERMIT, caps.scope, "TREAT", relationship, withhold_sensitive=withhold, withheld_ods=facts.objection_ods
        )
    if overrides.reason in rules.reason_codes:
        return Decision(
            PERMIT,
            caps.scope,
            overrides.reason,
            "You recorded a reason for access.",
            withhold_sensitive=withhold,
            withheld_ods=facts.objection_ods,
        )
    return Decision(
        NEED_REASON,
        caps.scope,
        None,
        "Your organisation is not recorded as involved in this person's care, so you need to record "
        "why you are looking before anything is shown.",
        withhold_sensitive=withhold,
    )


def is_sensitive(resource: dict, rules: AccessRules) -> bool:
    for label in (resource.get("meta") or {}).get("security") or []:
        if label.get("code") in rules.sensitive_labels:
            return True
    if rules.sensitive_codes:
        for key in ("code", "vaccineCode", "medicationCodeableConcept", "type"):
            concept = resource.get(key)
            concepts = concept if isinstance(concept, list) else [concept]
            for c in concepts:
                for coding in (c or {}).get("coding") or [] if isinstance(c, dict) else []:
                    if f"{coding.get('system')}|{coding.get('code')}" in rules.sensitive_codes:
                        return True
    return False
