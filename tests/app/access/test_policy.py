"""The access policy as a table: identity × facts × overrides → decision."""

from __future__ import annotations

import pytest

from app.access.policy import (
    DEMOGRAPHICS,
    DETAILED,
    NEED_BREAK_GLASS,
    NEED_REASON,
    PERMIT,
    REFUSE,
    SUMMARY,
    AccessRules,
    Overrides,
    PatientFacts,
    Step,
    Verdict,
    capabilities,
    decide,
    is_sensitive,
    screen,
)
from app.record.catalogue import CATALOGUE, EXPORT_AUDIENCE
from launch.identity import Organisation, UserIdentity

RULES = AccessRules.from_config(None)


def user(role: str, *activities: str, ods: str = "Y01001", nhs: str | None = None) -> UserIdentity:
    return UserIdentity(
        name="Test User",
        role_codes=(role,),
        activity_codes=activities,
        organisation=Organisation(ods),
        sds_user_id="555",
        nhs_number=nhs,
    )


GP = user("R8000", "B0370", "B0360", "B0168", "B1611")
NURSE = user("R8001", "B0370", "B0360")
RECEPTION = user("R8009", "B0264")
SOCIAL = user("R8003", "B0370", ods="L90001")
AE = user("R8000", "B0370", "B0360", "B0168", ods="RX9")
PRIVACY = user("R0001", "B0015", "B0016", ods="RX9")
NOTHING = user("R8015")
REGISTERED = PatientFacts(registered_ods=frozenset({"Y01001"}))
STRANGER = PatientFacts()


@pytest.mark.parametrize(
    ("identity", "facts", "overrides", "outcome", "scope", "purpose"),
    [
        (GP, REGISTERED, Overrides(), PERMIT, DETAILED, "TREAT"),
        (NURSE, REGISTERED, Overrides(), PERMIT, DETAILED, "TREAT"),
        (SOCIAL, PatientFacts(episode_ods=frozenset({"L90001"})), Overrides(), PERMIT, SUMMARY, "TREAT"),
        (SOCIAL, PatientFacts(care_team_ods=frozenset({"L90001"})), Overrides(), PERMIT, SUMMARY, "TREAT"),
        (AE, PatientFacts(encounter_in_context=True), Overrides(), PERMIT, DETAILED, "TREAT"),
        (RECEPTION, REGISTERED, Overrides(), PERMIT, DEMOGRAPHICS, "TREAT"),
        (AE, STRANGER, Overrides(), NEED_REASON, DETAILED, None),
        (AE, STRANGER, Overrides(reason="ETREAT"), PERMIT, DETAILED, "ETREAT"),
        (AE, STRANGER, Overrides(reason="MADE-UP"), NEED_REASON, DETAILED, None),
        (NOTHING, REGISTERED, Overrides(), REFUSE, None, None),
        (PRIVACY, REGISTERED, Overrides(), REFUSE, None, None),
        (
            user("R8000", "B0370", nhs="9991001859", ods="RX9"),
            PatientFacts(is_user=True),
            Overrides(),
            REFUSE,
            None,
            None,
        ),
        (
            user("R8000", "B0370", "B0168", ods="RX9"),
            PatientFacts(is_user=True),
            Overrides(break_glass=True),
            REFUSE,
            None,
            None,
        ),
        (
            GP,
            PatientFacts(registered_ods=frozenset({"Y01001"}), objection_whole=True),
            Overrides(),
            NEED_BREAK_GLASS,
            DETAILED,
            None,
        ),
        (GP, PatientFacts(objection_whole=True), Overrides(break_glass=True), PERMIT, DETAILED, "BTG"),
        (
            NURSE,
            PatientFacts(registered_ods=frozenset({"Y01001"}), family=True),
            Overrides(),
            NEED_BREAK_GLASS,
            DETAILED,
            None,
        ),
        (AE, PatientFacts(colleague=True, encounter_in_context=True), Overrides(), NEED_BREAK_GLASS, DETAILED, None),
        (AE, PatientFacts(colleague=True), Overrides(break_glass=True), PERMIT, DETAILED, "BTG"),
    ],
    ids=[
        "gp-registered",
        "nurse-registered",
        "social-episode",
        "social-careteam",
        "ae-encounter",
        "reception-demographics",
        "ae-stranger-reason",
        "ae-reason-given",
        "bad-reason-ignored",
        "no-role",
        "privacy-officer-no-clinical",
        "self",
        "self-even-with-break-glass",
        "objection",
        "objection-break-glass",
        "family",
        "colleague",
        "colleague-break-glass",
    ],
)
def test_decision_table(identity, facts, overrides, outcome, scope, purpose):
    decision = decide(identity, facts, overrides, RULES)
    assert (decision.outcome, decision.scope if outcome != REFUSE else None, decision.purpose) == (
        outcome,
        scope if outcome != REFUSE else None,
        purpose,
    ), decision.basis
    assert decision.basis


def test_who_may_break_the_glass():
    assert decide(GP, PatientFacts(objection_whole=True), Overrides(), RULES).can_break_glass
    assert not decide(NURSE, PatientFacts(objection_whole=True), Overrides(), RULES).can_break_glass
    legal = user("R8000", "B0360", "B0082")
    assert decide(legal, PatientFacts(objection_whole=True), Overrides(), RULES).can_break_glass


def test_sensitive_items_withheld_without_b1611_and_shown_with_break_glass():
    assert decide(AE, PatientFacts(encounter_in_context=True), Overrides(), RULES).withhold_sensitive
    assert not decide(GP, REGISTERED, Overrides(), RULES).withhold_sensitive
    assert not decide(AE, PatientFacts(objection_whole=True), Overrides(break_glass=True), RULES).withhold_sensitive


def test_per_organisation_objection_withholds_that_organisation_only():
    facts = PatientFacts(registered_ods=frozenset({"Y01001"}), objection_ods=frozenset({"RX9"}))
    decision = decide(GP, facts, Overrides(), RULES)
    assert decision.permitted and decision.withheld_ods == frozenset({"RX9"})


def test_capabilities_come_from_configuration():
    rules = AccessRules.from_config({"view_detailed": ["B9999"], "view_summary": []})
    assert capabilities(user("R8000", "B9999"), rules).scope == DETAILED
    assert capabilities(user("R8000", "B0360"), rules).scope is None


@pytest.mark.parametrize(
    ("resource", "sensitive"),
    [
        (
            {
                "meta": {
                    "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]
                }
            },
            True,
        ),
        ({"meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}]}}, True),
        (
            {
                "meta": {
                    "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]
                }
            },
            False,
        ),
        ({"code": {"coding": [{"system": "http://snomed.info/sct", "code": "12345"}]}}, False),
    ],
)
def test_sensitive_labels(resource, sensitive):
    assert is_sensitive(resource, RULES) is sensitive


def test_sensitive_code_lists():
    rules = AccessRules.from_config({"sensitive_codes": ["http://snomed.info/sct|12345"]})
    assert is_sensitive({"code": {"coding": [{"system": "http://snomed.info/sct", "code": "12345"}]}}, rules)


# ---- the decision carries everything a view acts on ----------------------------------------------------

AUDIENCES = CATALOGUE.audiences() | {"export": EXPORT_AUDIENCE}


def test_permitted_decision_lists_the_pages_of_the_users_level_in_navigation_order():
    detailed = decide(GP, REGISTERED, Overrides(), RULES, audiences=AUDIENCES)
    assert detailed.next is Step.SHOW
    assert detailed.sections == (*(s.name for s in CATALOGUE.pages), "export")
    summary = decide(SOCIAL, PatientFacts(episode_ods=frozenset({"L90001"})), Overrides(), RULES, audiences=AUDIENCES)
    assert summary.sections == ("summary", "problems", "medications", "allergies", "care")
    admin = decide(RECEPTION, REGISTERED, Overrides(), RULES, audiences=AUDIENCES)
    assert admin.sections == ("care",)


def test_verdict_per_page():
    summary = decide(SOCIAL, PatientFacts(episode_ods=frozenset({"L90001"})), Overrides(), RULES, audiences=AUDIENCES)
    assert summary.at("medications").step is Step.SHOW
    refused = summary.at("results", landing="summary")
    assert refused.step is Step.REFUSE and "only part of the record" in refused.basis
    assert summary.at("export").step is Step.REFUSE
    admin = decide(RECEPTION, REGISTERED, Overrides(), RULES, audiences=AUDIENCES)
    assert admin.at("summary", landing="summary") == Verdict(Step.GO_TO, "care")
    assert admin.at("progress").step is Step.SHOW  # states of the organisations only


@pytest.mark.parametrize(
    ("identity", "facts", "overrides", "step"),
    [
        (AE, STRANGER, Overrides(), Step.ASK_REASON),
        (AE, PatientFacts(objection_whole=True), Overrides(), Step.BREAK_GLASS),
        (PRIVACY, REGISTERED, Overrides(), Step.PRIVACY_CONSOLE),
        (NOTHING, REGISTERED, Overrides(), Step.REFUSE),
        (GP, PatientFacts(is_user=True), Overrides(), Step.REFUSE),
    ],
)
def test_next_step(identity, facts, overrides, step):
    decision = decide(identity, facts, overrides, RULES, audiences=AUDIENCES)
    assert decision.next is step
    assert decision.at("summary", landing="summary").step is step  # nothing is shown before the step is taken


def test_refusals_on_identity_alone_need_no_patient_facts():
    assert screen(GP, RULES) is None
    assert screen(NOTHING, RULES).next is Step.REFUSE
    assert screen(PRIVACY, RULES).next is Step.PRIVACY_CONSOLE
    untrained = screen(GP, RULES, standalone=True, trained=False)
    assert untrained.next is Step.REFUSE and "training" in untrained.basis
    assert screen(GP, RULES, standalone=True, trained=True) is None
    # decide() applies the same screen first
    assert decide(GP, REGISTERED, Overrides(), RULES, standalone=True, trained=False).basis == untrained.basis


def test_withholding_is_part_of_the_decision():
    ae = decide(AE, PatientFacts(encounter_in_context=True, objection_ods=frozenset({"RX1"})), Overrides(), RULES)
    hiv = {"meta": {"security": [{"code": "HIV"}]}}
    assert ae.withholding.hides("Y01001", hiv) and not ae.withholding.hides("Y01001", {})
    assert ae.withholding.hides("RX1", {})  # the organisation the patient objected to
    gp = decide(GP, REGISTERED, Overrides(), RULES)
    assert not gp.withholding.hides("Y01001", hiv)
