"""The simulated host EHR: sign in as a staff user, pick a patient, launch the viewer from the toolbar.

The toolbar button performs a SMART EHR launch: it creates a launch context (user, patient, encounter)
and sends the browser — in an embedded panel or a new window — to ``{launch_url}?iss=…&launch=…``.
``GET /ehr/launch`` does the same without clicking, for tests and tools.
"""

from __future__ import annotations

import re
import secrets
import time
import unicodedata
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, abort, current_app, redirect, render_template, request, session, url_for

from core.nhs_number import format_nhs_number, normalise

from .dataset import SandboxPatient, StaffUser
from .state import Launch, SandboxState

bp = Blueprint("ehr", __name__)

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


def _state() -> SandboxState:
    return current_app.extensions["sandbox_state"]


def _user() -> StaffUser | None:
    uid = session.get("ehr_user")
    return _state().dataset.staff.get(uid) if uid else None


@bp.app_template_filter("nhs")
def _nhs_filter(value: str) -> str:
    return format_nhs_number(value)


@bp.app_context_processor
def _inject():
    state = _state()
    return {"ehr_user": _user(), "sandbox_orgs": state.settings.organisations, "csrf_token": _csrf_token}


def _csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(16)
    return session["csrf"]


def _check_csrf() -> None:
    sent = request.form.get("csrf", "")
    if not sent or not secrets.compare_digest(sent, session.get("csrf", "")):
        abort(400, "This form has expired. Go back, reload the page and try again.")


@bp.get("/")
def home():
    """The patient list (``?q=`` searches it); the sign-in page until a staff user is chosen."""
    user = _user()
    if user is None:
        return _sign_in_page()
    everyone = _state().dataset.sorted_patients()
    q = " ".join(request.args.get("q", "").split())[:100]
    shown = [p for p in everyone if matches(p, q)] if q else everyone
    return render_template("sandbox/patients.html", patients=shown, total=len(everyone), q=q, user=user)


def _folded(text: str) -> str:
    """Lower case without accents, so "rodriguez" finds Rodríguez."""
    return "".join(c for c in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(c))


def matches(person: SandboxPatient, q: str) -> bool:
    """Every word of ``q`` is in the name, the NHS number or what the patient demonstrates; a query of digits
    (spaces and hyphens allowed, as NHS numbers are written) is part of the NHS number."""
    digits = re.sub(r"[\s-]", "", q)
    if digits.isdigit():
        return digits in person.nhs_number
    haystack = _folded(" ".join([person.name, person.nhs_number, *person.demonstrates]))
    return all(word in haystack for word in _folded(q).split())


@bp.post("/ehr/sign-in")
def sign_in():
    _check_csrf()
    staff = _state().dataset.staff.get(request.form.get("user", ""))
    if staff is None:
        abort(400, "Choose one of the sandbox staff users.")
    session.clear()
    session["ehr_user"] = staff.id
    return redirect(url_for("ehr.home"))


@bp.post("/ehr/sign-out")
def sign_out():
    """Signs out of the EHR, and (OpenID Connect Front-Channel Logout 1.0) out of the viewer in this browser:
    the page loads the viewer's front-channel logout URL, with the authorisation server's ``iss``, in an
    iframe, so the viewer's own cookie goes with the request and its session ends too."""
    _check_csrf()
    session.clear()
    settings = _state().settings
    if not settings.front_channel_logout_url:
        return redirect(url_for("ehr.home"))
    sep = "&" if "?" in settings.front_channel_logout_url else "?"
    logout_url = f"{settings.front_channel_logout_url}{sep}{urlencode({'iss': settings.issuer})}"
    return _sign_in_page(signed_out=True, logout_urls=[logout_url])


def _sign_in_page(**kw) -> str:
    staff = sorted(_state().dataset.staff.values(), key=lambda s: (s.organisation, s.display_name))
    return render_template("sandbox/sign_in.html", staff=staff, **kw)


@bp.get("/ehr/patient/<nhs_number>")
def patient(nhs_number: str):
    user = _user()
    if user is None:
        return redirect(url_for("ehr.home"))
    person = _state().dataset.patient(normalise(nhs_number))
    if person is None:
        abort(404, "No patient with that NHS number in the sandbox.")
    mode = session.get("open_mode", "embedded")
    return render_template("sandbox/patient.html", person=person, user=user, mode=mode)


@bp.post("/ehr/preferences")
def preferences():
    _check_csrf()
    mode = request.form.get("open_mode")
    if mode in ("embedded", "window"):
        session["open_mode"] = mode
    return redirect(request.form.get("back") or url_for("ehr.home"))


@bp.post("/ehr/patient/<nhs_number>/launch")
def toolbar_launch(nhs_number: str):
    """The toolbar button: the form's target decides between the embedded panel and a new window."""
    _check_csrf()
    user = _user()
    if user is None:
        abort(403, "Sign in to the sandbox EHR first.")
    launch = _launch(user, normalise(nhs_number), _state().settings.launch_url)
    return redirect(_launch_redirect(launch))


@bp.get("/ehr/launch")
def scripted_launch():
    """Scripted EHR launch: ``?user=<staff id>&patient=<NHS number>&launch_url=<url>``; signs the user in.
    ``&encounter=<id>`` launches in that encounter (any id, even one that does not exist or is another
    patient's); ``&encounter=current`` in an attendance open now at the user's organisation (created once)."""
    state = _state()
    user = state.dataset.staff.get(request.args.get("user", ""))
    if user is None:
        abort(400, f"Unknown user. Sandbox staff ids: {', '.join(sorted(state.dataset.staff))}")
    launch_url = request.args.get("launch_url") or state.settings.launch_url
    if not _launch_url_allowed(launch_url):
        abort(400, "launch_url must be a registered app launch URL or an http(s) URL on this machine.")
    launch = _launch(
        user,
        normalise(request.args.get("patient", "")),
        launch_url,
        encounter=request.args.get("encounter"),
        banner=request.args.get("need_patient_banner", "true").lower() != "false",
    )
    session.clear()
    session["ehr_user"] = user.id
    return redirect(_launch_redirect(launch))


def _launch(
    user: StaffUser, nhs_number: str, launch_url: str, encounter: str | None = None, banner: bool = True
) -> Launch:
    state = _state()
    person = state.dataset.patient(nhs_number)
    if person is None:
        abort(400, "Unknown patient: give the NHS number of a sandbox patient (see the patient list).")
    org_id = user.organisation
    patient_id = _local_patient_id(person, org_id)
    if encounter is None:
        encounter = _latest_encounter(org_id, patient_id)
    elif encounter == "current":
        encounter = _current_encounter(org_id, patient_id)
    return state.create_launch(
        user_id=user.id,
        org_id=org_id,
        iss=state.settings.fhir_base(org_id),
        nhs_number=person.nhs_number,
        patient_id=patient_id,
        encounter_id=encounter or None,
        need_patient_banner=banner,
        launch_url=launch_url,
        source="ehr",
    )


def _local_patient_id(person: SandboxPatient, org_id: str) -> str:
    """The patient's id in the launching organisation's system; register them there first if needed.

    A clinician can open anyone their system can trace (as with a PDS trace on arrival in A&E); the
    sandbox then adds a demographics-only registration to that organisation's server.
    """
    if org_id in person.ids:
        return person.ids[org_id]
    state = _state()
    source_org = next(iter(person.ids))
    original = state.dataset.stores[source_org].read("Patient", person.ids[source_org])
    local = {
        k: v
        for k, v in original.items()
        if k in ("resourceType", "identifier", "name", "gender", "birthDate", "address", "telecom", "deceasedDateTime")
    }
    local["id"] = f"{org_id}-traced-{person.nhs_number}"
    local["meta"] = {"lastUpdated": "2026-11-01T09:00:00Z"}
    with state.lock:
        state.dataset.stores[org_id].add(local)
        person.ids[org_id] = local["id"]
    return local["id"]


def _latest_encounter(org_id: str, patient_id: str) -> str | None:
    store = _state().dataset.stores[org_id]
    encounters, _ = store.search("Encounter", {"patient": [patient_id]})
    if not encounters:
        return None
    latest = max(encounters, key=lambda e: (e.get("period") or {}).get("start", ""))
    return latest["id"]


def _current_encounter(org_id: str, patient_id: str) -> str:
    """An attendance in progress now at ``org_id`` for this patient (the one a clinician launches from)."""
    state = _state()
    rid = f"{org_id}-enc-current-{patient_id}"
    with state.lock:
        state.dataset.stores[org_id].add(  # a no-op when this attendance is open already
            {
                "resourceType": "Encounter",
                "id": rid,
                "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": f"Patient/{patient_id}"},
                "period": {"start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                "serviceProvider": {"reference": f"Organization/{org_id}"},
            }
        )
    return rid


def _launch_redirect(launch: Launch) -> str:
    sep = "&" if urlsplit(launch.launch_url).query else "?"
    return f"{launch.launch_url}{sep}{urlencode({'iss': launch.iss, 'launch': launch.id})}"


def _launch_url_allowed(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    registered = {u for c in _state().settings.clients for u in c.launch_uris}
    return url in registered or parts.hostname in LOOPBACK_HOSTS


# ---- inbox: alerts the viewer delivers to care teams and privacy officers ------------------------------


@bp.post("/ehr/inbox/messages")
def receive_message():
    """Webhook the viewer posts alerts to (JSON). Loopback only, like the rest of the sandbox."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or not data.get("message") or not data.get("recipient"):
        abort(400, "Send a JSON alert with recipient and message.")
    with _state().lock:
        _state().inbox.append(
            {
                k: data.get(k)
                for k in ("id", "created", "kind", "recipient", "patient_nhs", "user_name", "user_org", "message")
            }
        )
    return {"status": "received"}, 202


@bp.get("/ehr/inbox")
def inbox():
    """The signed-in user's inbox: their organisation's care-team alerts, and privacy alerts for R0001."""
    user = _user()
    if user is None:
        return redirect(url_for("ehr.home"))
    org = _state().settings.organisation(user.organisation)
    mine = {f"care-team:{org.ods_code}"} if org else set()
    if user.job_role_code == "R0001":
        mine.add("privacy-officer")
    messages = [m for m in reversed(_state().inbox) if m.get("recipient") in mine]
    return render_template("sandbox/inbox.html", messages=messages, user=user)
