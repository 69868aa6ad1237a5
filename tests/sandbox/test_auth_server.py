"""The sandbox SMART authorisation server over real HTTP: EHR launch, PKCE, tokens, backend services."""

from __future__ import annotations

import time

import pytest
from joserfc import jwt
from joserfc.errors import JoseError

from tests.smart import EHR_SCOPES, SandboxClient, client_assertion, decode_unverified, query


@pytest.fixture
def client(sandbox, http) -> SandboxClient:
    return SandboxClient(sandbox, http)


def uk_patient_at(state, org_id: str):
    return next(p for p in state.dataset.sorted_patients() if p.origin == "uk" and org_id in p.ids)


def test_smart_configuration_on_every_fhir_base(client, sandbox):
    for org in sandbox.state.settings.organisations:
        conf = client.http.get(f"{sandbox.fhir_base(org.id)}/.well-known/smart-configuration").json()
        assert conf["authorization_endpoint"] == f"{sandbox.sandbox_url}/auth/authorize"
        assert conf["token_endpoint"] == f"{sandbox.sandbox_url}/auth/token"
        assert conf["code_challenge_methods_supported"] == ["S256"]
        assert {"launch-ehr", "launch-standalone", "permission-v2", "client-confidential-asymmetric"} <= set(
            conf["capabilities"]
        )
        assert "private_key_jwt" in conf["token_endpoint_auth_methods_supported"]


def test_ehr_launch_code_exchange_gives_signed_tokens_with_context(client, sandbox):
    person = uk_patient_at(sandbox.state, "gp")
    result = client.ehr_launch("dr-patel", person.nhs_number)
    assert result.code, result.authorize_location
    assert query(result.authorize_location)["state"] == result.state
    resp = client.exchange(result.code, result.verifier)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Cache-Control"] == "no-store"
    token = resp.json()
    assert token["patient"] == person.ids["gp"]
    assert token["need_patient_banner"] is True
    assert "encounter" in token
    assert set(token["scope"].split()) == set(EHR_SCOPES.split())
    assert token["refresh_token"]

    jwks = client.jwks()
    id_token = jwt.decode(token["id_token"], jwks, algorithms=["RS256"])
    assert id_token.header["kid"]
    claims = id_token.claims
    assert claims["iss"] == f"{sandbox.sandbox_url}/auth"
    assert claims["aud"] == ["scr-viewer"] or claims["aud"] == "scr-viewer"
    assert claims["nonce"] == result.nonce
    assert claims["exp"] > time.time()
    staff = sandbox.state.dataset.staff["dr-patel"]
    assert claims["fhirUser"] == f"{sandbox.fhir_base('gp')}/Practitioner/{staff.practitioner_id}"
    assert claims["nhsid_nrbac_roles"][0]["role_code"].endswith(":R8000")
    assert "B0370" in claims["nhsid_nrbac_roles"][0]["activity_codes"]

    access = jwt.decode(token["access_token"], jwks, algorithms=["RS256"]).claims
    assert access["aud"] == [sandbox.fhir_base("gp")]
    assert access["patient"] == person.ids["gp"]

    # The token reads its patient at the launching organisation...
    assert client.fhir("gp", f"Patient/{person.ids['gp']}", token["access_token"]).status_code == 200
    # ...and nowhere else: it is bound to that FHIR base (aud).
    other = next(o for o in sandbox.state.settings.organisations if o.id != "gp")
    assert client.fhir(other.id, "Patient", token["access_token"]).status_code == 401


def test_fhir_user_resolves_to_practitioner_and_role(client, sandbox):
    person = uk_patient_at(sandbox.state, "gp")
    result = client.ehr_launch("nurse-okafor", person.nhs_number, scope=EHR_SCOPES + " user/*.rs")
    token = client.exchange(result.code, result.verifier).json()
    fhir_user = decode_unverified(token["id_token"])["fhirUser"]
    practitioner = client.http.get(fhir_user, headers={"Authorization": f"Bearer {token['access_token']}"})
    assert practitioner.status_code == 200
    roles = client.fhir(
        "gp", "PractitionerRole", token["access_token"], practitioner=f"Practitioner/{practitioner.json()['id']}"
    ).json()
    codes = [c["code"] for e in roles["entry"] for cc in e["resource"]["code"] for c in cc["coding"]]
    assert codes == ["R8001"]


def test_code_is_single_use(client, sandbox):
    result = client.ehr_launch("dr-patel", uk_patient_at(sandbox.state, "gp").nhs_number)
    assert client.exchange(result.code, result.verifier).status_code == 200
    again = client.exchange(result.code, result.verifier)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_pkce_plain_is_refused(client, sandbox):
    launch = query(
        client.scripted_launch("dr-patel", uk_patient_at(sandbox.state, "gp").nhs_number).headers["Location"]
    )
    result = client.authorize(launch["iss"], launch["launch"], method="plain")
    assert result.code is None
    assert query(result.authorize_location)["error"] == "invalid_request"


def test_pkce_is_required(client, sandbox):
    launch = query(
        client.scripted_launch("dr-patel", uk_patient_at(sandbox.state, "gp").nhs_number).headers["Location"]
    )
    result = client.authorize(launch["iss"], launch["launch"], code_challenge=None, code_challenge_method=None)
    assert result.code is None
    assert query(result.authorize_location)["error"] == "invalid_request"


def test_wrong_code_verifier_is_refused(client, sandbox):
    result = client.ehr_launch("dr-patel", uk_patient_at(sandbox.state, "gp").nhs_number)
    resp = client.exchange(result.code, "x" * 50)
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


def test_unregistered_redirect_uri_gets_a_page_not_a_redirect(client, sandbox):
    launch = query(
        client.scripted_launch("dr-patel", uk_patient_at(sandbox.state, "gp").nhs_number).headers["Location"]
    )
    result = client.authorize(launch["iss"], launch["launch"], redirect_uri="https://attacker.example/cb")
    assert result.authorize_location == ""
    assert result.code is None


def test_launch_must_match_aud(client, sandbox):
    launch = query(
        client.scripted_launch("dr-patel", uk_patient_at(sandbox.state, "gp").nhs_number).headers["Location"]
    )
    result = client.authorize(sandbox.fhir_base("hospital"), launch["launch"])
    assert result.code is None
    assert query(result.authorize_location)["error"] == "invalid_request"


def test_unknown_aud_is_refused(client, sandbox):
    launch = query(
        client.scripted_launch("dr-patel", uk_patient_at(sandbox.state, "gp").nhs_number).headers["Location"]
    )
    result = client.authorize("https://evil.example/fhir", launch["launch"])
    assert query(result.authorize_location)["error"] == "invalid_request"


def test_scopes_are_limited_to_the_registration(client, sandbox):
    result = client.ehr_launch(
        "dr-patel",
        uk_patient_at(sandbox.state, "gp").nhs_number,
        scope="launch openid fhirUser patient/Observation.rs system/*.cruds",
    )
    granted = client.exchange(result.code, result.verifier).json()["scope"].split()
    assert "patient/Observation.rs" in granted
    assert "system/*.cruds" not in granted


def test_refresh_rotates_and_keeps_context(client, sandbox):
    person = uk_patient_at(sandbox.state, "gp")
    result = client.ehr_launch("dr-patel", person.nhs_number)
    first = client.exchange(result.code, result.verifier).json()
    refreshed = client.refresh(first["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    body = refreshed.json()
    assert body["access_token"] != first["access_token"]
    assert body["patient"] == person.ids["gp"]
    assert body["refresh_token"] != first["refresh_token"]
    assert client.refresh(first["refresh_token"]).json()["error"] == "invalid_grant"
    assert client.fhir("gp", f"Patient/{person.ids['gp']}", body["access_token"]).status_code == 200


def test_no_refresh_token_without_online_or_offline_access(client, sandbox):
    result = client.ehr_launch(
        "dr-patel", uk_patient_at(sandbox.state, "gp").nhs_number, scope="launch openid fhirUser patient/*.rs"
    )
    assert "refresh_token" not in client.exchange(result.code, result.verifier).json()


def test_es384_id_token_when_the_client_registration_asks(client, sandbox):
    server = sandbox.sandbox_app.extensions["sandbox_auth"]
    reg = server.sandbox_clients["scr-viewer"].reg
    original = reg.id_token_alg
    object.__setattr__(reg, "id_token_alg", "ES384")
    try:
        result = client.ehr_launch("dr-patel", uk_patient_at(sandbox.state, "gp").nhs_number)
        id_token = client.exchange(result.code, result.verifier).json()["id_token"]
    finally:
        object.__setattr__(reg, "id_token_alg", original)
    decoded = jwt.decode(id_token, client.jwks(), algorithms=["ES384"])
    assert decoded.header["alg"] == "ES384"
    with pytest.raises(JoseError):
        jwt.decode(id_token, client.jwks(), algorithms=["RS256"])


# ---- client authentication -------------------------------------------------------------------------


def test_replayed_client_assertion_is_refused(client, sandbox):
    result = client.ehr_launch("dr-patel", uk_patient_at(sandbox.state, "gp").nhs_number)
    assertion = client_assertion(client.keyset, "scr-viewer", client.token_url, jti="fixed-jti-for-replay")
    assert client.exchange(result.code, result.verifier, client_assertion=assertion).status_code == 200
    result2 = client.ehr_launch("dr-patel", uk_patient_at(sandbox.state, "gp").nhs_number)
    replay = client.exchange(result2.code, result2.verifier, client_assertion=assertion)
    assert replay.status_code == 401
    assert replay.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lifetime": 3600},  # SMART: exp at most five minutes ahead
        {"lifetime": -120},  # expired
        {"aud": "https://elsewhere.example/token"},
    ],
    ids=["exp-too-far", "expired", "wrong-aud"],
)
def test_bad_client_assertions_are_refused(client, kwargs):
    resp = client.backend_token(**kwargs)
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"


def test_assertion_signed_by_another_key_is_refused(client):
    from launch.keys import generate_keyset

    other = generate_keyset()
    resp = client.http.post(
        client.token_url,
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": client_assertion(other, "scr-viewer-backend", client.token_url),
        },
    )
    assert resp.status_code == 401


def test_hs256_assertion_is_refused(client):
    from joserfc.jwk import OctKey

    key = OctKey.generate_key(256)
    now = int(time.time())
    forged = jwt.encode(
        {"alg": "HS256"},
        {
            "iss": "scr-viewer-backend",
            "sub": "scr-viewer-backend",
            "aud": client.token_url,
            "exp": now + 60,
            "jti": "x1",
        },
        key,
        algorithms=["HS256"],
    )
    resp = client.http.post(
        client.token_url,
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": forged,
        },
    )
    assert resp.status_code == 401


def test_backend_services_token_reads_any_patient_at_every_organisation(client, sandbox):
    resp = client.backend_token()
    assert resp.status_code == 200, resp.text
    token = resp.json()
    assert "refresh_token" not in token
    claims = jwt.decode(token["access_token"], client.jwks(), algorithms=["RS256"]).claims
    assert claims["sub"] == "scr-viewer-backend"
    for person in sandbox.state.dataset.sorted_patients()[:3]:
        for org_id, patient_id in person.ids.items():
            found = client.fhir(
                org_id,
                "Patient",
                token["access_token"],
                identifier=f"https://fhir.nhs.uk/Id/nhs-number|{person.nhs_number}",
            ).json()
            assert [e["resource"]["id"] for e in found["entry"] if e["search"]["mode"] == "match"] == [patient_id]


def test_backend_client_cannot_use_authorization_code(client, sandbox):
    result = client.authorize(sandbox.fhir_base("gp"), None, client_id="scr-viewer-backend")
    assert result.code is None


def test_es384_client_assertion_is_accepted(client):
    assert client.backend_token(alg="ES384").status_code == 200


# ---- simulated errors ------------------------------------------------------------------------------


def test_switch_deny_consent(client, sandbox, http):
    http.post(f"{sandbox.sandbox_url}/admin/switches", json={"deny_consent": True}).raise_for_status()
    launch = query(
        client.scripted_launch("dr-patel", uk_patient_at(sandbox.state, "gp").nhs_number).headers["Location"]
    )
    result = client.authorize(launch["iss"], launch["launch"])
    assert query(result.authorize_location)["error"] == "access_denied"
    assert query(result.authorize_location)["state"] == result.state


def test_switch_invalid_client(client, sandbox, http):
    http.post(f"{sandbox.sandbox_url}/admin/switches", json={"invalid_client": True}).raise_for_status()
    resp = client.backend_token()
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"


def test_switch_expired_token(client, sandbox, http):
    token = client.backend_token().json()["access_token"]
    assert client.fhir("gp", "Patient", token, _count=1).status_code == 200
    http.post(f"{sandbox.sandbox_url}/admin/switches", json={"expired_token": True}).raise_for_status()
    resp = client.fhir("gp", "Patient", token, _count=1)
    assert resp.status_code == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert "expired" in resp.headers["WWW-Authenticate"]


def test_switch_invalid_refresh(client, sandbox, http):
    result = client.ehr_launch("dr-patel", uk_patient_at(sandbox.state, "gp").nhs_number)
    refresh_token = client.exchange(result.code, result.verifier).json()["refresh_token"]
    http.post(f"{sandbox.sandbox_url}/admin/switches", json={"invalid_refresh": True}).raise_for_status()
    assert client.refresh(refresh_token).json()["error"] == "invalid_grant"


def test_unknown_switch_is_a_clear_error(sandbox, http):
    resp = http.post(f"{sandbox.sandbox_url}/admin/switches", json={"melt_down": True})
    assert resp.status_code == 400
    assert "unknown switch" in resp.json()["error"]
