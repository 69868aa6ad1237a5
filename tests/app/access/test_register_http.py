"""The access register's pages and ``flask access`` on a real app (create_app, a temporary SQLite database):
who may manage it, CSRF on every form, the request form of a user without a role, approval, the CLI."""

from __future__ import annotations

import re
from html import unescape

import pytest

from app import create_app
from app.access.register import ACCESS_REQUEST, REGISTER_CHANGE
from app.config import load_config
from app.services import services
from launch.context import LaunchContext
from launch.identity import UserIdentity
from sandbox.serve import SANDBOX_CONFIG

PO = UserIdentity(
    name="Ms Pat Officer", sub="po-sub", sds_user_id="555000000007", role_codes=("R0001",), activity_codes=("B0015",)
)
RA = UserIdentity(name="Mr Rob Agent", sub="ra-sub", sds_user_id="555000000050", role_codes=("R5080",))
DOCTOR = UserIdentity(
    name="Dr Ann Patel", sub="dr-sub", sds_user_id="555000000001", role_codes=("R8000",), activity_codes=("B0360",)
)
NO_ROLE = UserIdentity(name="Dr Lee Locum", sub="locum-sub", fhir_user="Practitioner/locum", tried=("cis2_claims: x",))


@pytest.fixture
def app(tmp_path):
    env = {
        "SCR_KEYS_FILE": str(tmp_path / "keys.json"),
        "SCR_AUDIT_SQLITE": str(tmp_path / "audit.sqlite3"),
        "SCR_SYNTHEA_DIR": str(tmp_path / "none"),
    }
    application = create_app(load_config(SANDBOX_CONFIG, env=env))
    yield application
    services(application).audit_store.engine.dispose()


@pytest.fixture
def iss(app):
    return services(app).config.ehrs[0].issuer


def signed_in(app, identity: UserIdentity, *, standalone: bool = False):
    """A browser whose session completed a launch for ``identity`` (the launch context the pages are reached by)."""
    iss = services(app).config.ehrs[0].issuer
    ctx = LaunchContext(
        id=f"ctx-{identity.sub}",
        iss=iss,
        ehr_name="Riverside EHR",
        patient="",
        scope="",
        standalone=standalone,
        user_claims={},
        identity=UserIdentity.from_dict({**identity.__dict__, "issuer": iss, "organisation": None}),
    )
    services(app).launch.contexts.save(ctx)
    client = app.test_client()
    with client.session_transaction() as session:
        session["contexts"] = [ctx.id]
    return client, ctx


def csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def kinds(app, kind):
    return [e for e in reversed(services(app).audit_store.search(limit=1000)) if e.index["action_code"] == kind]


# -- who may manage the register -------------------------------------------------------------------------------
def test_the_wiring(app):
    running = services(app)
    assert running.launch.register == running.register.lookup
    assert "access" in app.cli.commands
    assert running.register.default_days == running.config.access.register_default_days


@pytest.mark.parametrize("identity", [DOCTOR, NO_ROLE])
def test_users_who_do_not_manage_the_register_are_refused(app, iss, identity):
    client, ctx = signed_in(app, identity)
    for path in ("register/", "register/requests", "register/requests/1"):
        assert client.get(f"/r/{ctx.id}/{path}").status_code == 403
    page = client.get("/help")  # any page: the session has a CSRF token to send
    token = csrf(client.get(f"/access-request/{ctx.id}").get_data(as_text=True)) if identity is NO_ROLE else "x"
    form = {"csrf": token, "issuer": iss, "subject": "u1", "role_codes": "R8000", "expires": "2099-01-01"}
    assert client.post(f"/r/{ctx.id}/register/add", data=form).status_code == 403
    assert client.post(f"/r/{ctx.id}/register/1/revoke", data={"csrf": token}).status_code == 403
    assert page.status_code == 200
    assert services(app).register.entries() == [] and kinds(app, REGISTER_CHANGE) == []


def test_a_page_of_another_browser_session_is_not_shown(app):
    _, ctx = signed_in(app, PO)
    stranger = app.test_client()
    assert stranger.get(f"/r/{ctx.id}/register/").status_code != 200


@pytest.mark.parametrize("identity", [PO, RA], ids=["privacy-officer", "registration-authority"])
def test_managers_add_renew_and_revoke_entries(app, iss, identity):
    client, ctx = signed_in(app, identity)
    page = client.get(f"/r/{ctx.id}/register/")
    assert page.status_code == 200 and "Access register" in page.get_data(as_text=True)
    token = csrf(page.get_data(as_text=True))
    form = {
        "csrf": token,
        "issuer": iss,
        "subject": "Practitioner/<b>x</b>",
        "role_codes": "R8000",
        "activity_codes": "B0360 B0370",
        "organisation_ods": "Y01001",
        "expires": "2099-12-31",
    }
    added = client.post(f"/r/{ctx.id}/register/add", data=form)
    assert added.status_code == 302
    listing = client.get(f"/r/{ctx.id}/register/").get_data(as_text=True)
    assert "Practitioner/&lt;b&gt;x&lt;/b&gt;" in listing and "<b>x</b>" not in listing  # escaped
    entry = services(app).register.entries()[0]
    assert services(app).register.lookup(iss, ("Practitioner/<b>x</b>",)).activity_codes == ("B0360", "B0370")

    renewed = client.post(f"/r/{ctx.id}/register/{entry.id}/renew", data={"csrf": token, "expires": "2100-01-31"})
    assert renewed.status_code == 302 and services(app).register.entry(entry.id).expires == "2100-01-31"
    revoked = client.post(f"/r/{ctx.id}/register/{entry.id}/revoke", data={"csrf": token, "reason": "left"})
    assert revoked.status_code == 302
    assert services(app).register.lookup(iss, ("Practitioner/<b>x</b>",)) is None

    changes = kinds(app, REGISTER_CHANGE)
    assert [c.index["user_id"] for c in changes] == [identity.sds_user_id] * 3
    assert all(c.event["entity"][-1]["detail"][1] == {"type": "launch-context", "valueString": ctx.id} for c in changes)


def test_every_form_needs_the_csrf_token(app, iss):
    client, ctx = signed_in(app, PO)
    client.get(f"/r/{ctx.id}/register/")
    form = {"issuer": iss, "subject": "u1", "role_codes": "R8000", "expires": "2099-01-01"}
    assert client.post(f"/r/{ctx.id}/register/add", data=form).status_code == 400
    assert client.post(f"/r/{ctx.id}/register/add", data={**form, "csrf": "forged"}).status_code == 400
    assert services(app).register.entries() == []
    for path in ("register/1/renew", "register/1/revoke", "register/requests/1/approve", "register/requests/1/reject"):
        assert client.post(f"/r/{ctx.id}/{path}", data={"expires": "2099-01-01"}).status_code == 400, path
    requester, rctx = signed_in(app, NO_ROLE)
    requester.get(f"/access-request/{rctx.id}")
    assert requester.post(f"/access-request/{rctx.id}", data=_request_form("")).status_code == 400
    assert services(app).register.requests() == []
    assert kinds(app, REGISTER_CHANGE) == [] and kinds(app, ACCESS_REQUEST) == []


def test_the_add_form_says_what_is_wrong(app, iss):
    client, ctx = signed_in(app, RA)
    token = csrf(client.get(f"/r/{ctx.id}/register/").get_data(as_text=True))
    bad = client.post(
        f"/r/{ctx.id}/register/add",
        data={"csrf": token, "issuer": iss, "subject": "", "role_codes": "doctor", "expires": "2001-01-01"},
    )
    text = unescape(bad.get_data(as_text=True))
    assert bad.status_code == 400
    assert "Give the user's id" in text and "These are not role codes" in text and "has passed" in text
    unknown = client.post(
        f"/r/{ctx.id}/register/add",
        data={
            "csrf": token,
            "issuer": "https://elsewhere.example/fhir",
            "subject": "u",
            "role_codes": "R8000",
            "expires": "2099-01-01",
        },
    )
    assert unknown.status_code == 400 and "registered clinical systems" in unknown.get_data(as_text=True)
    assert services(app).register.entries() == []


# -- the request form, the queue, approval ---------------------------------------------------------------------
def _request_form(token: str, **kw) -> dict:
    return {
        "csrf": token,
        "requested_role": "R8000",
        "organisation": "Riverside <Medical> Practice",
        "organisation_ods": "Y01001",
        "reason": "Locum GP covering the practice until the summer",
        "training_completed": "2024-05-01",
        "training_confirmed": "yes",
        **kw,
    }


def test_a_user_without_a_role_asks_and_an_approval_lets_them_in(app, iss):
    requester, rctx = signed_in(app, NO_ROLE, standalone=True)
    form_page = requester.get(f"/access-request/{rctx.id}")
    html = form_page.get_data(as_text=True)
    assert form_page.status_code == 200
    assert "Dr Lee Locum" in html and "locum-sub" in html and "Riverside EHR" in html and iss in html
    token = csrf(html)

    bad = requester.post(
        f"/access-request/{rctx.id}",
        data=_request_form(token, reason="need it", training_confirmed="", requested_role=""),
    )
    text = unescape(bad.get_data(as_text=True))
    assert bad.status_code == 400
    assert "Choose the role you need" in text and "20 characters or more" in text and "Confirm that you have" in text
    assert 'value="Riverside &lt;Medical&gt; Practice"' in bad.get_data(as_text=True)  # kept, escaped

    sent = requester.post(f"/access-request/{rctx.id}", data=_request_form(token))
    assert sent.status_code == 302 and sent.headers["Location"].endswith(f"/access-request/{rctx.id}/sent")
    confirmation = requester.get(sent.headers["Location"]).get_data(as_text=True)
    viewer = services(app).config.viewer
    assert "Your request has been sent" in confirmation
    assert viewer.support_email in confirmation and viewer.support_phone in confirmation
    assert requester.get(f"/access-request/{rctx.id}").status_code == 302  # one pending request at a time
    assert len(services(app).register.requests()) == 1

    officer, octx = signed_in(app, PO)
    queue = officer.get(f"/r/{octx.id}/register/requests").get_data(as_text=True)
    req = services(app).register.requests()[0]
    assert f'id="request-{req.id}"' in queue and "Riverside &lt;Medical&gt; Practice" in queue
    review = officer.get(f"/r/{octx.id}/register/requests/{req.id}").get_data(as_text=True)
    assert "Locum GP covering" in review and 'value="B0360 B0370"' in review  # suggested for R8000
    approved = officer.post(
        f"/r/{octx.id}/register/requests/{req.id}/approve",
        data={"csrf": csrf(review), "role_codes": "R8000", "activity_codes": "B0360 B0370", "expires": "2099-12-31"},
    )
    assert approved.status_code == 302

    running = services(app)
    grant = running.launch.register(iss, NO_ROLE.subjects)  # what the launch calls
    assert grant.role_codes == ("R8000",) and grant.activity_codes == ("B0360", "B0370") and grant.source == "register"
    assert running.training.attested(NO_ROLE.user_id)
    assert running.register.get_request(req.id).status == "approved"
    assert [e.index["user_id"] for e in kinds(app, ACCESS_REQUEST)] == ["locum-sub", PO.sds_user_id]


def test_rejection_from_the_review_page(app):
    requester, rctx = signed_in(app, NO_ROLE)
    token = csrf(requester.get(f"/access-request/{rctx.id}").get_data(as_text=True))
    requester.post(f"/access-request/{rctx.id}", data=_request_form(token))
    req = services(app).register.requests()[0]
    officer, octx = signed_in(app, RA)
    review = officer.get(f"/r/{octx.id}/register/requests/{req.id}").get_data(as_text=True)
    empty = officer.post(f"/r/{octx.id}/register/requests/{req.id}/reject", data={"csrf": csrf(review), "note": ""})
    assert empty.status_code == 400 and "Say why the request is rejected" in empty.get_data(as_text=True)
    done = officer.post(
        f"/r/{octx.id}/register/requests/{req.id}/reject", data={"csrf": csrf(review), "note": "Not known to us"}
    )
    assert done.status_code == 302 and services(app).register.get_request(req.id).status == "rejected"
    assert services(app).register.entries() == []


def test_the_request_form_is_only_for_users_refused_on_their_identity(app):
    doctor, dctx = signed_in(app, DOCTOR)
    assert doctor.get(f"/access-request/{dctx.id}").status_code == 302  # has a role: back to the record
    officer, octx = signed_in(app, PO)
    assert officer.get(f"/access-request/{octx.id}").status_code == 302  # privacy officers have their console
    untrained, uctx = signed_in(app, DOCTOR.__class__(**{**DOCTOR.__dict__, "sub": "dr2"}), standalone=True)
    # A standalone user with a role but no recorded training may ask too (approval records the training).
    assert services(app).access.screen(uctx) is not None
    assert untrained.get(f"/access-request/{uctx.id}").status_code == 200


def test_the_privacy_console_links_to_the_register(app):
    client, ctx = signed_in(app, PO)
    page = client.get(f"/r/{ctx.id}/privacy/training").get_data(as_text=True)
    assert f"/r/{ctx.id}/register/" in page and f"/r/{ctx.id}/register/requests" in page


# -- the command line ---------------------------------------------------------------------------------------------
def test_cli_round_trip(app, iss):
    runner = app.test_cli_runner()
    added = runner.invoke(
        args=[
            "access",
            "register",
            "add",
            "--issuer",
            iss,
            "--subject",
            "555000000099",
            "--roles",
            "R8000",
            "--activities",
            "B0360,B0370",
            "--expires",
            "2099-12-31",
            "--ods",
            "Y01001",
            "--by",
            "Alice Admin",
        ]
    )
    assert added.exit_code == 0, added.output
    assert "555000000099" in added.output and "until 2099-12-31" in added.output
    listed = runner.invoke(args=["access", "register", "list"])
    assert listed.exit_code == 0 and "1 entry" in listed.output and "B0360 B0370" in listed.output
    entry_id = services(app).register.entries()[0].id
    renewed = runner.invoke(
        args=["access", "register", "renew", str(entry_id), "--expires", "2100-01-01", "--by", "Bob"]
    )
    assert renewed.exit_code == 0 and "until 2100-01-01" in renewed.output
    revoked = runner.invoke(
        args=["access", "register", "revoke", str(entry_id), "--reason", "left", "--by", "Alice Admin"]
    )
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert "0 entries" in runner.invoke(args=["access", "register", "list"]).output
    assert "1 entry" in runner.invoke(args=["access", "register", "list", "--all"]).output
    assert services(app).register.lookup(iss, ("555000000099",)) is None

    wrong = runner.invoke(
        args=[
            "access",
            "register",
            "add",
            "--issuer",
            iss,
            "--subject",
            "x",
            "--roles",
            "doctor",
            "--expires",
            "1999-01-01",
            "--by",
            "Alice Admin",
        ]
    )
    assert wrong.exit_code == 1 and "These are not role codes" in wrong.output and "has passed" in wrong.output
    assert (
        runner.invoke(
            args=["access", "register", "add", "--issuer", iss, "--subject", "x", "--roles", "R8000"]
        ).exit_code
        == 2
    )

    changes = kinds(app, REGISTER_CHANGE)
    assert [c.index["user_id"] for c in changes] == ["cli:Alice Admin", "cli:Bob", "cli:Alice Admin"]


def test_cli_requests_approve_and_reject(app, iss):
    register = services(app).register
    for sub in ("one", "two"):
        register.submit(
            UserIdentity(name=f"Dr {sub}", sub=sub),
            iss,
            "Riverside EHR",
            requested_role="R8001",
            organisation="Riverside",
            organisation_ods=None,
            reason="Practice nurse joining the team this month",
            training_completed="2024-05-01",
            training_confirmed=True,
            request_id="r",
        )
    first, second = register.requests()
    runner = app.test_cli_runner()
    listed = runner.invoke(args=["access", "requests", "list"])
    assert listed.exit_code == 0 and "2 request(s)" in listed.output and "Practice nurse joining" in listed.output
    approved = runner.invoke(args=["access", "requests", "approve", str(first.id), "--by", "Service Desk"])
    assert approved.exit_code == 0, approved.output
    assert "training attested for one" in approved.output
    grant = register.lookup(iss, ("one",))
    assert grant.role_codes == ("R8001",) and grant.activity_codes == ("B0370", "B0401")  # requested + suggested
    assert services(app).training.attested("one")
    assert runner.invoke(args=["access", "requests", "reject", str(second.id), "--by", "Service Desk"]).exit_code == 2
    rejected = runner.invoke(
        args=["access", "requests", "reject", str(second.id), "--note", "Unknown", "--by", "Service Desk"]
    )
    assert rejected.exit_code == 0 and "rejected" in rejected.output
    again = runner.invoke(args=["access", "requests", "approve", str(second.id), "--by", "Service Desk"])
    assert again.exit_code == 1 and "already rejected" in again.output
    assert "0 request(s)" in runner.invoke(args=["access", "requests", "list"]).output
    assert "2 request(s)" in runner.invoke(args=["access", "requests", "list", "--status", "all"]).output
    decided = kinds(app, ACCESS_REQUEST)[-2:]
    assert [d.index["user_id"] for d in decided] == ["cli:Service Desk"] * 2


def test_cli_refuses_a_change_the_audit_cannot_record(app, iss):
    with services(app).audit_store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE audit_events RENAME TO audit_events_away")
    result = app.test_cli_runner().invoke(
        args=[
            "access",
            "register",
            "add",
            "--issuer",
            iss,
            "--subject",
            "u",
            "--roles",
            "R8000",
            "--expires",
            "2099-01-01",
            "--by",
            "Alice",
        ]
    )
    assert result.exit_code == 1 and "nothing was changed" in result.output
    assert services(app).register.entries() == []
