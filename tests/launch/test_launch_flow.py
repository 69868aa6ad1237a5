"""The viewer's SMART client against the sandbox over real HTTP: every rule, and a refusal for each breach."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from app.record.catalogue import CATALOGUE
from core.nhs_number import format_nhs_number
from tests.conftest import LoopbackCookieJar
from tests.html_forms import form_with
from tests.smart import decode_unverified

MARGARET = "9991000372"  # at gp, hospital, community, council
ARTHUR = "9991003339"  # at gp and hospital


@pytest.fixture
def viewer(sandbox):
    services = sandbox.viewer_app.extensions["launch"]
    yield services
    services.discovery.clear()


def new_browser() -> requests.Session:
    s = requests.Session()
    s.cookies = LoopbackCookieJar()
    return s


def scripted(http, sandbox, user="dr-patel", nhs=MARGARET, **kw) -> requests.Response:
    """The whole launch, following every redirect, as a browser would."""
    return http.get(f"{sandbox.sandbox_url}/ehr/launch", params={"user": user, "patient": nhs, **kw})


def first_hop(http, sandbox, user="dr-patel", nhs=MARGARET) -> str:
    """The viewer's redirect to the authorization endpoint (stop there)."""
    to_viewer = http.get(
        f"{sandbox.sandbox_url}/ehr/launch", params={"user": user, "patient": nhs}, allow_redirects=False
    )
    to_authorize = http.get(to_viewer.headers["Location"], allow_redirects=False)
    assert to_authorize.status_code == 302, to_authorize.text
    return to_authorize.headers["Location"]


def q(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def ctx_id_of(resp: requests.Response) -> str:
    return re.search(r"/r/([^/]+)/", resp.url).group(1)


def launch_tokens(sandbox, kind: str) -> list:
    """Tokens of one kind issued for the most recent launch."""
    return [t for t in sandbox.state.recent_launches()[0].tokens if t.kind == kind]


# ---- the happy paths --------------------------------------------------------------------------------------


def test_ehr_launch_lands_on_the_patient_from_the_launching_ehr(http, sandbox):
    resp = scripted(http, sandbox)
    assert resp.status_code == 200, resp.text
    assert re.match(rf"{sandbox.viewer_url}/r/[A-Za-z0-9_-]{{16,}}/$", resp.url)
    assert '<h1 class="patient-banner__name" id="patient-name">THOMPSON, Margaret Ann (Mrs)</h1>' in resp.text
    assert f'<dd id="nhs-number">{format_nhs_number(MARGARET)}</dd>' in resp.text
    assert "Dr Anita Patel" in resp.text and "Riverside Medical Practice" in resp.text
    # The viewer read the patient from the launching EHR with the user's token, carrying a request id.
    reads = [r for r in sandbox.state.requests if r.url.endswith("/fhir/gp/Patient/gp-pat-thompson")]
    assert reads and reads[-1].client_id == "scr-viewer" and reads[-1].request_id


def test_authorize_request_is_smart_conformant(http, sandbox):
    location = first_hop(http, sandbox)
    assert location.startswith(f"{sandbox.sandbox_url}/auth/authorize?")
    params = q(location)
    assert params["response_type"] == "code"
    assert params["client_id"] == "scr-viewer"
    assert params["redirect_uri"] == f"{sandbox.viewer_url}/callback"
    assert params["aud"] == sandbox.fhir_base("gp")
    assert params["launch"]
    assert params["code_challenge_method"] == "S256"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", params["code_challenge"])
    assert len(params["state"]) >= 40 and len(params["nonce"]) >= 40  # ≥ 122 bits, urlsafe base64
    scopes = params["scope"].split()
    assert {"launch", "openid", "fhirUser", "patient/Patient.r"} <= set(scopes)
    assert "launch/patient" not in scopes
    assert not any("*" in s for s in scopes), "minimum necessary: no wildcard scopes"
    assert {f"patient/{t}.rs" for t in CATALOGUE.fetch_types} <= set(scopes)


def test_redirect_uri_comes_from_config_not_the_host_header(http, sandbox):
    to_viewer = http.get(
        f"{sandbox.sandbox_url}/ehr/launch", params={"user": "dr-patel", "patient": MARGARET}, allow_redirects=False
    )
    resp = http.get(to_viewer.headers["Location"], headers={"Host": "attacker.example"}, allow_redirects=False)
    assert q(resp.headers["Location"])["redirect_uri"] == f"{sandbox.viewer_url}/callback"


def test_standalone_launch_from_the_viewer_start_page(http, sandbox):
    start = http.get(f"{sandbox.viewer_url}/")
    links = re.findall(r'href="(/start\?iss=[^"]+)"', start.text)
    hospital = next(link for link in links if "hospital" in link)
    form = http.get(f"{sandbox.viewer_url}{hospital.replace('&amp;', '&')}")
    assert form.url.startswith(f"{sandbox.sandbox_url}/auth/authorize")
    assert "launch/patient" in q(form.url)["scope"].split() and "launch" not in q(form.url)["scope"].split()
    landed = form_with(form, "decision").submit(http, ("decision", "allow"), user="dr-evans", patient=ARTHUR)
    assert landed.status_code == 200, landed.text
    assert landed.url.startswith(f"{sandbox.viewer_url}/r/")
    assert "Arthur" in landed.text and format_nhs_number(ARTHUR) in landed.text
    # Outside an EHR there is no encounter to establish a relationship: the A&E doctor records a reason.
    assert "/access/reason" in landed.url
    record = form_with(landed, "reason").submit(http, reason="ETREAT")
    assert (
        record.status_code == 200
        and "Dr Rhys Evans" in record.text
        and "Allergies and adverse reactions" in record.text
    )


def test_standalone_refused_for_an_ehr_not_offered_standalone(http, sandbox):
    resp = http.get(f"{sandbox.viewer_url}/start", params={"iss": sandbox.fhir_base("council")}, allow_redirects=False)
    assert resp.status_code == 403


# ---- identity ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "nhs", "name", "ods", "role"),
    [
        ("dr-patel", MARGARET, "Dr Anita Patel", "Y01001", "R8000"),  # fhirUser: absolute Practitioner URL
        ("dr-evans", MARGARET, "Dr Rhys Evans", "RX9", "R8000"),  # fhirUser: PractitionerRole
        ("sw-campbell", MARGARET, "Ms Fiona Campbell", "L90001", "R8003"),  # fhirUser: relative reference
    ],
)
def test_fhir_user_resolves_to_name_organisation_and_roles(http, sandbox, viewer, user, nhs, name, ods, role):
    resp = scripted(http, sandbox, user=user, nhs=nhs)
    assert resp.status_code == 200, resp.text
    ctx = viewer.contexts.load(ctx_id_of(resp))
    identity = ctx.identity
    assert identity.name == name
    assert identity.ods == ods
    assert role in identity.role_codes
    assert "B0370" in identity.activity_codes
    assert identity.sds_user_id


# ---- tokens stay on the server ----------------------------------------------------------------------------


def test_tokens_never_reach_the_browser_and_the_cookie_is_locked_down(http, sandbox, viewer):
    seen = []

    def record(r, *args, **kwargs):
        seen.append((r.url, r.text, dict(r.headers)))

    http.hooks["response"].append(record)
    resp = scripted(http, sandbox)
    assert resp.status_code == 200
    tokens = viewer.tokens.load(ctx_id_of(resp))
    secrets_held = [tokens.access_token, tokens.refresh_token]
    viewer_responses = [(u, b, h) for u, b, h in seen if u.startswith(sandbox.viewer_url)]
    assert len(viewer_responses) >= 3  # /launch, /callback, the record page
    for url, body, headers in viewer_responses:
        for secret in secrets_held:
            assert secret not in body and secret not in str(headers), url
        assert "eyJ" not in body, f"a JWT in the page at {url}"
    set_cookies = [h["Set-Cookie"] for _, _, h in viewer_responses if "scr_sid" in h.get("Set-Cookie", "")]
    assert set_cookies
    for header in set_cookies:
        for attribute in ("HttpOnly", "Secure", "SameSite=None", "Partitioned", "Path=/"):
            assert attribute in header, header
    assert all(len(c.value) < 64 for c in http.cookies if c.name == "scr_sid")  # an opaque id, nothing more
    assert "no-store" in resp.headers["Cache-Control"]


def test_session_id_is_rotated_at_sign_in(http, sandbox):
    location = first_hop(http, sandbox)
    before = http.cookies.get("scr_sid", domain="127.0.0.1")
    resp = http.get(location)
    after = http.cookies.get("scr_sid", domain="127.0.0.1")
    assert resp.status_code == 200 and before and after and before != after
    stale = new_browser()
    stale.cookies.set("scr_sid", before, domain="127.0.0.1", path="/")
    assert stale.get(resp.url).status_code == 401


# ---- refusals ---------------------------------------------------------------------------------------------


class CountingHandler(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        CountingHandler.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(
            b'{"authorization_endpoint": "http://127.0.0.1:1/a", "token_endpoint": "http://127.0.0.1:1/t"}'
        )

    def log_message(self, *args):
        pass


def test_unknown_iss_is_refused_without_any_outbound_request(http, sandbox):
    hostile = ThreadingHTTPServer(("127.0.0.1", 0), CountingHandler)
    threading.Thread(target=hostile.serve_forever, daemon=True).start()
    try:
        iss = f"http://127.0.0.1:{hostile.server_port}/fhir"
        resp = http.get(f"{sandbox.viewer_url}/launch", params={"iss": iss, "launch": "abc"}, allow_redirects=False)
        assert resp.status_code == 403
        assert "not connected to the Shared Care Record" in resp.text
        assert re.search(r'class="correlation-id">[0-9a-f-]{36}<', resp.text)
        assert "Location" not in resp.headers
        time.sleep(0.2)
        assert CountingHandler.hits == []
    finally:
        hostile.shutdown()


@pytest.mark.parametrize("iss_suffix", ["/extra", "?x=1", "/../hospital-x"])
def test_lookalike_issuers_are_refused(http, sandbox, iss_suffix):
    iss = sandbox.fhir_base("gp") + iss_suffix
    resp = http.get(f"{sandbox.viewer_url}/launch", params={"iss": iss, "launch": "abc"}, allow_redirects=False)
    assert resp.status_code == 403


def test_missing_launch_parameter(http, sandbox):
    resp = http.get(f"{sandbox.viewer_url}/launch", params={"iss": sandbox.fhir_base("gp")}, allow_redirects=False)
    assert resp.status_code == 400 and "launch was incomplete" in resp.text


def test_discovery_failure_is_a_clear_page(http, sandbox, viewer):
    viewer.discovery.clear()
    http.post(f"{sandbox.sandbox_url}/admin/faults/gp", json={"mode": "down"}).raise_for_status()
    resp = scripted(http, sandbox)
    assert resp.status_code == 502
    assert "sign-in service did not respond" in resp.text
    assert "Traceback" not in resp.text and "ConnectionError" not in resp.text


def test_discovery_is_cached(http, sandbox, viewer):
    viewer.discovery.clear()
    started = time.time()  # the sandbox's request log is bounded: count by time, not by difference
    assert scripted(http, sandbox).status_code == 200
    assert scripted(http, sandbox, nhs=ARTHUR).status_code == 200
    asked = [
        r
        for r in list(sandbox.state.requests)
        if r.at >= started and r.url.endswith("/fhir/gp/.well-known/smart-configuration")
    ]
    assert len(asked) == 1


def test_user_denied(http, sandbox):
    http.post(f"{sandbox.sandbox_url}/admin/switches", json={"deny_consent": True}).raise_for_status()
    resp = scripted(http, sandbox)
    assert resp.status_code == 403
    assert "access was not allowed" in resp.text


def test_forged_state(http, sandbox):
    first_hop(http, sandbox)
    resp = http.get(f"{sandbox.viewer_url}/callback", params={"state": "forged-" + "x" * 40, "code": "abc"})
    assert resp.status_code == 400 and "expired or was already used" in resp.text


def test_replayed_state(http, sandbox):
    location = first_hop(http, sandbox)
    to_callback = http.get(location, allow_redirects=False).headers["Location"]
    assert http.get(to_callback).status_code == 200
    replay = http.get(to_callback)
    assert replay.status_code == 400 and "expired or was already used" in replay.text


def test_state_from_another_browser_is_refused(http, sandbox):
    location = first_hop(http, sandbox)
    to_callback = http.get(location, allow_redirects=False).headers["Location"]
    other = new_browser()
    resp = other.get(to_callback)
    assert resp.status_code == 400
    assert "expired or was already used" in resp.text


@pytest.mark.parametrize(
    "switch",
    [
        "id_token_wrong_nonce",
        "id_token_wrong_issuer",
        "id_token_wrong_audience",
        "id_token_expired",
        "id_token_alg_none",
        "id_token_hs256",
        "id_token_unknown_key",
    ],
)
def test_bad_id_tokens_are_refused(http, sandbox, switch):
    http.post(f"{sandbox.sandbox_url}/admin/switches", json={switch: True}).raise_for_status()
    resp = scripted(http, sandbox)
    assert resp.status_code == 502, switch
    assert "identity could not be confirmed" in resp.text
    assert "/r/" not in resp.url


def test_id_token_without_kid_is_accepted(http, sandbox):
    http.post(f"{sandbox.sandbox_url}/admin/switches", json={"id_token_no_kid": True}).raise_for_status()
    resp = scripted(http, sandbox)
    assert resp.status_code == 200 and "/r/" in resp.url
    assert "kid" not in launch_tokens(sandbox, "id_token")[0].header


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_id_token_algorithms(http, sandbox, alg):
    reg = sandbox.sandbox_app.extensions["sandbox_auth"].sandbox_clients["scr-viewer"].reg
    original = reg.id_token_alg
    object.__setattr__(reg, "id_token_alg", alg)
    try:
        resp = scripted(http, sandbox)
    finally:
        object.__setattr__(reg, "id_token_alg", original)
    assert resp.status_code == 200
    assert launch_tokens(sandbox, "id_token")[0].header["alg"] == alg


def test_token_endpoint_error(http, sandbox):
    http.post(f"{sandbox.sandbox_url}/admin/switches", json={"invalid_client": True}).raise_for_status()
    resp = scripted(http, sandbox)
    assert resp.status_code == 502 and "did not complete the sign-in" in resp.text


def test_missing_scope_is_refused_politely(http, sandbox):
    http.post(f"{sandbox.sandbox_url}/admin/switches", json={"narrow_scopes": True}).raise_for_status()
    resp = scripted(http, sandbox)
    assert resp.status_code == 403
    assert "did not grant enough access" in resp.text


def test_private_key_jwt_assertions_follow_smart(http, sandbox, viewer):
    from launch.client_auth import client_assertion

    first = client_assertion(viewer.keyset, "scr-viewer", "https://t.example/token", "RS384")
    second = client_assertion(viewer.keyset, "scr-viewer", "https://t.example/token", "ES384")
    for token, alg in ((first, "RS384"), (second, "ES384")):
        header = decode_unverified("." + token)  # the header is the first segment
        claims = decode_unverified(token)
        assert header["alg"] == alg and header["kid"]
        assert claims["iss"] == claims["sub"] == "scr-viewer" and claims["aud"] == "https://t.example/token"
        assert 0 < claims["exp"] - time.time() <= 300
    assert decode_unverified(first)["jti"] != decode_unverified(second)["jti"]


@pytest.mark.parametrize(
    ("client_id", "method"), [("scr-viewer-secret", "client_secret_basic"), ("scr-viewer-public", "none")]
)
def test_other_client_authentication_methods(http, sandbox, viewer, client_id, method):
    settings = viewer.settings
    ehrs = tuple(
        replace(
            e,
            client_id=client_id,
            client_auth=method,
            client_secret="sandbox-only-secret" if method == "client_secret_basic" else None,
        )
        if e.issuer == sandbox.fhir_base("gp")
        else e
        for e in settings.ehrs
    )
    viewer.settings = viewer.tokens.settings = replace(settings, ehrs=ehrs)
    try:
        resp = scripted(http, sandbox)
    finally:
        viewer.settings = viewer.tokens.settings = settings
    assert resp.status_code == 200, resp.text
    assert launch_tokens(sandbox, "access_token")[0].client_id == client_id


# ---- refresh ----------------------------------------------------------------------------------------------


def age_token(viewer, ctx_id: str, seconds_left: int = 5) -> None:
    data = viewer.store.get(f"tok:{ctx_id}")
    data["expires_at"] = time.time() + seconds_left
    viewer.store.set(f"tok:{ctx_id}", data, ttl=3600)


def test_refresh_before_expiry(http, sandbox, viewer):
    """``refresh=1`` re-reads the record, which needs the EHR token (a cached record needs none)."""
    resp = scripted(http, sandbox)
    ctx = ctx_id_of(resp)
    old = viewer.tokens.load(ctx)
    age_token(viewer, ctx)
    assert http.get(resp.url, params={"refresh": "1"}).status_code == 200
    new = viewer.tokens.load(ctx)
    assert new.access_token != old.access_token and new.fresh()
    assert new.refresh_token != old.refresh_token  # the sandbox rotates refresh tokens
    assert len(launch_tokens(sandbox, "access_token")) == 2


def test_concurrent_requests_during_refresh_keep_the_new_token(http, sandbox, viewer):
    resp = scripted(http, sandbox)
    ctx = ctx_id_of(resp)
    age_token(viewer, ctx)
    results, errors = [], []

    def fetch():
        browser = new_browser()
        browser.cookies.update(http.cookies)
        try:
            r = browser.get(resp.url, params={"refresh": "1"})
            results.append((r.status_code, "Margaret" in r.text))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [(200, True)] * 8
    assert len(launch_tokens(sandbox, "access_token")) == 2, "exactly one refresh for eight requests"
    stored = viewer.tokens.load(ctx)
    newest = [t for t in sandbox.state.recent_launches()[0].tokens if t.kind == "access_token"][-1]
    assert decode_unverified(stored.access_token)["jti"] == newest.claims["jti"] and stored.fresh()


def test_refresh_failure_asks_to_relaunch(http, sandbox, viewer):
    resp = scripted(http, sandbox)
    age_token(viewer, ctx_id_of(resp))
    http.post(f"{sandbox.sandbox_url}/admin/switches", json={"invalid_refresh": True}).raise_for_status()
    again = http.get(resp.url, params={"refresh": "1"})
    assert again.status_code == 401
    assert "Open it again from your clinical system" in again.text


def test_server_side_expiry_triggers_one_refresh(http, sandbox, viewer):
    resp = scripted(http, sandbox)
    http.post(f"{sandbox.sandbox_url}/admin/switches", json={"expired_token": True}).raise_for_status()
    again = http.get(resp.url, params={"refresh": "1"})
    assert again.status_code == 200 and "Margaret" in again.text
    assert len(launch_tokens(sandbox, "access_token")) == 2


# ---- patient context switching ------------------------------------------------------------------------------


def test_second_launch_for_another_patient_does_not_leak_into_the_first_tab(http, sandbox):
    first = scripted(http, sandbox, nhs=MARGARET)
    second = scripted(http, sandbox, nhs=ARTHUR)
    assert ctx_id_of(first) != ctx_id_of(second)
    tab_one = http.get(first.url)
    assert "Margaret" in tab_one.text and "Arthur" not in tab_one.text
    tab_two = http.get(second.url)
    assert "Arthur" in tab_two.text and "Margaret" not in tab_two.text


def test_a_context_id_is_useless_in_another_browser(http, sandbox):
    resp = scripted(http, sandbox)
    stranger = new_browser()
    scripted(stranger, sandbox, nhs=ARTHUR)  # signed in, but to a different launch
    stolen = stranger.get(resp.url)
    assert stolen.status_code == 401
    assert "Margaret" not in stolen.text


# ---- embedding and keys -----------------------------------------------------------------------------------


def test_only_registered_ehrs_may_frame_the_viewer(http, sandbox):
    csp = http.get(f"{sandbox.viewer_url}/").headers["Content-Security-Policy"]
    ancestors = re.search(r"frame-ancestors ([^;]+)", csp).group(1).split()
    assert ancestors == [sandbox.sandbox_url]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_viewer_publishes_its_public_jwks(http, sandbox, viewer):
    resp = http.get(f"{sandbox.viewer_url}/.well-known/jwks.json")
    keys = resp.json()["keys"]
    assert {k["alg"] for k in keys} == {"RS384", "ES384"}
    assert {k["kid"] for k in keys} == {k.kid for k in viewer.keyset}
    assert all("d" not in k for k in keys)


# ---- errors: plain words for people, detail for the logs -------------------------------------------------


def test_errors_log_the_detail_under_the_correlation_id(http, sandbox, caplog):
    caplog.set_level("WARNING", logger="app")
    resp = http.get(
        f"{sandbox.viewer_url}/launch",
        params={"iss": "https://evil.example/fhir", "launch": "x"},
        headers={"X-Request-Id": "corr-1234-abcd"},
    )
    assert resp.headers["X-Request-Id"] == "corr-1234-abcd"
    assert 'class="correlation-id">corr-1234-abcd<' in resp.text
    assert "evil.example" not in resp.text  # the page does not echo what was sent
    logged = [r.getMessage() for r in caplog.records if "corr-1234-abcd" in r.getMessage()]
    assert logged and "unknown-issuer" in logged[0] and "evil.example" in logged[0]


def test_source_failure_after_launch_is_a_clear_page(http, sandbox):
    resp = scripted(http, sandbox)
    http.post(f"{sandbox.sandbox_url}/admin/faults/gp", json={"mode": "error_500"}).raise_for_status()
    again = http.get(resp.url, params={"refresh": "1"})
    assert again.status_code == 502
    assert "could not be read from your clinical system" in again.text
    assert "Traceback" not in again.text and "500" not in again.text.split("correlation-id")[0][-200:]


def test_support_contact_on_every_error_page(http, sandbox):
    resp = http.get(f"{sandbox.viewer_url}/r/not-a-context/")
    assert resp.status_code == 401
    assert "scr.servicedesk@example.nhs.uk" in resp.text and "0113 496 0000" in resp.text
    missing = http.get(f"{sandbox.viewer_url}/no/such/page")
    assert missing.status_code == 404 and "scr.servicedesk@example.nhs.uk" in missing.text


def test_unregistered_redirect_uri_never_comes_back(http, sandbox, viewer):
    """If the viewer's redirect URI is not registered, the EHR must stop the flow on its own page."""
    settings = viewer.settings
    viewer.settings = replace(settings, base_url="http://127.0.0.1:9")
    try:
        to_viewer = http.get(
            f"{sandbox.sandbox_url}/ehr/launch", params={"user": "dr-patel", "patient": MARGARET}, allow_redirects=False
        )
        to_authorize = http.get(to_viewer.headers["Location"], allow_redirects=False)
    finally:
        viewer.settings = settings
    assert q(to_authorize.headers["Location"])["redirect_uri"] == "http://127.0.0.1:9/callback"
    refused = http.get(to_authorize.headers["Location"], allow_redirects=False)
    assert refused.status_code == 400 and "Location" not in refused.headers
