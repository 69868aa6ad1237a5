"""The sandbox's SMART authorisation server, built on Authlib's server components.

Authorization code with PKCE (S256 only), refresh tokens (rotated), and client credentials with a signed
JWT assertion (SMART Backend Services). Access tokens are RS256 JWTs so each organisation's FHIR server
can check them locally; id_tokens are signed RS256, RS384 or ES384 as the client registration asks.

For an organisation in generic SMART mode (``smart_mode = "generic"``) the same server behaves as common
deployed SMART servers do for launches at that organisation: standard id_token claims only (relative
``fhirUser``), RS256 without ``kid`` and a one-key JWKS, PKCE optional, reusable codes, a refresh id_token
without ``aud``, and an issuer built from the request's Host header.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, InvalidClientError, InvalidGrantError, InvalidRequestError, grants
from authlib.oauth2.rfc6749.models import AuthorizationCodeMixin
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode
from flask import request as flask_request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

from launch.scopes import allowed_subset

from .dataset import StaffUser
from .keys import ACCESS_TOKEN_ALG
from .settings import ClientRegistration
from .state import IssuedToken, SandboxState

CLIENT_ASSERTION_ALGS = ["RS384", "ES384", "RS256", "ES256"]
MAX_ASSERTION_LIFETIME = 300  # SMART: exp no more than five minutes in the future
CODE_LIFETIME = 60
NARROW_SCOPE = "launch patient/Observation.rs"
GENERIC_ID_TOKEN_ALG = "RS256"  # noqa: S105 (an algorithm name): generic mode signs with one key, whatever the client


def host_base() -> str:
    """``http://<Host header>``: what generic-mode servers build their URLs from, instead of configuration."""
    return f"http://{flask_request.host}"


def issuer_for(state: SandboxState, org_id: str | None) -> str:
    """The issuer for launches at ``org_id``: configured in NHS mode, from the Host header in generic mode."""
    return f"{host_base()}/auth" if state.is_generic(org_id) else state.settings.issuer


def org_for_aud(state: SandboxState, aud: str | None) -> str | None:
    """The organisation whose FHIR base ``aud`` names; generic organisations answer to their Host-derived base."""
    aud = (aud or "").rstrip("/")
    for org in state.settings.organisations:
        if aud == state.settings.fhir_base(org.id):
            return org.id
        if state.is_generic(org.id) and aud == f"{host_base()}/fhir/{org.id}":
            return org.id
    return None


def grantee_org(user: Any) -> str | None:
    return user.context.get("org_id") if isinstance(user, Grantee) else None


@dataclass
class Grantee:
    """The resource owner as Authlib sees it: a staff user plus the launch context they authorised."""

    staff: StaffUser
    context: dict[str, Any] = field(default_factory=dict)

    def get_user_id(self) -> str:
        return self.staff.id


@dataclass
class AuthCode(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: Grantee
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int
    expires_at: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


@dataclass
class RefreshRecord:
    refresh_token: str
    client_id: str
    scope: str
    user: Grantee
    revoked: bool = False

    def get_scope(self) -> str:
        return self.scope

    def get_client(self):  # Authlib asks the credential for its client
        return None

    def check_client(self, client) -> bool:
        return client.get_client_id() == self.client_id

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return self.revoked


class SandboxClient(ClientMixin):
    """A client registration from config, with its public keys for private_key_jwt."""

    def __init__(self, reg: ClientRegistration) -> None:
        self.reg = reg
        self.id_token_signed_response_alg = reg.id_token_alg
        self._jwks: dict | None = reg.jwks
        self._jwks_lock = threading.Lock()

    def get_client_id(self) -> str:
        return self.reg.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.reg.redirect_uris[0] if self.reg.redirect_uris else None

    def get_allowed_scope(self, scope: str) -> str:
        return allowed_subset(scope or "", self.reg.scope)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.reg.redirect_uris  # exact match: no prefix games

    def check_client_secret(self, client_secret: str) -> bool:
        return bool(self.reg.client_secret) and secrets.compare_digest(client_secret, self.reg.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.reg.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.reg.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.reg.grant_types

    def public_keys(self, refresh: bool = False) -> KeySet:
        """From inline JWKS, a file (public parts only are used) or a JWKS URL (refetched on unknown kid)."""
        with self._jwks_lock:
            if self.reg.jwks_file is not None and (refresh or self._jwks is None):
                data = json.loads(self.reg.jwks_file.read_text(encoding="utf-8"))
                self._jwks = KeySet.import_key_set(data).as_dict(private=False)
            elif self.reg.jwks_uri and (refresh or self._jwks is None):
                resp = requests.get(self.reg.jwks_uri, timeout=5, headers={"Accept": "application/json"})
                resp.raise_for_status()
                self._jwks = resp.json()
            if not self._jwks:
                raise InvalidClientError(description="The client has no registered public keys.")
            return KeySet.import_key_set(self._jwks)


class PrivateKeyJwtAuth(JWTBearerClientAssertion):
    """``private_key_jwt`` with SMART's rules: RS384/ES384 (RS256/ES256 tolerated), exp ≤ 5 min, jti once."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, token_url: str, state: SandboxState | None = None) -> None:
        super().__init__(leeway=30)
        self._token_url = token_url
        self._state = state
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def get_audiences(self) -> list[str]:
        audiences = [self._token_url]
        if self._state is not None and self._state.any_generic():
            audiences.append(f"{host_base()}/auth/token")  # the token_endpoint a generic discovery advertised
        return audiences

    def __call__(self, query_client, request):
        try:
            return super().__call__(query_client, request)
        except InvalidClientError as exc:
            exc.status_code = 401  # a failed client authentication, whichever grant it came with
            raise

    def resolve_client_public_key(self, client: SandboxClient) -> KeySet:
        return client.public_keys()

    def process_assertion_claims(self, assertion, resolve_key):
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=CLIENT_ASSERTION_ALGS)
        except JoseError as exc:
            raise InvalidClientError(description=f"Client assertion rejected: {exc.error}") from exc
        claims = token.claims
        if not isinstance(claims.get("exp"), int) or claims["exp"] > time.time() + MAX_ASSERTION_LIFETIME + 5:
            raise InvalidClientError(description="Client assertion exp must be at most 5 minutes ahead.")
        self.verify_claims(token.claims)
        return token.claims

    def validate_jti(self, claims: dict, jti: str) -> bool:
        now = time.time()
        key = f"{claims.get('iss')}:{jti}"
        with self._lock:
            for k in [k for k, exp in self._seen.items() if exp < now - 60]:
                del self._seen[k]
            if key in self._seen:
                return False
            self._seen[key] = float(claims.get("exp", now + MAX_ASSERTION_LIFETIME))
        return True


class S256Only(CodeChallenge):
    """PKCE required, and only S256: ``plain`` leaks the verifier to anyone who sees the request.

    For a generic-mode organisation PKCE is optional (as on many deployed servers): a request without
    ``code_challenge`` is accepted; one with a challenge is still held to S256 and verified.
    """

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def __init__(self, required: bool = True, state: SandboxState | None = None) -> None:
        super().__init__(required=required)
        self.state = state

    def _optional_for(self, org_id: str | None) -> bool:
        return self.state is not None and self.state.is_generic(org_id)

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        no_pkce = not data.get("code_challenge") and not data.get("code_challenge_method")
        if no_pkce and self.state is not None and self._optional_for(org_for_aud(self.state, data.get("aud"))):
            return None
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge.", redirect_uri=redirect_uri)
        if data.get("code_challenge_method") != "S256":  # absent means plain (RFC 7636 4.3)
            raise InvalidRequestError("code_challenge_method must be S256.", redirect_uri=redirect_uri)
        return super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant, result):
        code = grant.request.authorization_code
        if code is not None and not code.code_challenge and self._optional_for(grantee_org(code.user)):
            return None  # generic mode: no challenge was sent, so there is nothing to verify (a verifier is ignored)
        return super().validate_code_verifier(grant, result)


def build_authorization_server(app, state: SandboxState) -> AuthorizationServer:
    settings = state.settings
    token_url = f"{settings.base_url}/auth/token"
    clients = {c.client_id: SandboxClient(c) for c in settings.clients}
    codes: dict[str, AuthCode] = {}
    refresh_tokens: dict[str, RefreshRecord] = {}
    lock = threading.Lock()
    auth_methods = ["private_key_jwt", "client_secret_basic", "none"]

    def query_client(client_id: str) -> SandboxClient | None:
        if "invalid_client" in state.switches and flask_request.path.endswith("/token"):
            raise InvalidClientError(description="Simulated error: invalid_client switch is on.")
        return clients.get(client_id)

    def save_token(token: dict, request) -> None:
        if token.get("refresh_token") and request.user is not None:
            with lock:
                refresh_tokens[token["refresh_token"]] = RefreshRecord(
                    token["refresh_token"], request.client.get_client_id(), token.get("scope", ""), request.user
                )

    def generate_token(grant_type, client, user=None, scope=None, expires_in=None, include_refresh_token=True):
        now = int(time.time())
        lifetime = settings.access_token_lifetime
        context = user.context if isinstance(user, Grantee) else {}
        claims = {
            "iss": settings.issuer,
            "sub": user.staff.id if isinstance(user, Grantee) else client.get_client_id(),
            "aud": context.get("aud") or [settings.fhir_base(o.id) for o in settings.organisations],
            "client_id": client.get_client_id(),
            "scope": scope or "",
            "iat": now,
            "exp": now + lifetime,
            "jti": secrets.token_urlsafe(16),
        }
        for key in ("patient", "launch_id", "nhs_number"):
            if context.get(key):
                claims[key] = context[key]
        key = state.keys.for_alg(ACCESS_TOKEN_ALG)
        header = {"alg": ACCESS_TOKEN_ALG, "kid": key.kid, "typ": "at+jwt"}
        access = jwt.encode(header, claims, key, algorithms=[ACCESS_TOKEN_ALG])
        state.record_token(
            IssuedToken("access_token", now, now + lifetime, client.get_client_id(), scope or "", claims, header),
            context.get("launch_id"),
        )
        token = {"token_type": "Bearer", "access_token": access, "expires_in": lifetime, "scope": scope or ""}
        if include_refresh_token and isinstance(user, Grantee) and _wants_refresh(scope):
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token

    server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
    server.register_token_generator("default", generate_token)
    server.register_client_auth_method("private_key_jwt", PrivateKeyJwtAuth(token_url, state))

    class AuthorizationCode(grants.AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = auth_methods

        def save_authorization_code(self, code: str, request) -> None:
            with lock:
                codes[code] = AuthCode(
                    code=code,
                    client_id=request.client.get_client_id(),
                    redirect_uri=request.payload.redirect_uri,
                    scope=(
                        NARROW_SCOPE
                        if "narrow_scopes" in state.switches
                        else request.client.get_allowed_scope(request.payload.scope)
                    ),
                    user=request.user,
                    nonce=request.payload.data.get("nonce"),
                    code_challenge=request.payload.data.get("code_challenge"),
                    code_challenge_method=request.payload.data.get("code_challenge_method"),
                    auth_time=int(time.time()),
                    expires_at=time.time() + CODE_LIFETIME,
                )

        def query_authorization_code(self, code: str, client) -> AuthCode | None:
            item = codes.get(code)
            if item and item.client_id == client.get_client_id() and item.expires_at > time.time():
                return item
            return None

        def delete_authorization_code(self, authorization_code: AuthCode) -> None:
            if state.is_generic(grantee_org(authorization_code.user)):
                return  # generic mode: the code can be exchanged again until it expires
            with lock:
                codes.pop(authorization_code.code, None)  # single use

        def authenticate_user(self, authorization_code: AuthCode) -> Grantee:
            return authorization_code.user

        def create_token_response(self):
            status, token, headers = super().create_token_response()
            token.update(context_parameters(self.request.user))
            return status, token, headers

    class RefreshToken(grants.RefreshTokenGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = auth_methods
        INCLUDE_NEW_REFRESH_TOKEN = True

        def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
            if "invalid_refresh" in state.switches:
                raise InvalidGrantError(description="Simulated error: invalid_refresh switch is on.")
            record = refresh_tokens.get(refresh_token)
            return record if record and not record.revoked else None

        def authenticate_user(self, refresh_token: RefreshRecord) -> Grantee:
            return refresh_token.user

        def revoke_old_credential(self, refresh_token: RefreshRecord) -> None:
            refresh_token.revoked = True  # rotation: a refresh token works once

        def create_token_response(self):
            status, token, headers = super().create_token_response()
            token.update(context_parameters(self.request.user))
            user = self.request.user
            if state.is_generic(grantee_org(user)) and "openid" in (token.get("scope") or "").split():
                # As some deployed servers do: a fresh id_token on refresh, without aud (and without nonce).
                token["id_token"] = generic_id_token(state, self.request.client, user, None, token, with_aud=False)
            return status, token, headers

    class ClientCredentials(grants.ClientCredentialsGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt", "client_secret_basic"]

    class SmartOpenIDCode(OpenIDCode):
        def exists_nonce(self, nonce: str, request) -> bool:
            return any(c.nonce == nonce and c.client_id == request.payload.client_id for c in codes.values())

        def get_client_algorithm(self, client: SandboxClient) -> str:
            return client.reg.id_token_alg

        def resolve_client_private_key(self, client: SandboxClient):
            return state.keys.for_alg(client.reg.id_token_alg)

        def get_encode_header(self, client: SandboxClient) -> dict:
            key = state.keys.for_alg(client.reg.id_token_alg)
            return {"alg": client.reg.id_token_alg, "kid": key.kid, "typ": "JWT"}

        def get_client_claims(self, client: SandboxClient) -> dict:
            now = int(time.time())
            return {
                "iss": settings.issuer,
                "aud": [client.get_client_id()],
                "iat": now,
                "exp": now + settings.id_token_lifetime,
            }

        def generate_user_info(self, user: Grantee, scope: str) -> dict:
            return user_claims(state, user.staff)

        def encode_id_token(self, token, request):
            if state.is_generic(grantee_org(request.user)):
                code = request.authorization_code
                return generic_id_token(state, request.client, request.user, code.nonce if code else None, token)
            id_token = super().encode_id_token(token, request)
            decoded = jwt.decode(id_token, state.keys.keyset, algorithms=[request.client.reg.id_token_alg])
            header, claims = dict(decoded.header), dict(decoded.claims)
            id_token, header, claims = tamper_id_token(state, id_token, header, claims)
            state.record_token(
                IssuedToken(
                    "id_token",
                    claims["iat"],
                    claims["exp"],
                    request.client.get_client_id(),
                    token.get("scope", ""),
                    claims,
                    header,
                ),
                request.user.context.get("launch_id") if isinstance(request.user, Grantee) else None,
            )
            return id_token

    server.register_grant(
        AuthorizationCode, [S256Only(required=True, state=state), SmartOpenIDCode(require_nonce=False)]
    )
    server.register_grant(RefreshToken)
    server.register_grant(ClientCredentials)
    server.sandbox_clients = clients  # type: ignore[attr-defined]
    return server


def _wants_refresh(scope: str | None) -> bool:
    scopes = (scope or "").split()
    return "offline_access" in scopes or "online_access" in scopes


def context_parameters(user: Any) -> dict:
    """SMART launch context returned beside the token: patient, encounter, banner hint."""
    if not isinstance(user, Grantee):
        return {}
    ctx = user.context
    out: dict[str, Any] = {}
    if ctx.get("patient"):
        out["patient"] = ctx["patient"]
    if ctx.get("encounter"):
        out["encounter"] = ctx["encounter"]
    if "need_patient_banner" in ctx:
        out["need_patient_banner"] = bool(ctx["need_patient_banner"])
    return out


def user_claims(state: SandboxState, staff: StaffUser) -> dict:
    """OIDC claims for a staff user: fhirUser plus CIS2-style national RBAC claims."""
    settings = state.settings
    org = settings.organisation(staff.organisation)
    return {
        "sub": staff.id,
        "name": staff.display_name,
        "fhirUser": fhir_user(settings.fhir_base(staff.organisation), staff),
        "nhsid_useruid": staff.sds_user_id,
        "selected_roleid": staff.role_profile_id,
        "nhsid_nrbac_roles": [
            {
                "person_roleid": staff.role_profile_id,
                "org_code": org.ods_code if org else "",
                "role_code": staff.role_code,
                "role_name": staff.job_role_display,
                "activity_codes": list(staff.activities),
            }
        ],
    }


def generic_id_token(
    state: SandboxState, client: SandboxClient, user: Grantee, nonce: str | None, token: dict, with_aud: bool = True
) -> str:
    """A generic-mode id_token: ``iss sub aud exp iat nonce fhirUser profile`` only, RS256, no ``kid``.

    ``fhirUser`` (and the older ``profile``) is the relative ``Practitioner/<id>``, never a PractitionerRole;
    there is no name and no CIS2 claim, so an app must read the user from fhirUser. Recorded like any id_token.
    """
    now = int(time.time())
    claims: dict[str, Any] = {"iss": issuer_for(state, grantee_org(user)), "sub": user.staff.id}
    if with_aud:
        claims["aud"] = client.get_client_id()
    claims.update(exp=now + state.settings.id_token_lifetime, iat=now)
    if nonce:
        claims["nonce"] = nonce
    reference = f"Practitioner/{user.staff.practitioner_id}"
    claims.update(fhirUser=reference, profile=reference)
    header = {"alg": GENERIC_ID_TOKEN_ALG, "typ": "JWT"}
    key = state.keys.for_alg(GENERIC_ID_TOKEN_ALG)
    id_token = jwt.encode(header, claims, key, algorithms=[GENERIC_ID_TOKEN_ALG])
    id_token, header, claims = tamper_id_token(state, id_token, header, claims, with_kid=False)
    state.record_token(
        IssuedToken(
            "id_token", claims["iat"], claims["exp"], client.get_client_id(), token.get("scope", ""), claims, header
        ),
        user.context.get("launch_id"),
    )
    return id_token


def tamper_id_token(
    state: SandboxState, id_token: str, header: dict, claims: dict, with_kid: bool = True
) -> tuple[str, dict, dict]:
    """Apply the id_token switches, so apps can prove they refuse each kind of bad id_token."""
    on = state.switches
    if not any(name.startswith("id_token_") for name in on):
        return id_token, header, claims
    claims = dict(claims)
    now = int(time.time())
    if "id_token_wrong_nonce" in on:
        claims["nonce"] = "not-the-nonce-you-sent"
    if "id_token_wrong_issuer" in on:
        claims["iss"] = "https://impostor.example/auth"
    if "id_token_wrong_audience" in on:
        claims["aud"] = ["another-client"]
    if "id_token_expired" in on:
        claims["iat"], claims["exp"] = now - 7200, now - 3600
    alg = header["alg"]
    key = state.keys.for_alg(alg)
    header = {"alg": alg, "kid": key.kid, "typ": "JWT"} if with_kid else {"alg": alg, "typ": "JWT"}
    if "id_token_alg_none" in on:
        header = {"alg": "none", "typ": "JWT"}
        parts = [_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode())]
        return ".".join(parts) + ".", header, claims
    if "id_token_hs256" in on:
        header = {"alg": "HS256", "kid": key.kid, "typ": "JWT"}
        secret = OctKey.import_key(b"sandbox-shared-secret-known-to-everyone")
        return jwt.encode(header, claims, secret, algorithms=["HS256"]), header, claims
    if "id_token_unknown_key" in on:
        key = (
            RSAKey.generate_key(2048, parameters={"alg": alg}, private=True, auto_kid=True)
            if alg.startswith("RS")
            else ECKey.generate_key("P-384", parameters={"alg": alg}, private=True, auto_kid=True)
        )
        header = {"alg": alg, "kid": key.kid, "typ": "JWT"} if with_kid else {"alg": alg, "typ": "JWT"}
    if "id_token_no_kid" in on:
        header = {"alg": alg, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=[alg]), header, claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fhir_user(base: str, staff: StaffUser) -> str:
    """Absolute Practitioner URL by default; staff.json may ask for a PractitionerRole or a relative URL,
    since real EHRs send all three forms."""
    form = staff.raw.get("fhir_user_form", "practitioner")
    if form == "practitioner_role":
        return f"{base}/PractitionerRole/{staff.role_id}"
    if form == "relative":
        return f"Practitioner/{staff.practitioner_id}"
    return f"{base}/Practitioner/{staff.practitioner_id}"
