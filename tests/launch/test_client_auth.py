"""Client authentication and token requests through Authlib, against a small local token endpoint.

What is ours on top of Authlib is tested here: SMART's assertion rules, the RFC 6749 Basic encoding, the
HTTP policy (no env proxies, no redirects, our User-Agent), errors that never carry a token, Bearer-only
tokens, and one refresh for many concurrent requests.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from joserfc import jwt
from joserfc.errors import JoseError

from core.http import USER_AGENT
from core.state.store import MemoryStore
from launch.backend import BackendTokens
from launch.client_auth import (
    ASSERTION_LIFETIME,
    ASSERTION_TYPE,
    SmartPrivateKeyJWT,
    client_assertion,
    client_authentication,
)
from launch.discovery import Discovery
from launch.errors import RelaunchRequired, TokenError
from launch.keys import generate_keyset, public_jwks, signing_key
from launch.registration import ClientSettings, EhrRegistration, Source
from launch.tokens import TokenEndpoint, TokenManager, TokenSet, token_set_from_response

CLIENT_ID = "scr-viewer"
REFRESH_TOKEN = "rt-" + "R" * 40
CODE = "code-" + "C" * 30
VERIFIER = "v" * 64


# ---- a token endpoint that records what it receives and answers as told ----------------------------------


@dataclass
class Seen:
    path: str
    headers: dict
    form: dict


@dataclass
class TokenServer:
    url: str
    seen: list[Seen] = field(default_factory=list)
    answer: object = None  # (status, body) or a callable(form) -> (status, body)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def last_assertion_claims(self) -> dict:
        return decode_part(self.seen[-1].form["client_assertion"], 1)


def decode_part(token: str, index: int) -> dict:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def ok(value: str = "at-1", **extra) -> tuple[int, dict]:  # an access token
    return 200, {"access_token": value, "token_type": "Bearer", "expires_in": 3600, **extra}


@pytest.fixture
def server():
    state = TokenServer(url="")

    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True  # pitfall H4

        def do_POST(self):  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            form = {k: v[0] for k, v in parse_qs(raw).items()}
            with state.lock:
                state.seen.append(Seen(self.path, dict(self.headers), form))
            answer = state.answer(form) if callable(state.answer) else (state.answer or ok())
            status, body = answer
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            if status in (301, 302, 307, 308):
                self.send_header("Location", f"{state.url}/elsewhere")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_port}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def keyset():
    return generate_keyset()


def endpoint(server: TokenServer, keyset, method: str = "private_key_jwt", alg: str = "RS384", secret=None):
    auth = client_authentication(method, CLIENT_ID, server.token_url, keyset, alg, secret)
    return TokenEndpoint(server.token_url, auth)


# ---- SMART's assertion rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_assertion_is_signed_and_follows_smart(keyset, alg):
    before = int(time.time())
    assertion = client_assertion(keyset, CLIENT_ID, "https://ehr.example/token", alg)
    verified = jwt.decode(assertion, signing_key(keyset, alg), algorithms=[alg])
    assert verified.header == {"alg": alg, "kid": signing_key(keyset, alg).kid, "typ": "JWT"}
    claims = verified.claims
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == "https://ehr.example/token"
    assert claims["exp"] - claims["iat"] == ASSERTION_LIFETIME
    assert before <= claims["iat"] <= time.time() and claims["exp"] - time.time() <= 300
    assert len(claims["jti"]) >= 32


def test_assertion_verifies_against_the_published_jwks(keyset):
    from joserfc.jwk import KeySet

    public = KeySet.import_key_set(public_jwks(keyset))
    for alg in ("RS384", "ES384"):
        assert jwt.decode(client_assertion(keyset, CLIENT_ID, "https://t/token", alg), public, algorithms=[alg])


def test_every_assertion_has_a_fresh_jti_even_from_one_auth_object(keyset, server):
    """Pitfall A3: the stock PrivateKeyJWT reuses one jti when given claims; ours never does."""
    token_endpoint = endpoint(server, keyset)
    for _ in range(3):
        token_endpoint.client_credentials("system/*.rs")
    assertions = [s.form["client_assertion"] for s in server.seen]
    assert len({decode_part(a, 1)["jti"] for a in assertions}) == 3
    assert all(decode_part(a, 0)["kid"] == signing_key(keyset, "RS384").kid for a in assertions)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS256", "none"])
def test_only_rs384_and_es384_are_used(keyset, alg):
    with pytest.raises(ValueError, match="RS384 or ES384"):
        SmartPrivateKeyJWT("https://t/token", alg)


def test_misconfigured_client_authentication_is_refused(keyset):
    with pytest.raises(ValueError, match="key set"):
        client_authentication("private_key_jwt", CLIENT_ID, "https://t/token", None, "RS384", None)
    with pytest.raises(ValueError, match="secret"):
        client_authentication("client_secret_basic", CLIENT_ID, "https://t/token", keyset, "RS384", None)
    with pytest.raises(ValueError, match="unknown"):
        client_authentication("client_secret_post", CLIENT_ID, "https://t/token", keyset, "RS384", "s")


def test_a_key_of_the_wrong_type_cannot_sign(keyset):
    from authlib.oauth2.auth import ClientAuth

    with pytest.raises(JoseError):  # an EC key under RS384: joserfc refuses rather than signing anything
        SmartPrivateKeyJWT("https://t/token", "RS384").sign(
            ClientAuth(CLIENT_ID, signing_key(keyset, "ES384")), "https://t/token"
        )


# ---- the three methods on the wire ------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_private_key_jwt_code_exchange(keyset, server, alg):
    body = endpoint(server, keyset, alg=alg).authorization_code(CODE, "https://viewer.example/callback", VERIFIER)
    assert body["access_token"] == "at-1"
    seen = server.seen[-1]
    assert seen.path == "/token"
    assert "Authorization" not in seen.headers
    assert set(seen.form) == {
        "grant_type",
        "code",
        "redirect_uri",
        "code_verifier",
        "client_assertion_type",
        "client_assertion",
    }
    assert seen.form["grant_type"] == "authorization_code" and seen.form["code"] == CODE
    assert seen.form["redirect_uri"] == "https://viewer.example/callback"
    assert seen.form["code_verifier"] == VERIFIER
    assert seen.form["client_assertion_type"] == ASSERTION_TYPE
    verified = jwt.decode(seen.form["client_assertion"], signing_key(keyset, alg), algorithms=[alg])
    assert verified.claims["aud"] == server.token_url and verified.header["alg"] == alg


def test_client_secret_basic_is_form_urlencoded_as_rfc6749_requires(keyset, server):
    """Authlib's stock encoder would send this secret as is, and a decoding server would read another one."""
    secret = "a+b%41c:d é"
    client_id = "scr:viewer"
    auth = client_authentication("client_secret_basic", client_id, server.token_url, None, "RS384", secret)
    TokenEndpoint(server.token_url, auth).authorization_code(CODE, "https://viewer.example/callback", VERIFIER)
    seen = server.seen[-1]
    assert seen.headers["Authorization"].startswith("Basic ")
    assert extract_basic_authorization(seen.headers) == (client_id, secret)  # Authlib's server side decodes
    assert "client_assertion" not in seen.form and "client_secret" not in seen.form


def test_public_client_is_identified_not_authenticated(keyset, server):
    endpoint(server, keyset, method="none").authorization_code(CODE, "https://viewer.example/callback", VERIFIER)
    seen = server.seen[-1]
    assert seen.form["client_id"] == CLIENT_ID and seen.form["code_verifier"] == VERIFIER
    assert "Authorization" not in seen.headers and "client_assertion" not in seen.form


def test_refresh_and_client_credentials_forms(keyset, server):
    token_endpoint = endpoint(server, keyset)
    token_endpoint.refresh(REFRESH_TOKEN)
    refresh = server.seen[-1].form
    assert refresh["grant_type"] == "refresh_token" and refresh["refresh_token"] == REFRESH_TOKEN
    assert "scope" not in refresh  # omitted: the same scopes as before
    token_endpoint.client_credentials("system/Patient.rs system/Observation.rs")
    backend = server.seen[-1].form
    assert backend["grant_type"] == "client_credentials"
    assert backend["scope"] == "system/Patient.rs system/Observation.rs"
    assert server.last_assertion_claims()["aud"] == server.token_url


# ---- HTTP policy -------------------------------------------------------------------------------------------


def test_http_policy_user_agent_and_no_proxies_from_the_environment(keyset, server, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # a proxy that does not exist
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    endpoint(server, keyset).client_credentials("system/*.rs")
    seen = server.seen[-1]
    assert seen.headers["User-Agent"] == USER_AGENT
    assert seen.headers["Accept"] == "application/json"


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_is_not_followed(keyset, server, status):
    server.answer = (status, {})
    with pytest.raises(TokenError, match=str(status)):
        endpoint(server, keyset).authorization_code(CODE, "https://viewer.example/callback", VERIFIER)
    assert [s.path for s in server.seen] == ["/token"]


# ---- failures: TokenError, and never a token in the detail ----------------------------------------------


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        ((400, {"error": "invalid_grant", "error_description": f"bad {REFRESH_TOKEN} {CODE}"}), "400"),
        ((401, {"error": "invalid_client", "access_token": "leaked-at"}), "401"),
        ((401, {}), "401"),
        ((500, b"<html>oops</html>"), "500"),
        ((200, b"not json"), "200"),
        ((200, ["access_token", "leaked-at"]), "200"),
        ((200, {"error": "server_error", "error_description": REFRESH_TOKEN}), "server_error"),
        ((200, {"access_token": "leaked-at", "token_type": "Bearer", "expires_in": "soon"}), "could not be read"),
    ],
)
def test_token_endpoint_failures_are_token_errors_without_secrets(keyset, server, answer, detail):
    server.answer = answer
    token_endpoint = endpoint(server, keyset)
    for call in (
        lambda: token_endpoint.authorization_code(CODE, "https://viewer.example/callback", VERIFIER),
        lambda: token_endpoint.refresh(REFRESH_TOKEN),
    ):
        with pytest.raises(TokenError) as caught:
            call()
        text = f"{caught.value.detail} {caught.value}"
        assert detail in text
        sent_assertion = server.seen[-1].form["client_assertion"]
        for secret in (REFRESH_TOKEN, CODE, VERIFIER, "leaked-at", sent_assertion):
            assert secret not in text


def test_unreachable_token_endpoint(keyset):
    auth = client_authentication("private_key_jwt", CLIENT_ID, "http://127.0.0.1:9/token", keyset, "RS384", None)
    with pytest.raises(TokenError, match="unreachable: ConnectionError"):
        TokenEndpoint("http://127.0.0.1:9/token", auth).refresh(REFRESH_TOKEN)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"token_type": "Bearer", "expires_in": 60}, "no access_token"),
        ({"access_token": "", "token_type": "Bearer"}, "no access_token"),
        ({"access_token": "at", "token_type": "mac"}, "not Bearer"),
        ({"access_token": "at"}, "not Bearer"),
    ],
)
def test_a_token_must_be_a_bearer_access_token(keyset, server, body, message):
    server.answer = (200, body)
    answer = endpoint(server, keyset).authorization_code(CODE, "https://viewer.example/callback", VERIFIER)
    with pytest.raises(TokenError, match=message):
        token_set_from_response(answer, server.token_url, "https://ehr.example/fhir")


def test_token_set_from_an_authlib_answer(keyset, server):
    server.answer = ok("at-9", scope="openid patient/*.rs", refresh_token=REFRESH_TOKEN, patient="p1")
    answer = endpoint(server, keyset).authorization_code(CODE, "https://viewer.example/callback", VERIFIER)
    assert type(answer) is dict and answer["patient"] == "p1"
    tokens = token_set_from_response(answer, server.token_url, "https://ehr.example/fhir")
    assert tokens.access_token == "at-9" and tokens.refresh_token == REFRESH_TOKEN
    assert tokens.scope == "openid patient/*.rs" and 3590 < tokens.expires_at - time.time() <= 3600


# ---- refresh under the store lock, and backend services -------------------------------------------------


def manager(server: TokenServer, keyset) -> TokenManager:
    ehr = EhrRegistration(
        name="EHR", issuer="https://ehr.example/fhir", client_id=CLIENT_ID, client_auth="private_key_jwt"
    )
    settings = ClientSettings(base_url="https://viewer.example", ehrs=(ehr,), record_types=("Patient",))
    return TokenManager(MemoryStore(), settings, keyset)


def expired(server: TokenServer) -> TokenSet:
    return TokenSet(
        access_token="at-old",
        expires_at=time.time() + 5,
        scope="openid patient/*.rs",
        token_endpoint=server.token_url,
        issuer="https://ehr.example/fhir",
        refresh_token=REFRESH_TOKEN,
    )


def test_concurrent_callers_share_one_refresh(keyset, server):
    def slow(form):
        time.sleep(0.2)
        return ok("at-new", refresh_token="rt-rotated")

    server.answer = slow
    tokens = manager(server, keyset)
    tokens.save("ctx", expired(server))
    got = []
    threads = [threading.Thread(target=lambda: got.append(tokens.access_token("ctx"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == ["at-new"] * 8
    assert len(server.seen) == 1
    stored = tokens.load("ctx")
    assert stored.refresh_token == "rt-rotated" and stored.scope == "openid patient/*.rs" and stored.fresh()


def test_refresh_keeps_the_refresh_token_when_none_is_returned(keyset, server):
    tokens = manager(server, keyset)
    tokens.save("ctx", expired(server))
    assert tokens.access_token("ctx") == "at-1"
    assert tokens.load("ctx").refresh_token == REFRESH_TOKEN


def test_refused_refresh_asks_for_a_relaunch_without_the_refresh_token(keyset, server):
    server.answer = (400, {"error": "invalid_grant", "error_description": REFRESH_TOKEN})
    tokens = manager(server, keyset)
    tokens.save("ctx", expired(server))
    with pytest.raises(RelaunchRequired) as caught:
        tokens.access_token("ctx")
    assert "400" in caught.value.detail and "invalid_grant" in caught.value.detail
    assert REFRESH_TOKEN not in f"{caught.value.detail} {caught.value}"


def backend_source(alg: str = "RS384", token_url: str | None = None) -> Source:
    return Source(
        id="acute",
        name="Hospital",
        ods_code="RX9",
        kind="acute",
        base_url="https://hospital.example/fhir",
        auth="backend_services",
        client_id="scr-viewer-backend",
        scopes="system/*.rs",
        signing_alg=alg,
        token_url=token_url,  # explicit: Discovery makes no request for it
    )


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_backend_services_token(keyset, server, alg):
    server.answer = ok("at-backend", expires_in=600)
    backend = BackendTokens(MemoryStore(), Discovery(), keyset)
    assert backend.token_for(backend_source(alg, server.token_url)) == "at-backend"
    form = server.seen[-1].form
    assert form["grant_type"] == "client_credentials" and form["scope"] == "system/*.rs"
    verified = jwt.decode(form["client_assertion"], signing_key(keyset, alg), algorithms=[alg])
    assert verified.claims["iss"] == verified.claims["sub"] == "scr-viewer-backend"
    assert verified.claims["aud"] == server.token_url


def test_backend_services_refuses_a_token_that_is_not_bearer(keyset, server):
    server.answer = (200, {"access_token": "at", "token_type": "mac", "expires_in": 600})
    backend = BackendTokens(MemoryStore(), Discovery(), keyset)
    with pytest.raises(TokenError, match="acute: token_type 'mac' is not Bearer"):
        backend.token_for(backend_source(token_url=server.token_url))
