"""HTTP endpoints of the sandbox authorisation server: authorize, token, JWKS, discovery documents."""

from __future__ import annotations

import secrets

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from flask import Blueprint, abort, current_app, jsonify, render_template, request, session

from .auth_server import Grantee
from .state import SandboxState

bp = Blueprint("auth", __name__, url_prefix="/auth")

SCOPES_SUPPORTED = [
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "online_access",
    "offline_access",
    "patient/*.rs",
    "user/*.rs",
    "system/*.rs",
    "patient/*.read",
    "user/*.read",
    "system/*.read",
]
CAPABILITIES = [
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-passthrough-banner",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "sso-openid-connect",
    "authorize-post",
]


def _state() -> SandboxState:
    return current_app.extensions["sandbox_state"]


def _server():
    return current_app.extensions["sandbox_auth"]


def smart_configuration(state: SandboxState) -> dict:
    base = state.settings.base_url
    return {
        "issuer": state.settings.issuer,
        "jwks_uri": f"{base}/auth/jwks",
        "authorization_endpoint": f"{base}/auth/authorize",
        "token_endpoint": f"{base}/auth/token",
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "id_token_signing_alg_values_supported": ["RS256", "RS384", "ES384"],
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": CAPABILITIES,
    }


@bp.get("/.well-known/openid-configuration")
def openid_configuration():
    doc = smart_configuration(_state())
    doc["subject_types_supported"] = ["public"]
    return jsonify(doc)


@bp.get("/jwks")
def jwks():
    return jsonify(_state().keys.public_jwks())


@bp.post("/token")
def token():
    return _server().create_token_response()


@bp.route("/authorize", methods=["GET", "POST"])
def authorize():
    state, server = _state(), _server()
    try:
        grant = server.get_consent_grant(end_user=None)
    except OAuth2Error as err:
        if getattr(err, "redirect_uri", None):
            return server.handle_error_response(None, err)
        # Unknown client or unregistered redirect_uri: never redirect anywhere (that would be an open redirect).
        return render_template("sandbox/auth_error.html", error=err.error, description=err.description), 400

    aud = request.values.get("aud", "").rstrip("/")
    bases = {state.settings.fhir_base(o.id): o.id for o in state.settings.organisations}
    if aud not in bases:
        return _redirect_error(grant, "invalid_request", "aud must be the FHIR base URL of a sandbox server")

    launch_id = request.values.get("launch")
    if launch_id:
        return _ehr_launch(grant, launch_id, aud)
    return _standalone(grant, aud, bases[aud])


def _ehr_launch(grant, launch_id: str, aud: str):
    state, server = _state(), _server()
    launch = state.launch(launch_id)
    if launch is None or launch.iss != aud:
        return _redirect_error(grant, "invalid_request", "unknown launch, or launch not issued for this aud")
    if "deny_consent" in state.switches:
        return server.create_authorization_response(grant=grant, grant_user=None)
    staff = state.dataset.staff[launch.user_id]
    context = {
        "aud": [aud],
        "patient": launch.patient_id,
        "encounter": launch.encounter_id,
        "need_patient_banner": launch.need_patient_banner,
        "launch_id": launch.id,
        "nhs_number": launch.nhs_number,
    }
    return server.create_authorization_response(grant=grant, grant_user=Grantee(staff, context))


def _standalone(grant, aud: str, org_id: str):
    """Sign in at the authorisation server, pick a patient when ``launch/patient`` is asked, then allow/deny."""
    state, server = _state(), _server()
    scopes = (request.values.get("scope") or "").split()
    wants_patient = "launch/patient" in scopes
    patients = [p for p in state.dataset.sorted_patients() if org_id in p.ids]
    if request.method == "GET":
        session["auth_csrf"] = secrets.token_urlsafe(16)
        return render_template(
            "sandbox/authorize.html",
            params=[(k, v) for k, v in request.args.items(multi=True)],
            staff=sorted(state.dataset.staff.values(), key=lambda s: s.display_name),
            current_user=session.get("ehr_user"),
            patients=patients if wants_patient else [],
            client=grant.client,
            scopes=scopes,
            org=state.settings.organisation(org_id),
            csrf=session["auth_csrf"],
        )
    if not secrets.compare_digest(request.form.get("csrf", ""), session.pop("auth_csrf", "") or "-"):
        abort(400, "The sign-in form expired; start the launch again.")
    if request.form.get("decision") != "allow" or "deny_consent" in state.switches:
        return server.create_authorization_response(grant=grant, grant_user=None)
    staff = state.dataset.staff.get(request.form.get("user", ""))
    if staff is None:
        abort(400, "Choose a sandbox user to sign in as.")
    session["ehr_user"] = staff.id
    context: dict = {"aud": [aud], "need_patient_banner": True}
    if wants_patient:
        chosen = state.dataset.patient(request.form.get("patient", ""))
        if chosen is None or org_id not in chosen.ids:
            abort(400, "Choose a patient known to this organisation.")
        context.update(patient=chosen.ids[org_id], nhs_number=chosen.nhs_number)
        launch = state.create_launch(
            user_id=staff.id,
            org_id=org_id,
            iss=aud,
            nhs_number=chosen.nhs_number,
            patient_id=chosen.ids[org_id],
            encounter_id=None,
            need_patient_banner=True,
            launch_url="",
            source="standalone",
        )
        context["launch_id"] = launch.id
    return server.create_authorization_response(grant=grant, grant_user=Grantee(staff, context))


def _redirect_error(grant, error: str, description: str):
    params = {"error": error, "error_description": description}
    if request.values.get("state"):
        params["state"] = request.values["state"]
    resp = current_app.response_class(status=302)
    resp.headers["Location"] = add_params_to_uri(grant.redirect_uri, params)
    return resp
