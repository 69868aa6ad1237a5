"""Relationships are verified, not taken on trust (issue 12, item 2): facts from hand-made resources.

Registration counts only from a GP-practice source naming itself; care teams and episodes only from the
organisation's own source (or one the configuration trusts for them); the launch encounter only when the
launching EHR returned it, it is this patient's, and it is current.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from app.access.facts import EncounterRead, LaunchChecks, encounter_current, patient_facts, practice_references
from app.access.policy import (
    NEED_BREAK_GLASS,
    NEED_REASON,
    PERMIT,
    AccessRules,
    Overrides,
    PatientFacts,
    Step,
    decide,
    discloses_holders,
    foreseen,
    justification_problem,
)
from app.config import ConfigError, SourceSettings, load_config
from app.record.fetch import LOADED, SourceResult
from app.record.sources import RecordSource
from core.identifiers import ODS_SYSTEM
from launch.context import LaunchContext
from launch.identity import Organisation, UserIdentity

RULES = AccessRules.from_config(None)
ISS = "https://ehr.example/fhir"
NOW = time.time()


def user(ods: str, *activities: str, nhs: str | None = None) -> UserIdentity:
    return UserIdentity(
        name="Test User",
        role_codes=("R8000",),
        activity_codes=activities or ("B0370", "B0360", "B0168"),
        organisation=Organisation(ods),
        sds_user_id="555",
        nhs_number=nhs,
    )


def ctx(ods: str = "RX9", encounter: str | None = None) -> LaunchContext:
    return LaunchContext(
        id="c1",
        iss=ISS,
        ehr_name="EHR",
        patient="p1",
        scope="launch",
        standalone=False,
        user_claims={},
        encounter=encounter,
        identity=user(ods),
    )


def source(ods: str, kind: str, auth: str = "backend_services", trusted=frozenset()) -> RecordSource:
    config = SourceSettings(f"s-{ods}", ods, ods, kind, f"https://{ods}.example/fhir", auth, trusted_for=trusted)
    return RecordSource(config.id, config.name, ods, kind, config.base_url, 5.0, auth, config)


def result(src: RecordSource, patient: dict | None = None, **resources) -> SourceResult:
    return SourceResult(src, LOADED, patient=patient or {"resourceType": "Patient", "id": "x"}, resources=resources)


def gp_ref(ods: str) -> dict:
    return {"identifier": {"system": ODS_SYSTEM, "value": ods}}


def patient_with_gp(*refs: dict, contained=()) -> dict:
    return {"resourceType": "Patient", "id": "x", "generalPractitioner": list(refs), "contained": list(contained)}


def organisation(oid: str, ods: str) -> dict:
    return {"resourceType": "Organization", "id": oid, "identifier": [{"system": ODS_SYSTEM, "value": ods}]}


# ---- registration --------------------------------------------------------------------------------------------


def test_a_hostile_source_claiming_the_users_practice_does_not_make_them_registered():
    hostile = result(source("RX9", "acute"), patient_with_gp(gp_ref("Y01001")))
    facts = patient_facts(ctx("Y01001"), "9991000372", [hostile])
    assert facts.registered_ods == frozenset()
    assert decide(user("Y01001"), facts, Overrides(), RULES).outcome == NEED_REASON


def test_a_gp_source_can_only_say_the_patient_is_registered_with_itself():
    other_practice = result(source("B86001", "gp"), patient_with_gp(gp_ref("Y01001")))
    assert patient_facts(ctx("Y01001"), None, [other_practice]).registered_ods == frozenset()
    itself = result(source("Y01001", "gp"), patient_with_gp(gp_ref("Y01001")))
    assert patient_facts(ctx("Y01001"), None, [itself]).registered_ods == {"Y01001"}


def test_a_relative_reference_counts_only_when_it_resolves_to_the_practice_itself():
    ref = {"reference": "Organization/gp"}
    unresolved = result(source("Y01001", "gp"), patient_with_gp(ref))
    assert patient_facts(ctx("Y01001"), None, [unresolved]).registered_ods == frozenset()
    # Resolved in what the source returned: to itself, or to someone else.
    returned = result(source("Y01001", "gp"), patient_with_gp(ref), Organization=[organisation("gp", "Y01001")])
    assert patient_facts(ctx("Y01001"), None, [returned]).registered_ods == {"Y01001"}
    elsewhere = result(source("Y01001", "gp"), patient_with_gp(ref), Organization=[organisation("gp", "B86001")])
    assert patient_facts(ctx("Y01001"), None, [elsewhere]).registered_ods == frozenset()
    # A contained Organization.
    contained = patient_with_gp({"reference": "#prac"}, contained=[organisation("prac", "Y01001")])
    assert patient_facts(ctx("Y01001"), None, [result(source("Y01001", "gp"), contained)]).registered_ods == {"Y01001"}
    # Read at the launching EHR (the user's own organisation's source) alongside the fetch.
    launching = result(source("Y01001", "gp", auth="user"), patient_with_gp(ref))
    read = LaunchChecks(practices={"Organization/gp": "Y01001"})
    assert patient_facts(ctx("Y01001"), None, [launching], checks=read).registered_ods == {"Y01001"}
    wrong = LaunchChecks(practices={"Organization/gp": "B86001"})
    assert patient_facts(ctx("Y01001"), None, [launching], checks=wrong).registered_ods == frozenset()
    # What the launching EHR said is about its own references only, never another source's.
    backend = result(source("Y01001", "gp"), patient_with_gp(ref))
    assert patient_facts(ctx("Y01001"), None, [backend], checks=read).registered_ods == frozenset()


def test_absolute_references_to_another_server_are_not_the_practices_own_statement():
    ref = {"reference": "https://elsewhere.example/fhir/Organization/gp"}
    res = result(source("Y01001", "gp", auth="user"), patient_with_gp(ref))
    checks = LaunchChecks(practices={"Organization/gp": "Y01001"})
    assert patient_facts(ctx("Y01001"), None, [res], checks=checks).registered_ods == frozenset()
    assert practice_references(patient_with_gp(ref, {"reference": "Organization/gp"})) == ["Organization/gp"]


# ---- care teams and episodes ----------------------------------------------------------------------------------


def team(managing: str) -> dict:
    return {"resourceType": "CareTeam", "status": "active", "managingOrganization": [gp_ref(managing)]}


def episode(managing: str) -> dict:
    return {"resourceType": "EpisodeOfCare", "status": "active", "managingOrganization": gp_ref(managing)}


def test_another_organisations_source_cannot_put_the_user_in_the_care_team():
    hostile = result(source("L90001", "social_care"), CareTeam=[team("RX9")], EpisodeOfCare=[episode("RX9")])
    facts = patient_facts(ctx("RX9"), None, [hostile])
    assert "RX9" not in facts.care_team_ods and "RX9" not in facts.episode_ods
    assert decide(user("RX9"), facts, Overrides(), RULES).outcome == NEED_REASON


def test_the_users_own_source_establishes_care_team_and_episode():
    own = result(source("RX9", "acute"), CareTeam=[team("RX9")])
    assert "RX9" in patient_facts(ctx("RX9"), None, [own]).care_team_ods
    own = result(source("RX9", "acute"), EpisodeOfCare=[episode("ZZZ")])
    facts = patient_facts(ctx("RX9"), None, [own])
    assert facts.episode_ods == {"RX9"}  # the untrusted source speaks for itself only
    assert decide(user("RX9"), facts, Overrides(), RULES).outcome == PERMIT


def test_a_source_the_configuration_trusts_may_name_other_organisations():
    hub = source("HUB", "community", trusted=frozenset({"care_team"}))
    facts = patient_facts(ctx("RX9"), None, [result(hub, CareTeam=[team("RX9")], EpisodeOfCare=[episode("RX9")])])
    assert "RX9" in facts.care_team_ods  # trusted for care teams
    assert "RX9" not in facts.episode_ods  # ... not for episodes
    hub = source("HUB", "community", trusted=frozenset({"episodes"}))
    assert "RX9" in patient_facts(ctx("RX9"), None, [result(hub, EpisodeOfCare=[episode("RX9")])]).episode_ods


def test_trusted_for_is_read_from_the_source_table(tmp_path):
    base = """
[viewer]
base_url = "https://scr.example.nhs.uk"
[[ehr]]
issuer = "https://ehr.example/fhir"
client_id = "c"
ods_code = "A1"
kind = "gp"
[[source]]
id = "hub"
name = "Hub"
ods_code = "HUB"
kind = "community"
base_url = "https://hub.example/fhir"
auth = "none"
"""
    path = tmp_path / "scr.toml"
    path.write_text(base + 'trusted_for = ["care_team"]\n', encoding="utf-8")
    assert load_config(path, env={}).sources[0].trusted_for == {"care_team"}
    path.write_text(base, encoding="utf-8")
    assert load_config(path, env={}).sources[0].trusted_for == frozenset()
    path.write_text(base + 'trusted_for = ["registration"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="trusted_for"):
        load_config(path, env={})


# ---- the launch encounter -------------------------------------------------------------------------------------


def encounter(status: str = "in-progress", subject: str = "Patient/p1", end: float | None = None) -> dict:
    enc = {"resourceType": "Encounter", "id": "e1", "status": status, "subject": {"reference": subject}}
    if end is not None:
        enc["period"] = {"end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end))}
    return enc


def test_an_encounter_id_alone_is_no_relationship():
    """Today's rule: any non-empty launch encounter counted. Now it must have been read at the EHR."""
    facts = patient_facts(ctx("RX9", encounter="made-up"), None, [])
    assert facts.encounter_in_context is False
    unread = LaunchChecks(encounter=EncounterRead(problem="HTTP 404"))
    assert patient_facts(ctx("RX9", encounter="made-up"), None, [], checks=unread).encounter_in_context is False
    read = LaunchChecks(encounter=EncounterRead(encounter()))
    assert patient_facts(ctx("RX9", encounter="e1"), None, [], checks=read).encounter_in_context is True
    # An answer with no encounter in the launch (never asked) is not used.
    assert patient_facts(ctx("RX9", encounter=None), None, [], checks=read).encounter_in_context is False


@pytest.mark.parametrize(
    ("enc", "current"),
    [
        (encounter("in-progress"), True),
        (encounter("arrived"), True),
        (encounter("triaged"), True),
        (encounter("onleave"), True),
        (encounter("in-progress", subject=f"{ISS}/Patient/p1"), True),
        (encounter("in-progress", subject="Patient/p2"), False),  # another patient's
        (encounter("in-progress", subject="https://other.example/fhir/Patient/p1"), False),
        (encounter("finished", end=NOW - 2 * 3600), True),  # within the recent window (24 h)
        (encounter("finished", end=NOW - 25 * 3600), False),  # finished long ago
        (encounter("finished"), False),  # finished, no end: cannot say when
        (encounter("finished", end=NOW + 3 * 3600), False),  # ends in the future: not believable
        (encounter("planned"), False),
        (encounter("cancelled"), False),
        (encounter("entered-in-error"), False),
        ({"resourceType": "Observation", "status": "in-progress", "subject": {"reference": "Patient/p1"}}, False),
        (None, False),
    ],
)
def test_what_makes_an_encounter_current(enc, current):
    assert encounter_current(enc, "p1", ISS, 24, NOW) is current


def test_the_recent_window_is_configurable():
    enc = encounter("finished", end=NOW - 30 * 3600)
    assert not encounter_current(enc, "p1", ISS, 24, NOW)
    assert encounter_current(enc, "p1", ISS, 48, NOW)
    assert AccessRules.from_config({"encounter_recent_hours": 48}).encounter_recent_hours == 48


# ---- who may learn which organisations hold a record ---------------------------------------------------------


def test_refused_users_are_not_told_who_holds_a_record():
    assert not discloses_holders(foreseen(user("RX9", nhs="9991001859"), True, RULES))  # their own record
    assert not discloses_holders(foreseen(user("RX9", "B0015"), False, RULES))  # no clinical role
    assert not discloses_holders(foreseen(user("RX9"), False, RULES, standalone=True, trained=False))
    assert not discloses_holders(None)
    assert discloses_holders(foreseen(user("RX9"), False, RULES))  # will be asked a reason at least


@pytest.mark.parametrize(
    "facts",
    [
        PatientFacts(),
        PatientFacts(registered_ods=frozenset({"RX9"})),
        PatientFacts(encounter_in_context=True),
        PatientFacts(objection_whole=True),
        PatientFacts(family=True),
        PatientFacts(colleague=True),
        PatientFacts(objection_ods=frozenset({"RX9"}), care_team_ods=frozenset({"RX9"})),
    ],
)
def test_facts_found_later_never_turn_a_disclosed_step_into_a_refusal(facts):
    """The loading page decides from ``foreseen`` before the facts are in: every fact but "own record" can only
    lead to SHOW, ASK_REASON or BREAK_GLASS, so what it said stays true once the decision is made."""
    identity = user("RX9")
    assert discloses_holders(foreseen(identity, False, RULES))
    decision = decide(identity, facts, Overrides(), RULES)
    assert decision.next in (Step.SHOW, Step.ASK_REASON, Step.BREAK_GLASS)
    assert discloses_holders(decision)
    assert decision.outcome in (PERMIT, NEED_REASON, NEED_BREAK_GLASS)
    assert not discloses_holders(decide(identity, replace(facts, is_user=True), Overrides(), RULES))


# ---- a break-glass justification is words -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a" * 40,  # one key held down
        "." * 40,
        "asdf asdf asdf asdf asdf asdf",  # repeated fragment: four different letters
        "emergencyemergencyemergency",  # one word
        "x y z x y z x y z x y z x y z x y z",  # single letters are not words
        "1234567890 1234567890 1234567890",
        "urgent",  # too short
    ],
)
def test_a_justification_that_is_not_words_is_refused(text):
    problem = justification_problem(text, RULES)
    assert problem and "words" in problem and "characters or more" in problem


@pytest.mark.parametrize(
    "text",
    [
        "Collapsed in surgery, needs medication history",
        "Unconscious in resus, no history available from family",
        "Bewusstlos in der Notaufnahme, Medikation unbekannt",
    ],
)
def test_a_justification_in_words_is_accepted(text):
    assert justification_problem(text, RULES) is None


def test_the_justification_rules_are_settings():
    rules = AccessRules.from_config(
        {"break_glass_min_words": 5, "break_glass_min_letters": 2, "break_glass_min_justification": 0}
    )
    assert justification_problem("one two three four", rules)
    assert justification_problem("one two three four five", rules) is None
