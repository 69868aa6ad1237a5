"""HTTP endpoints of the sandbox authorisation server: authorize, token, JWKS, discovery documents."""

from __future__ import annotations

import secrets

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from flask import Blueprint, abort, current_app, jsonify, render_template, request, session

from .auth_server import GENERIC_ID_TOKEN_ALG, Grantee, host_base, org_for_aud
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


BACKEND_SCOPES = ["system/*.rs", "system/*.read"]
BACKEND_CAPABILITIES = ["client-confidential-asymmetric", "permission-v1", "permission-v2"]


def smart_configuration(state: SandboxState, org_id: str | None = None) -> dict:
    """The organisation's ``.well-known/smart-configuration``, as its SMART profile says.

    NHS mode: URLs from the configured base_url. Generic mode: issuer and every URL from the request's Host
    header (http), the one-key JWKS, and ``client_secret_post`` advertised (though refused when used).
    ``discovery = "token_endpoint_only"`` gives a Backend-Services-only document (no authorization_endpoint).
    """
    profile = state.smart_profile(org_id)
    doc = _document(state, profile.generic)
    if profile.discovery == "token_endpoint_only":
        keep = ("issuer", "jwks_uri", "token_endpoint", "token_endpoint_auth_signing_alg_values_supported")
        methods = ["private_key_jwt", "client_secret_post"] if profile.generic else ["private_key_jwt"]
        doc = {k: doc[k] for k in keep} | {
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": methods,
            "scopes_supported": BACKEND_SCOPES,
            "capabilities": BACKEND_CAPABILITIES,
        }
    return doc


def oauth_uris(state: SandboxState, org_id: str) -> list[dict]:
    """The CapabilityStatement's SMART ``oauth-uris`` extension: token, and authorize unless Backend-only."""
    doc = _document(state, state.is_generic(org_id))
    uris = [{"url": "token", "valueUri": doc["token_endpoint"]}]
    if state.smart_profile(org_id).discovery != "token_endpoint_only":
        uris.insert(0, {"url": "authorize", "valueUri": doc["authorization_endpoint"]})
    return uris


def _document(state: SandboxState, generic: bool) -> dict:
    base = host_base() if generic else state.settings.base_url
    doc = {
        "issuer": f"{base}/auth" if generic else state.settings.issuer,
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
    if generic:
        doc["jwks_uri"] = f"{base}/auth/generic/jwks"
        doc["token_endpoint_auth_methods_supported"] = [
            "private_key_jwt",
            "client_secret_basic",
            "client_secret_post",  # advertised, but refused when used (as some servers do)
            "none",
        ]
        doc["id_token_signing_alg_values_supported"] = [GENERIC_ID_TOKEN_ALG]
    return doc


@bp.get("/.well-known/openid-configuration")
def openid_configuration():
    """The issuer's OpenID configuration: the generic one (Host-derived) once any organisation is generic."""
    state = _state()
    doc = _document(state, state.any_generic())
    doc["subject_types_supported"] = ["public"]
    return jsonify(doc)


@bp.get("/jwks")
def jwks():
    return jsonify(_state().keys.public_jwks())


@bp.get("/generic/jwks")
def generic_jwks():
    """The JWKS generic-mode discovery points at: exactly one key, the one that signs its id_tokens."""
    key = _state().keys.for_alg(GENERIC_ID_TOKEN_ALG)
    return jsonify({"keys": [key.as_dict(private=False)]})


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
    org_id = org_for_aud(state, aud)
    if org_id is None:
        return _redirect_error(grant, "invalid_request", "aud must be the FHIR base URL of a sandbox server")

    launch_id = request.values.get("launch")
    if launch_id:
        return _ehr_launch(grant, launch_id, aud, org_id)
    return _standalone(grant, aud, org_id)


def _token_audiences(state: SandboxState, aud: str, org_id: str) -> list[str]:
    """Access tokens name the configured FHIR base (what the FHIR server checks), and the Host-derived one a
    generic-mode client may have used."""
    configured = state.settings.fhir_base(org_id)
    return [configured] if aud == configured else [configured, aud]


def _ehr_launch(grant, launch_id: str, aud: str, org_id: str):
    state, server = _state(), _server()
    launch = state.launch(launch_id)
    if launch is None or launch.org_id != org_id or (launch.iss != aud and not state.is_generic(org_id)):
        return _redirect_error(grant, "invalid_request", "unknown launch, or launch not issued for this aud")
    if "deny_consent" in state.switches:
        return server.create_authorization_response(grant=grant, grant_user=None)
    staff = state.dataset.staff[launch.user_id]
    context = {
        "org_id": org_id,
        "aud": _token_audiences(state, aud, org_id),
        "patient": launch.patient_id,
        "encounter": launch.encounter_id,
        "need_patient_banner": launch.need_patient_banner,
        "launch_id": launch.id,
        "nhs_number": launch.nhs_number,
    }
    return server.create_authorization_response(grant=grant, grant_user=Grantee(staff, context))


# The sign-in page's own controls, never echoed back as authorization request parameters.
SIGN_IN_FIELDS = frozenset({"csrf", "user", "patient", "decision"})


def _standalone(grant, aud: str, org_id: str):
    """Sign in at the authorisation server, pick a patient when ``launch/patient`` is asked, then allow/deny."""
    state, server = _state(), _server()
    scopes = (request.values.get("scope") or "").split()
    wants_patient = "launch/patient" in scopes
    patients = [p for p in state.dataset.sorted_patients() if org_id in p.ids]
    if "decision" not in request.form:
        # The authorization request itself, by GET or (``authorize-post``) by POST; the page's own form is the
        # POST that carries a decision. Its hidden fields repeat these parameters once, posted to the bare URL.
        session["auth_csrf"] = secrets.token_urlsafe(16)
        return render_template(
            "sandbox/authorize.html",
            params=[(k, v) for k, v in request.values.items(multi=True) if k not in SIGN_IN_FIELDS],
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
    context: dict = {"org_id": org_id, "aud": _token_audiences(state, aud, org_id), "need_patient_banner": True}
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
