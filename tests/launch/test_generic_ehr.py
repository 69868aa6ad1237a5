"""The viewer launched by a *generic* SMART EHR (the sandbox's generic mode): no NHS claims at all, relative
fhirUser, no kid, Practitioners without NHS identifiers. Each identity source of the EHR's configured order
is shown to work through the whole journey, embedded (EHR toolbar) and standalone (the viewer's start page).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import requests

from app.services import services
from launch.roles import IdentityPolicy, RoleGrant
from tests.conftest import LoopbackCookieJar
from tests.html_forms import form_with

MARGARET = "9991000372"  # registered at the gp (Y01001)
HADDAD = "dr-haddad"  # PractitionerRole with R8000 + B0360/B0370
BRENNAN = "dr-brennan"  # no PractitionerRole in generic mode


@pytest.fixture
def generic(sandbox, http):
    """The sandbox's GP organisation behaves like a common deployed SMART server."""
    resp = http.post(f"{sandbox.sandbox_url}/admin/smart/gp", json={"smart_mode": "generic"}, timeout=10)
    assert resp.status_code == 200, resp.text
    launch = sandbox.viewer_app.extensions["launch"]
    launch.discovery.clear()
    settings = launch.settings
    yield sandbox
    launch.settings = settings
    launch.discovery.clear()


def gp_ehr_identity(sandbox, **changes) -> None:
    """Change how the running viewer identifies the GP EHR's users (as its [[ehr]] entry would)."""
    launch = sandbox.viewer_app.extensions["launch"]
    ehrs = tuple(
        replace(e, identity=replace(e.identity, **changes)) if e.issuer.endswith("/fhir/gp") else e
        for e in launch.settings.ehrs
    )
    launch.settings = replace(launch.settings, ehrs=ehrs)


def embedded(http, sandbox, user: str) -> requests.Response:
    return http.get(f"{sandbox.sandbox_url}/ehr/launch", params={"user": user, "patient": MARGARET}, timeout=30)


def standalone(http, sandbox, user: str) -> requests.Response:
    start = http.get(f"{sandbox.viewer_url}/start", params={"iss": sandbox.fhir_base("gp")}, timeout=30)
    assert start.url.startswith(f"{sandbox.sandbox_url}/auth/authorize"), start.url
    return form_with(start, "decision").submit(http, ("decision", "allow"), user=user, patient=MARGARET)


def identity_of(sandbox, resp: requests.Response):
    ctx_id = re.search(r"/r/([^/?]+)/", resp.url).group(1)
    return sandbox.viewer_app.extensions["launch"].contexts.load(ctx_id).identity


def role_sources_audited(sandbox, user_id: str) -> set[str]:
    from app.services import services

    events = services(sandbox.viewer_app).audit_store.search(user_id=user_id, limit=50)
    return {p for e in events for a in e.event.get("agent", []) for p in a.get("policy", [])}


@pytest.fixture
def train(generic):
    """Record training for a user for this test only (the attestation is removed afterwards)."""
    from app.schema import training_attestations
    from app.services import services

    viewer = services(generic.viewer_app)
    trained = []

    def record(_sandbox, user_id: str) -> None:
        viewer.training.record(user_id, "2026-11-01", "test")
        trained.append(user_id)

    yield record
    with viewer.audit_store.engine.begin() as conn:
        for user_id in trained:
            conn.execute(training_attestations.delete().where(training_attestations.c.sds_user_id == user_id))


LAUNCHES = {"embedded": embedded, "standalone": standalone}


@pytest.mark.parametrize("how", LAUNCHES)
def test_practitioner_role_codes_open_the_record_without_nhs_claims(http, generic, how, train):
    if how == "standalone":
        train(generic, HADDAD)  # outside an EHR, recorded training is needed as well
    resp = LAUNCHES[how](http, generic, HADDAD)
    assert resp.status_code == 200, resp.text[:2000]
    user = identity_of(generic, resp)
    assert (user.name, user.sub, user.fhir_user) == ("Dr Leila Haddad", HADDAD, "Practitioner/gp-prac-haddad")
    assert user.sds_user_id is None and user.role_source == "practitioner_role"
    assert "B0360" in user.activity_codes and "R8000" in user.role_codes
    # The EHR belongs to the GP practice (config), so its GP opens a registered patient without a reason prompt.
    assert user.ods == "Y01001"
    if how == "embedded":
        assert "/access/reason" not in resp.url and "Allergies and adverse reactions" in resp.text
    assert "urn:scr:role-source:practitioner_role" in role_sources_audited(generic, HADDAD)


@pytest.mark.parametrize("how", LAUNCHES)
def test_cis2_claims_alone_find_nothing_and_the_user_is_told_what_is_missing(http, generic, how, train):
    gp_ehr_identity(generic, order=("cis2_claims",))
    if how == "standalone":
        train(generic, HADDAD)
    before = max((e.seq for e in services(generic.viewer_app).audit_store.search(limit=1)), default=0)
    resp = LAUNCHES[how](http, generic, HADDAD)
    assert resp.status_code == 403
    assert "No role that gives access to shared care records was found for you." in resp.text
    assert 'id="identity-sources-tried"' in resp.text and "nhsid_nrbac_roles" in resp.text
    assert 'id="request-access"' in resp.text and "scr.servicedesk@example.nhs.uk" in resp.text
    user = identity_of(generic, resp)
    assert user.role_source is None and user.activity_codes == ()
    ctx = re.search(r"/r/([^/?]+)/", resp.url).group(1)
    events = services(generic.viewer_app).audit_store.search(user_id=HADDAD, limit=50)
    refusals = [
        e.event
        for e in events
        if e.seq > before
        and e.event.get("outcome") != "0"
        and ctx in json.dumps(e.event)
        and "No role that gives access" in json.dumps(e.event)
    ]
    assert refusals, "this launch's refusal was not audited"


@pytest.mark.parametrize("how", LAUNCHES)
def test_ehr_default_when_configured_and_nothing_else_maps(http, generic, how, train):
    default = RoleGrant(("R8000",), ("B0360", "B0370"), "ehr_default")
    gp_ehr_identity(generic, order=("practitioner_role", "register", "ehr_default"), default_grant=default)
    if how == "standalone":
        train(generic, BRENNAN)
    resp = LAUNCHES[how](http, generic, BRENNAN)
    assert resp.status_code == 200, resp.text[:2000]
    user = identity_of(generic, resp)
    assert user.role_source == "ehr_default" and user.activity_codes == ("B0360", "B0370")
    assert [t.split(":")[0] for t in user.tried] == ["practitioner_role", "register"]
    assert "urn:scr:role-source:ehr_default" in role_sources_audited(generic, BRENNAN)


def test_without_a_default_the_same_user_is_refused(http, generic):
    gp_ehr_identity(generic, order=IdentityPolicy().order)
    resp = embedded(http, generic, BRENNAN)
    assert resp.status_code == 403 and 'id="request-access"' in resp.text


def test_untrained_standalone_user_is_offered_the_access_request(http, generic):
    resp = standalone(requests_session(), generic, HADDAD)
    assert resp.status_code == 403
    assert "needs recorded training" in resp.text and 'id="request-access"' in resp.text


def requests_session() -> requests.Session:
    s = requests.Session()
    s.cookies = LoopbackCookieJar()
    return s


@pytest.mark.parametrize("how", LAUNCHES)
def test_the_access_register_after_a_request_is_approved(http, generic, how, train):
    """The real service's way in: refused → access request → service desk approves → the register maps."""
    from flask.testing import FlaskCliRunner

    from app.access.register import operator
    from app.services import services

    viewer = services(generic.viewer_app)
    refused = LAUNCHES[how](http, generic, BRENNAN)
    assert refused.status_code == 403 and 'id="request-access"' in refused.text
    ctx_id = re.search(r"/r/([^/?]+)/", refused.url).group(1)
    form_url = f"{generic.viewer_url}/access-request/{ctx_id}"
    form = http.get(form_url, timeout=10)
    assert form.status_code == 200 and "Dr Tom Brennan" in form.text
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.text))
    sent = http.post(
        form_url,
        data={
            **hidden,
            "requested_role": "R8000",
            "organisation": "Riverside Medical Practice",
            "organisation_ods": "Y01001",
            "reason": "Locum GP covering December clinics at Riverside",
            "training_completed": "2026-11-20",
            "training_confirmed": "yes",
        },
        timeout=10,
    )
    assert sent.status_code == 200 and "/sent" in sent.url and "scr.servicedesk@example.nhs.uk" in sent.text
    (pending,) = [
        r for r in viewer.register.requests("pending") if r.subject in (BRENNAN, "Practitioner/gp-prac-brennan")
    ]
    runner = FlaskCliRunner(generic.viewer_app)
    approved = runner.invoke(args=["access", "requests", "approve", str(pending.id), "--by", "Service Desk Sam"])
    assert approved.exit_code == 0, approved.output
    try:
        again = LAUNCHES[how](http, generic, BRENNAN)
        assert again.status_code == 200, again.text[:2000]
        user = identity_of(generic, again)
        assert user.role_source == "register" and "R8000" in user.role_codes and user.activity_codes
        assert "urn:scr:role-source:register" in role_sources_audited(generic, BRENNAN)
        if how == "standalone":  # the approval recorded the training as well
            assert viewer.training.attested(BRENNAN)
    finally:
        for entry in viewer.register.entries(issuer=generic.fhir_base("gp")):
            if entry.subject == pending.subject and entry.revoked_at is None:
                viewer.register.revoke(entry.id, by=operator("test"), request_id="test-cleanup")
        train(generic, BRENNAN)  # hands the approval's attestation to the fixture, which removes it
