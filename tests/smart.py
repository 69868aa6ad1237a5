"""A deliberately small SMART client for driving the sandbox in tests (the viewer's own lives in launch/)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from launch.keys import load_keyset, signing_key

EHR_SCOPES = "launch openid fhirUser online_access patient/*.rs"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def client_assertion(
    keyset: KeySet,
    client_id: str,
    token_url: str,
    alg: str = "RS384",
    lifetime: int = 240,
    jti: str | None = None,
    aud: str | None = None,
) -> str:
    key = signing_key(keyset, alg)
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud or token_url,
        "iat": now,
        "exp": now + lifetime,
        "jti": jti or secrets.token_urlsafe(16),
    }
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


@dataclass
class LaunchResult:
    launch_location: str
    iss: str
    launch: str
    authorize_location: str
    code: str | None
    verifier: str
    nonce: str
    state: str
    request_url: str = ""


class SandboxClient:
    def __init__(self, running, http: requests.Session) -> None:
        self.running = running
        self.http = http
        self.keyset = load_keyset(running.config.viewer.keys_file)
        self.token_url = f"{running.sandbox_url}/auth/token"
        self.redirect_uri = f"{running.viewer_url}/callback"

    def scripted_launch(self, user: str, nhs_number: str, **extra) -> requests.Response:
        params = {"user": user, "patient": nhs_number, "launch_url": f"{self.running.viewer_url}/launch", **extra}
        return self.http.get(f"{self.running.sandbox_url}/ehr/launch", params=params, allow_redirects=False)

    def authorize(
        self,
        iss: str,
        launch: str | None,
        scope: str = EHR_SCOPES,
        method: str = "S256",
        client_id: str = "scr-viewer",
        **overrides,
    ) -> LaunchResult:
        verifier, challenge = pkce_pair()
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": self.redirect_uri,
            "scope": scope,
            "state": state,
            "nonce": nonce,
            "aud": iss,
            "code_challenge": challenge if method == "S256" else verifier,
            "code_challenge_method": method,
        }
        if launch:
            params["launch"] = launch
        params.update(overrides)
        params = {k: v for k, v in params.items() if v is not None}
        resp = self.http.get(f"{self.running.sandbox_url}/auth/authorize", params=params, allow_redirects=False)
        location = resp.headers.get("Location", "")
        return LaunchResult(
            "", iss, launch or "", location, query(location).get("code"), verifier, nonce, state, resp.request.url
        )

    def ehr_launch(self, user: str, nhs_number: str, scope: str = EHR_SCOPES) -> LaunchResult:
        resp = self.scripted_launch(user, nhs_number)
        assert resp.status_code == 302, resp.text
        q = query(resp.headers["Location"])
        result = self.authorize(q["iss"], q["launch"], scope=scope)
        result.launch_location = resp.headers["Location"]
        return result

    def exchange(self, code: str, verifier: str, alg: str = "RS384", **overrides) -> requests.Response:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(self.keyset, "scr-viewer", self.token_url, alg=alg),
        }
        data.update(overrides)
        return self.http.post(self.token_url, data={k: v for k, v in data.items() if v is not None})

    def refresh(self, refresh_token: str) -> requests.Response:
        return self.http.post(
            self.token_url,
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": client_assertion(self.keyset, "scr-viewer", self.token_url),
            },
        )

    def backend_token(self, scope: str = "system/*.rs", **assertion_kwargs) -> requests.Response:
        return self.http.post(
            self.token_url,
            data={
                "grant_type": "client_credentials",
                "scope": scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": client_assertion(
                    self.keyset, "scr-viewer-backend", self.token_url, **assertion_kwargs
                ),
            },
        )

    def jwks(self) -> KeySet:
        return KeySet.import_key_set(self.http.get(f"{self.running.sandbox_url}/auth/jwks").json())

    def fhir(self, org: str, path: str, token: str, **params) -> requests.Response:
        return self.http.get(
            f"{self.running.fhir_base(org)}/{path}",
            params=params,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
        )


def decode_unverified(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def ehr_client(base: str):
    """An EhrFhirClient on ``base`` holding a fresh token set, as the callback leaves it (for loopback EHRs)."""
    from core.state.store import MemoryStore
    from launch.ehr_client import EhrFhirClient
    from launch.keys import generate_keyset
    from launch.registration import ClientSettings, EhrRegistration
    from launch.tokens import TokenManager, TokenSet

    ehr = EhrRegistration(name="EHR", issuer=base, client_id="scr", client_auth="none")
    tokens = TokenManager(
        MemoryStore(), ClientSettings("https://viewer.example", (ehr,), ("Patient",)), generate_keyset()
    )
    tokens.save("ctx", TokenSet("at", time.time() + 600, "openid fhirUser", f"{base}/token", base))
    return EhrFhirClient(tokens, "ctx", base)
