"""Who may see what: RBAC capabilities, legitimate relationship, conflict of interest, objection,
break-glass and sensitive items — decided from plain facts, returning one decision the views act on.

The decision carries everything a view needs: the next step (show, ask a reason, break-glass, the privacy
officer's console, refuse), the sections this user may open, and what is withheld. It is made here only.

The order matters and is part of the policy:

0. standalone use (outside an integrated EHR) without recorded training → refused;
1. no clinical capability → refused (privacy officers see audit, not clinical content);
2. the user's own record → refused, always (a subject access request is the route);
3. an active break-glass for this user and patient → permitted (purpose BTG), everything in role;
4. the patient objected to sharing → break-glass required;
5. family (RelatedPerson) or colleague (patient is staff at the user's organisation) → break-glass required;
6. a legitimate relationship → permitted for TREAT; otherwise a recorded reason is required. Relationships
   are verified facts, never claims taken on trust (``facts.py`` establishes them):
   - registration: a GP-practice source (kind ``gp``) naming *itself* as the patient's practice;
   - an open episode or care team held by the user's own organisation's source (or stated by a source the
     configuration trusts for it: ``[[source]] trusted_for``);
   - the launch encounter: it exists at the launching EHR, is this patient's, and is current;
7. sensitive items are withheld unless the role has the sensitive-records activity (or break-glass).

Which organisations hold a record (names and states, on the loading page and ``/progress``) is said only to
users whose decision is, or will be, SHOW, ASK_REASON or BREAK_GLASS (``discloses_holders``); users refused
(on identity alone, or because it is their own record) see a neutral "checking" page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from app.config import ACCESS_DEFAULTS, AccessSettings
from core.capabilities import DEMOGRAPHICS, DETAILED, SUMMARY
from launch.identity import UserIdentity

REFUSE, PERMIT, NEED_REASON, NEED_BREAK_GLASS = "refuse", "permit", "need-reason", "need-break-glass"
PARTIAL_ROLE = "Your role allows only part of the record; this section is not part of it."
UNTRAINED = (
    "Before using the Shared Care Record outside an integrated clinical system you must complete its training. "
    "Your training has not been recorded; ask your privacy officer."
)
# Pages every user who got past the decision may open whatever their level (no clinical content).
ALWAYS_OPEN = frozenset({"progress", "access"})
WORD = re.compile(r"[^\W\d_]{2,}")  # a word: two letters or more (any alphabet)


class Step(StrEnum):
    """What the view does next."""

    SHOW = "show"
    ASK_REASON = "ask-reason"
    BREAK_GLASS = "break-glass"
    PRIVACY_CONSOLE = "privacy-console"
    REFUSE = "refuse"
    ACCESS_REGISTER = "access-register"  # registration authority staff without clinical activities
    GO_TO = "go-to"  # another section of the record (e.g. administrative roles land on the care team page)
    WAIT = "wait"  # not decided yet: organisations are still answering


DEFAULTS = ACCESS_DEFAULTS  # one list of defaults: the configuration reference documents them
REASON_LABELS = {
    "TREAT": "Direct care: I am treating this person",
    "COC": "Coordinating this person's care",
    "ETREAT": "Emergency treatment",
}


# The rules are the validated ``[access]`` table itself: one list of fields, one validator, one set of defaults.
AccessRules = AccessSettings


@dataclass(frozen=True)
class Capabilities:
    scope: str | None  # detailed | summary | demographics | None (nothing clinical)
    emergency: bool
    sensitive: bool
    privacy_officer: bool
    register_manager: bool = False  # manages the access register (privacy officers and register_manager_roles)

    @property
    def clinical(self) -> bool:
        return self.scope is not None


def capabilities(identity: UserIdentity | None, rules: AccessRules) -> Capabilities:
    roles = set(identity.role_codes if identity else ())
    activities = set(identity.activity_codes if identity else ())
    if activities & rules.view_detailed:
        scope = DETAILED
    elif activities & rules.view_summary:
        scope = SUMMARY
    elif roles & rules.admin_roles:
        scope = DEMOGRAPHICS
    else:
        scope = None
    privacy_officer = bool(roles & rules.privacy_officer_roles) and bool(activities & rules.privacy_officer_activities)
    return Capabilities(
        scope=scope,
        emergency=bool(activities & (rules.emergency_access | rules.legal_override)) and scope in (DETAILED, SUMMARY),
        sensitive=bool(activities & rules.sensitive_records),
        privacy_officer=privacy_officer,
        register_manager=privacy_officer or bool(roles & rules.register_manager_roles),
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


@dataclass(frozen=True)
class Withholding:
    """What may not be shown: sensitive items (by label or code) and organisations the patient objected to.
    Applied to the raw resources before merging, so withheld items never reach a row."""

    labels: frozenset[str] = frozenset()  # empty when the user may see sensitive items
    codes: frozenset[str] = frozenset()
    withheld_ods: frozenset[str] = frozenset()

    @property
    def key(self) -> tuple:
        return (bool(self.labels or self.codes), tuple(sorted(self.withheld_ods)))

    def hides(self, ods: str | None, resource: dict) -> bool:
        if ods and ods in self.withheld_ods:
            return True
        return bool((self.labels or self.codes) and _sensitive(resource, self.labels, self.codes))


@dataclass(frozen=True)
class Verdict:
    """The decision applied to one page: show it, or where to go instead."""

    step: Step
    target: str | None = None  # the section to go to (Step.GO_TO)
    basis: str = ""


@dataclass(frozen=True)
class Decision:
    outcome: str
    scope: str | None
    purpose: str | None
    basis: str
    withhold_sensitive: bool = True
    withheld_ods: frozenset[str] = frozenset()
    break_glass_for: tuple[str, ...] = ()  # why break-glass is needed
    can_break_glass: bool = False
    alert: str | None = None  # "colleague" / "family" when the access must be alerted
    next: Step = Step.REFUSE
    sections: tuple[str, ...] = ()  # pages this user may open, in navigation order
    withholding: Withholding = field(default_factory=Withholding)

    @property
    def permitted(self) -> bool:
        return self.outcome == PERMIT

    @property
    def home(self) -> str | None:
        """The first page this user may open (where a user lands when the usual first page is not theirs)."""
        return self.sections[0] if self.sections else None

    def at(self, section: str, landing: str | None = None) -> Verdict:
        """What to do for ``section``; ``landing`` is the record's usual first page."""
        if self.next is not Step.SHOW:
            return Verdict(self.next, None, self.basis)
        if section in self.sections or section in ALWAYS_OPEN:
            return Verdict(Step.SHOW)
        if section == landing and self.home:
            return Verdict(Step.GO_TO, self.home)
        return Verdict(Step.REFUSE, None, PARTIAL_ROLE)


def screen(
    identity: UserIdentity | None, rules: AccessRules, *, standalone: bool = False, trained: bool = True
) -> Decision | None:
    """Refusals on identity alone, made before anything about the patient is fetched."""
    caps = capabilities(identity, rules)
    if standalone and not trained:
        return Decision(REFUSE, None, None, UNTRAINED)
    if not caps.clinical:
        return Decision(
            REFUSE,
            None,
            None,
            _no_clinical_role(identity, caps),
            next=(
                Step.PRIVACY_CONSOLE
                if caps.privacy_officer
                else Step.ACCESS_REGISTER
                if caps.register_manager
                else Step.REFUSE
            ),
        )
    return None


def _no_clinical_role(identity: UserIdentity | None, caps: Capabilities) -> str:
    if caps.privacy_officer:
        return "Privacy officers review audit records and alerts; clinical records are not shown to this role."
    if caps.register_manager:
        return "Registration authority staff manage the access register; clinical records are not shown to this role."
    if identity is not None and identity.role_source is None and not identity.activity_codes:
        return "No role that gives access to shared care records was found for you."
    return (
        "Your role does not include access to shared care records. Ask your registration authority if "
        "you need it for your work."
    )


def decide(
    identity: UserIdentity | None,
    facts: PatientFacts,
    overrides: Overrides,
    rules: AccessRules,
    *,
    audiences: Mapping[str, frozenset[str]] | None = None,
    standalone: bool = False,
    trained: bool = True,
) -> Decision:
    """The whole decision for this user and patient. ``audiences`` (page → capability levels that may open
    it, in navigation order) comes from the record catalogue and sets which pages the decision allows."""
    screened = screen(identity, rules, standalone=standalone, trained=trained)
    if screened is not None:
        return screened
    decision = _decide(identity, facts, overrides, rules)
    step = {PERMIT: Step.SHOW, NEED_REASON: Step.ASK_REASON, NEED_BREAK_GLASS: Step.BREAK_GLASS}.get(
        decision.outcome, Step.REFUSE
    )
    sections = tuple(name for name, levels in (audiences or {}).items() if decision.scope in levels)
    withholding = Withholding(
        rules.sensitive_labels if decision.withhold_sensitive else frozenset(),
        rules.sensitive_codes if decision.withhold_sensitive else frozenset(),
        decision.withheld_ods,
    )
    return replace(decision, next=step, sections=sections, withholding=withholding)


def _decide(identity: UserIdentity | None, facts: PatientFacts, overrides: Overrides, rules: AccessRules) -> Decision:
    caps = capabilities(identity, rules)
    if not caps.clinical:
        return Decision(REFUSE, None, None, _no_clinical_role(identity, caps))
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
            break_glass_for=tuple(needs),
            can_break_glass=caps.emergency,
            alert="colleague" if facts.colleague else ("family" if facts.family else None),
        )
    org = identity.ods if identity else None
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


# The steps after which the user may learn which organisations hold this person's record.
DISCLOSING_STEPS = frozenset({Step.SHOW, Step.ASK_REASON, Step.BREAK_GLASS})


def discloses_holders(decision: Decision | None) -> bool:
    """May this user see which organisations hold a record (their names and states)?"""
    return decision is not None and decision.next in DISCLOSING_STEPS


def foreseen(
    identity: UserIdentity | None,
    is_user: bool,
    rules: AccessRules,
    *,
    standalone: bool = False,
    trained: bool = True,
) -> Decision:
    """The decision from what is known before any organisation answers (the identity, and whether the patient
    is the user). Facts gathered later can only add a relationship (SHOW) or a reason for break-glass, never a
    refusal, so ``discloses_holders(foreseen(...))`` already tells the loading page what it may say."""
    return decide(identity, PatientFacts(is_user=is_user), Overrides(), rules, standalone=standalone, trained=trained)


def justification_problem(text: str, rules: AccessRules) -> str | None:
    """Why a break-glass justification cannot be accepted (plain words), or None. It must be words: enough
    characters, enough words of two letters or more, and enough different letters."""
    text = (text or "").strip()
    words = WORD.findall(text)
    letters = {c for c in text.casefold() if c.isalpha()}
    if (
        len(text) < rules.break_glass_min_justification
        or len(words) < rules.break_glass_min_words
        or len(letters) < rules.break_glass_min_letters
    ):
        return (
            f"Write in words why emergency access is needed: at least {rules.break_glass_min_words} words, "
            f"{rules.break_glass_min_justification} characters or more. For example, say what is happening to the "
            "patient and why it cannot wait."
        )
    return None


def is_sensitive(resource: dict, rules: AccessRules) -> bool:
    return _sensitive(resource, rules.sensitive_labels, rules.sensitive_codes)


def _sensitive(resource: dict, labels: frozenset[str], codes: frozenset[str]) -> bool:
    for label in (resource.get("meta") or {}).get("security") or []:
        if label.get("code") in labels:
            return True
    if codes:
        for key in ("code", "vaccineCode", "medicationCodeableConcept", "type"):
            concept = resource.get(key)
            concepts = concept if isinstance(concept, list) else [concept]
            for c in concepts:
                for coding in (c or {}).get("coding") or [] if isinstance(c, dict) else []:
                    if f"{coding.get('system')}|{coding.get('code')}" in codes:
                        return True
    return False
