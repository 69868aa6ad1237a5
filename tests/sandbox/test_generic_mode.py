"""Generic SMART mode and discovery variants, per organisation, over real HTTP.

``smart_mode = "generic"`` makes the sandbox behave, for launches at that organisation, as common deployed
SMART servers do (standard id_token claims, relative fhirUser, no kid, PKCE optional, reusable codes, a
refresh id_token without aud, Host-derived URLs…); ``discovery`` picks what its FHIR base advertises.
NHS mode, the default, must be unchanged.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

import sandbox as sandbox_package
from app.config import ConfigError, load_config
from core.identifiers import ACTIVITY_CODE_SYSTEM, JOB_ROLE_SYSTEM, ODS_SYSTEM, SDS_USER_SYSTEM
from sandbox import create_sandbox_app
from tests.html_forms import form_with
from tests.smart import ASSERTION_TYPE, EHR_SCOPES, SandboxClient, client_assertion, decode_unverified, query

CONFIG_FILE = Path(sandbox_package.__file__).resolve().parent / "config.toml"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
GENERIC_CLAIMS = {"iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser", "profile"}
CIS2_CLAIMS = {"nhsid_useruid", "nhsid_nrbac_roles", "selected_roleid"}
STANDALONE_SCOPES = "launch/patient openid fhirUser profile online_access patient/*.rs"
CAPABILITY_A = "dr-haddad"  # PractitionerRole.code carries R8000 + B0360/B0370 (the gp)
CAPABILITY_B = "dr-brennan"  # no PractitionerRole in generic mode (the gp)


@pytest.fixture
def client(sandbox, http) -> SandboxClient:
    return SandboxClient(sandbox, http)


def set_smart(http, sandbox, org: str, **profile) -> dict:
    resp = http.post(f"{sandbox.sandbox_url}/admin/smart/{org}", json=profile)
    assert resp.status_code == 200, resp.text
    return resp.json()


def localhost(url: str) -> str:
    """The same sandbox reached under another host name (the fixtures bind 127.0.0.1)."""
    return url.replace("//127.0.0.1:", "//localhost:", 1)


def gp_patient(state):
    return next(p for p in state.dataset.sorted_patients() if p.origin == "uk" and "gp" in p.ids)


def generic_jwks(http, url: str) -> KeySet:
    return KeySet.import_key_set(http.get(url).json())


def csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


# ---- configuration -----------------------------------------------------------------------------------------


def test_every_organisation_defaults_to_nhs_mode_and_full_discovery(sandbox, http):
    for org in sandbox.state.settings.organisations:
        assert (org.smart.smart_mode, org.smart.discovery) == ("nhs", "full")
    assert http.get(f"{sandbox.sandbox_url}/admin/smart").json() == {
        o.id: {"smart_mode": "nhs", "discovery": "full"} for o in sandbox.state.settings.organisations
    }


def config_with_gp(tmp_path, lines: str):
    """The sandbox's config file with the gp organisation's smart_mode/discovery lines replaced by ``lines``."""
    from tests.conftest import test_env

    marker = '[[sandbox.organisation]]\nid = "gp"\n'
    head, sep, tail = CONFIG_FILE.read_text().partition(marker)
    assert sep, "the gp organisation is the first [[sandbox.organisation]]"
    tail = tail.replace('smart_mode = "nhs"\ndiscovery = "full"\n', "", 1)
    (tmp_path / "config.toml").write_text(head + marker + lines + tail)
    return load_config(tmp_path / "config.toml", env=test_env(tmp_path, 1, 2))


def test_smart_mode_and_discovery_come_from_the_config_file_and_reset_goes_back_to_them(sandbox, tmp_path):
    config = config_with_gp(tmp_path, 'smart_mode = "generic"\ndiscovery = "capability_statement_only"\n')
    app = create_sandbox_app(config, dataset=sandbox.state.dataset)
    state = app.extensions["sandbox_state"]
    assert state.smart["gp"].smart_mode == "generic" and state.smart["gp"].discovery == "capability_statement_only"
    assert state.smart["hospital"].smart_mode == "nhs"
    client = app.test_client()
    assert client.get("/fhir/gp/.well-known/smart-configuration").status_code == 404
    assert client.get("/fhir/hospital/.well-known/smart-configuration").status_code == 200
    state.set_smart("gp", smart_mode="nhs", discovery="full")
    assert client.get("/fhir/gp/.well-known/smart-configuration").status_code == 200
    state.reset()
    assert client.get("/fhir/gp/.well-known/smart-configuration").status_code == 404


@pytest.mark.parametrize(
    ("lines", "key"),
    [
        ('smart_mode = "epic"\n', "smart_mode"),
        ('discovery = "none"\n', "discovery"),
        ("smart_mode = 1\n", "smart_mode"),
    ],
)
def test_wrong_values_are_config_errors_naming_the_key(tmp_path, lines, key):
    config = config_with_gp(tmp_path, lines)
    with pytest.raises(ConfigError, match=key):
        create_sandbox_app(config)


# ---- switching at run time ---------------------------------------------------------------------------------


def test_admin_endpoint_switches_and_reset_restores(sandbox, http):
    url = f"{sandbox.sandbox_url}/admin/smart"
    assert set_smart(http, sandbox, "gp", smart_mode="generic") == {"smart_mode": "generic", "discovery": "full"}
    assert set_smart(http, sandbox, "gp", discovery="token_endpoint_only") == {
        "smart_mode": "generic",
        "discovery": "token_endpoint_only",
    }
    assert http.get(url).json()["gp"] == {"smart_mode": "generic", "discovery": "token_endpoint_only"}
    assert http.get(url).json()["hospital"] == {"smart_mode": "nhs", "discovery": "full"}
    assert http.post(f"{url}/gp", json={"smart_mode": "epic"}).status_code == 400
    assert "discovery must be" in http.post(f"{url}/gp", json={"discovery": "x"}).json()["error"]
    assert http.post(f"{url}/gp", json={"mode": "generic"}).status_code == 400  # unknown key
    assert http.post(f"{url}/nowhere", json={"smart_mode": "generic"}).status_code == 404
    http.post(f"{sandbox.sandbox_url}/admin/reset").raise_for_status()
    assert http.get(url).json()["gp"] == {"smart_mode": "nhs", "discovery": "full"}


def test_inspector_form_switches_and_shows_which_user_is_which(sandbox, http):
    page = http.get(f"{sandbox.sandbox_url}/inspector").text
    assert 'id="smart"' in page and 'name="smart_mode"' in page and 'name="discovery"' in page
    for user in (CAPABILITY_A, CAPABILITY_B, "dr-patel"):
        assert f"<code>{user}</code>" in page
    assert "Generic-mode case (a)" in page and "Generic-mode case (b)" in page
    resp = http.post(
        f"{sandbox.sandbox_url}/admin/smart/hospital",
        data={"csrf": csrf(page), "smart_mode": "generic", "discovery": "capability_statement_only"},
        allow_redirects=False,
    )
    assert resp.status_code == 302
    assert sandbox.state.smart["hospital"].smart_mode == "generic"
    assert sandbox.state.smart["hospital"].discovery == "capability_statement_only"
    assert 'value="generic" selected' in http.get(f"{sandbox.sandbox_url}/inspector").text
    no_token = http.post(f"{sandbox.sandbox_url}/admin/smart/hospital", data={"smart_mode": "nhs"})
    assert no_token.status_code == 400


def test_sign_in_page_says_which_users_show_the_generic_cases(sandbox, http):
    page = http.get(f"{sandbox.sandbox_url}/").text
    assert f'value="{CAPABILITY_A}"' in page and f'value="{CAPABILITY_B}"' in page
    assert "Generic-mode case (a)" in page and "Generic-mode case (b)" in page


# ---- discovery ---------------------------------------------------------------------------------------------


def test_nhs_discovery_is_unchanged_and_uses_the_configured_base_whatever_the_host(sandbox, http):
    conf = http.get(f"{localhost(sandbox.fhir_base('gp'))}/.well-known/smart-configuration").json()
    assert conf["issuer"] == f"{sandbox.sandbox_url}/auth"
    assert conf["authorization_endpoint"] == f"{sandbox.sandbox_url}/auth/authorize"
    assert conf["token_endpoint"] == f"{sandbox.sandbox_url}/auth/token"
    assert conf["jwks_uri"] == f"{sandbox.sandbox_url}/auth/jwks"
    assert conf["token_endpoint_auth_methods_supported"] == ["private_key_jwt", "client_secret_basic", "none"]
    openid = http.get(f"{localhost(sandbox.sandbox_url)}/auth/.well-known/openid-configuration").json()
    assert openid["issuer"] == f"{sandbox.sandbox_url}/auth"


def test_generic_discovery_is_built_from_the_host_header(sandbox, http):
    set_smart(http, sandbox, "gp", smart_mode="generic")
    base = localhost(sandbox.sandbox_url)
    assert base.startswith("http://localhost:")
    conf = http.get(f"{base}/fhir/gp/.well-known/smart-configuration").json()
    assert conf["issuer"] == f"{base}/auth"
    for key in ("jwks_uri", "authorization_endpoint", "token_endpoint"):
        assert conf[key].startswith(f"{base}/auth/"), key
    assert "client_secret_post" in conf["token_endpoint_auth_methods_supported"]
    # Reached as 127.0.0.1, the same document says 127.0.0.1; the hospital (NHS) is not affected.
    assert http.get(f"{sandbox.fhir_base('gp')}/.well-known/smart-configuration").json()["issuer"] == (
        f"{sandbox.sandbox_url}/auth"
    )
    nhs = http.get(f"{base}/fhir/hospital/.well-known/smart-configuration").json()
    assert nhs["issuer"] == f"{sandbox.sandbox_url}/auth" and nhs["jwks_uri"] == f"{sandbox.sandbox_url}/auth/jwks"
    openid = http.get(f"{base}/auth/.well-known/openid-configuration").json()
    assert openid["issuer"] == f"{base}/auth"
    assert all(openid[k].startswith(f"{base}/") for k in ("jwks_uri", "authorization_endpoint", "token_endpoint"))
    # The JWKS for that issuer has exactly one key.
    keys = http.get(conf["jwks_uri"]).json()["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "RSA" and "d" not in keys[0]
    assert len(http.get(f"{sandbox.sandbox_url}/auth/jwks").json()["keys"]) == 3  # NHS JWKS unchanged


@pytest.mark.parametrize("mode", ["nhs", "generic"])
def test_token_endpoint_only_discovery_is_backend_services_only(sandbox, http, mode):
    set_smart(http, sandbox, "council", smart_mode=mode, discovery="token_endpoint_only")
    conf = http.get(f"{sandbox.fhir_base('council')}/.well-known/smart-configuration").json()
    assert conf["token_endpoint"] == f"{sandbox.sandbox_url}/auth/token"
    assert "authorization_endpoint" not in conf
    assert conf["grant_types_supported"] == ["client_credentials"]
    assert "private_key_jwt" in conf["token_endpoint_auth_methods_supported"]
    assert conf["jwks_uri"] and conf["token_endpoint_auth_signing_alg_values_supported"]
    extension = _oauth_uris(http, sandbox.fhir_base("council"))
    assert extension == {"token": f"{sandbox.sandbox_url}/auth/token"}
    # Other organisations keep the full document.
    assert "authorization_endpoint" in http.get(f"{sandbox.fhir_base('gp')}/.well-known/smart-configuration").json()


def _oauth_uris(http, fhir_base: str) -> dict[str, str]:
    metadata = http.get(f"{fhir_base}/metadata").json()
    security = metadata["rest"][0]["security"]
    codes = [c["code"] for s in security["service"] for c in s["coding"] if c["system"] == SECURITY_SERVICE]
    assert codes == ["SMART-on-FHIR"]
    ext = next(e for e in security["extension"] if e["url"] == OAUTH_URIS)
    return {e["url"]: e["valueUri"] for e in ext["extension"]}


@pytest.mark.parametrize("mode", ["nhs", "generic"])
def test_capability_statement_only_discovery(sandbox, http, mode):
    set_smart(http, sandbox, "hospital", smart_mode=mode, discovery="capability_statement_only")
    resp = http.get(f"{sandbox.fhir_base('hospital')}/.well-known/smart-configuration")
    assert resp.status_code == 404
    assert _oauth_uris(http, sandbox.fhir_base("hospital")) == {
        "authorize": f"{sandbox.sandbox_url}/auth/authorize",
        "token": f"{sandbox.sandbox_url}/auth/token",
    }


@pytest.mark.parametrize("mode", ["nhs", "generic"])
def test_metadata_carries_the_oauth_uris_in_every_mode(sandbox, http, mode):
    for org in sandbox.state.settings.organisations:
        set_smart(http, sandbox, org.id, smart_mode=mode)
        assert _oauth_uris(http, sandbox.fhir_base(org.id)) == {
            "authorize": f"{sandbox.sandbox_url}/auth/authorize",
            "token": f"{sandbox.sandbox_url}/auth/token",
        }
    if mode == "generic":  # generic: from the Host header, like the well-known document
        base = localhost(sandbox.sandbox_url)
        assert _oauth_uris(http, f"{base}/fhir/gp")["token"] == f"{base}/auth/token"


# ---- generic-mode launches: id_token, fhirUser, JWKS ---------------------------------------------------------


def _generic_launch(client, sandbox, user: str = CAPABILITY_A, **kwargs):
    set_smart(client.http, sandbox, "gp", smart_mode="generic")
    result = client.ehr_launch(user, gp_patient(sandbox.state).nhs_number, **kwargs)
    assert result.code, result.authorize_location
    return result


def test_generic_id_token_has_standard_claims_only_no_kid_and_verifies_with_the_one_key(client, sandbox):
    result = _generic_launch(client, sandbox)
    resp = client.exchange(result.code, result.verifier)
    assert resp.status_code == 200, resp.text
    token = resp.json()
    conf = client.http.get(f"{sandbox.fhir_base('gp')}/.well-known/smart-configuration").json()
    keys = generic_jwks(client.http, conf["jwks_uri"])
    decoded = jwt.decode(token["id_token"], keys, algorithms=["RS256"])
    assert "kid" not in decoded.header and decoded.header["alg"] == "RS256"
    claims = decoded.claims
    assert set(claims) == GENERIC_CLAIMS
    assert not CIS2_CLAIMS & set(claims) and "name" not in claims
    assert claims["iss"] == conf["issuer"] == f"{sandbox.sandbox_url}/auth"
    assert claims["sub"] == CAPABILITY_A
    assert claims["aud"] == "scr-viewer"
    assert claims["nonce"] == result.nonce
    assert claims["fhirUser"] == claims["profile"] == "Practitioner/gp-prac-haddad"
    assert claims["exp"] > time.time() >= claims["iat"] - 5
    # The access token still reads the launch patient at the gp.
    patient = gp_patient(sandbox.state)
    assert token["patient"] == patient.ids["gp"]
    assert client.fhir("gp", f"Patient/{patient.ids['gp']}", token["access_token"]).status_code == 200


def test_generic_fhir_user_is_relative_practitioner_even_for_a_practitioner_role_user(client, sandbox, http):
    # dr-evans's fhirUser is a PractitionerRole in NHS mode; never in generic mode.
    set_smart(http, sandbox, "hospital", smart_mode="generic")
    person = next(p for p in sandbox.state.dataset.sorted_patients() if "hospital" in p.ids)
    result = client.ehr_launch("dr-evans", person.nhs_number)
    claims = decode_unverified(client.exchange(result.code, result.verifier).json()["id_token"])
    assert claims["fhirUser"] == "Practitioner/hospital-prac-evans"


def test_generic_issuer_follows_the_host_of_the_token_request(client, sandbox, http):
    """Reached as localhost throughout (discovery, authorize, token), every URL and the iss say localhost."""
    set_smart(http, sandbox, "gp", smart_mode="generic")
    base = localhost(sandbox.sandbox_url)
    fhir_base = f"{base}/fhir/gp"
    conf = http.get(f"{fhir_base}/.well-known/smart-configuration").json()
    launch = query(client.scripted_launch(CAPABILITY_A, gp_patient(sandbox.state).nhs_number).headers["Location"])
    params = {
        "response_type": "code",
        "client_id": "scr-viewer",
        "redirect_uri": client.redirect_uri,
        "scope": EHR_SCOPES,
        "state": "s1",
        "nonce": "n-localhost",
        "aud": fhir_base,  # the Host-derived base is accepted for a generic organisation
        "launch": launch["launch"],
    }
    resp = http.get(conf["authorization_endpoint"], params=params, allow_redirects=False)
    code = query(resp.headers["Location"])["code"]
    token = http.post(
        conf["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": client.redirect_uri,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(client.keyset, "scr-viewer", conf["token_endpoint"]),
        },
    )
    assert token.status_code == 200, token.text
    claims = jwt.decode(token.json()["id_token"], generic_jwks(http, conf["jwks_uri"]), algorithms=["RS256"]).claims
    assert claims["iss"] == conf["issuer"] == f"{base}/auth"
    # The access token works at the FHIR server.
    access = token.json()["access_token"]
    patient = http.get(f"{fhir_base}/Patient/{token.json()['patient']}", headers={"Authorization": f"Bearer {access}"})
    assert patient.status_code == 200


def test_generic_authorization_code_is_reusable_within_its_lifetime(client, sandbox):
    result = _generic_launch(client, sandbox)
    first = client.exchange(result.code, result.verifier)
    second = client.exchange(result.code, result.verifier)
    assert first.status_code == 200 and second.status_code == 200, second.text
    assert first.json()["access_token"] != second.json()["access_token"]


def test_nhs_authorization_code_stays_single_use_while_another_organisation_is_generic(client, sandbox, http):
    set_smart(http, sandbox, "hospital", smart_mode="generic")
    result = client.ehr_launch("dr-patel", gp_patient(sandbox.state).nhs_number)
    assert client.exchange(result.code, result.verifier).status_code == 200
    assert client.exchange(result.code, result.verifier).json()["error"] == "invalid_grant"


def test_generic_pkce_is_optional_but_verified_when_sent(client, sandbox, http):
    set_smart(http, sandbox, "gp", smart_mode="generic")
    nhs = gp_patient(sandbox.state).nhs_number
    launch = query(client.scripted_launch(CAPABILITY_A, nhs).headers["Location"])
    bare = client.authorize(launch["iss"], launch["launch"], code_challenge=None, code_challenge_method=None)
    assert bare.code, bare.authorize_location
    resp = client.exchange(bare.code, None)  # no code_verifier
    assert resp.status_code == 200, resp.text
    # With a challenge, a wrong verifier is refused and the right one accepted.
    launch = query(client.scripted_launch(CAPABILITY_A, nhs).headers["Location"])
    with_pkce = client.authorize(launch["iss"], launch["launch"])
    assert client.exchange(with_pkce.code, "x" * 50).json()["error"] == "invalid_grant"
    assert client.exchange(with_pkce.code, with_pkce.verifier).status_code == 200
    # NHS mode still requires it.
    other = next(p for p in sandbox.state.dataset.sorted_patients() if "hospital" in p.ids)
    launch = query(client.scripted_launch("dr-evans", other.nhs_number).headers["Location"])
    refused = client.authorize(launch["iss"], launch["launch"], code_challenge=None, code_challenge_method=None)
    assert refused.code is None and query(refused.authorize_location)["error"] == "invalid_request"


def test_generic_refresh_returns_a_new_id_token_without_aud(client, sandbox):
    result = _generic_launch(client, sandbox)
    first = client.exchange(result.code, result.verifier).json()
    refreshed = client.refresh(first["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    body = refreshed.json()
    conf = client.http.get(f"{sandbox.fhir_base('gp')}/.well-known/smart-configuration").json()
    decoded = jwt.decode(body["id_token"], generic_jwks(client.http, conf["jwks_uri"]), algorithms=["RS256"])
    assert "kid" not in decoded.header
    assert "aud" not in decoded.claims
    assert decoded.claims["sub"] == CAPABILITY_A and decoded.claims["fhirUser"] == "Practitioner/gp-prac-haddad"
    assert decoded.claims["iss"] == conf["issuer"]
    assert set(decoded.claims) <= GENERIC_CLAIMS - {"aud"}
    assert body["patient"] == first["patient"]


def test_nhs_refresh_is_unchanged_no_id_token(client, sandbox):
    result = client.ehr_launch("dr-patel", gp_patient(sandbox.state).nhs_number)
    first = client.exchange(result.code, result.verifier).json()
    assert "id_token" not in client.refresh(first["refresh_token"]).json()


@pytest.mark.parametrize("mode", ["nhs", "generic"])
def test_client_secret_post_is_refused_with_401(sandbox, http, mode):
    set_smart(http, sandbox, "gp", smart_mode=mode)
    conf = http.get(f"{sandbox.fhir_base('gp')}/.well-known/smart-configuration").json()
    assert ("client_secret_post" in conf["token_endpoint_auth_methods_supported"]) is (mode == "generic")
    resp = http.post(
        conf["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": "any",
            "redirect_uri": f"{sandbox.viewer_url}/callback",
            "client_id": "scr-viewer-secret",
            "client_secret": "sandbox-only-secret",
        },
    )
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"


def test_nhs_mode_is_unchanged_for_other_organisations(client, sandbox, http):
    set_smart(http, sandbox, "gp", smart_mode="generic")
    person = next(p for p in sandbox.state.dataset.sorted_patients() if "hospital" in p.ids)
    result = client.ehr_launch("dr-evans", person.nhs_number)
    token = client.exchange(result.code, result.verifier).json()
    decoded = jwt.decode(token["id_token"], client.jwks(), algorithms=["RS256"])
    assert decoded.header["kid"]
    claims = decoded.claims
    assert set(claims) >= CIS2_CLAIMS and claims["name"] == "Dr Rhys Evans"
    assert claims["iss"] == f"{sandbox.sandbox_url}/auth"
    assert claims["fhirUser"] == f"{sandbox.fhir_base('hospital')}/PractitionerRole/hospital-role-evans"


def test_new_users_have_cis2_claims_in_nhs_mode(client, sandbox):
    for user in (CAPABILITY_A, CAPABILITY_B):
        result = client.ehr_launch(user, gp_patient(sandbox.state).nhs_number)
        claims = decode_unverified(client.exchange(result.code, result.verifier).json()["id_token"])
        role = claims["nhsid_nrbac_roles"][0]
        assert role["role_code"].endswith(":R8000") and {"B0360", "B0370"} <= set(role["activity_codes"])
        assert role["org_code"] == "Y01001" and claims["nhsid_useruid"].startswith("5550000000")


# ---- generic-mode staff records: Practitioner and PractitionerRole --------------------------------------------


def _user_token(client, user: str) -> str:
    result = client.ehr_launch(user, gp_patient(client.running.state).nhs_number, scope=EHR_SCOPES + " user/*.rs")
    return client.exchange(result.code, result.verifier).json()["access_token"]


def _systems(resource: dict) -> set[str]:
    return {i["system"] for i in resource.get("identifier", [])}


def test_generic_practitioners_carry_no_sds_or_ods_identifiers(client, sandbox, http):
    backend = client.backend_token().json()["access_token"]
    nhs = client.fhir("gp", "Practitioner/gp-prac-patel", backend).json()
    assert SDS_USER_SYSTEM in _systems(nhs)
    set_smart(http, sandbox, "gp", smart_mode="generic")
    token = _user_token(client, CAPABILITY_A)
    for pid in ("gp-prac-patel", "gp-prac-haddad", "gp-prac-brennan"):
        practitioner = client.fhir("gp", f"Practitioner/{pid}", token).json()
        assert not {SDS_USER_SYSTEM, ODS_SYSTEM} & _systems(practitioner), pid
        assert practitioner["name"][0]["family"]
    listed = client.fhir("gp", "Practitioner", backend, _count=500).json()
    assert all(not {SDS_USER_SYSTEM, ODS_SYSTEM} & _systems(e["resource"]) for e in listed["entry"])
    by_sds = client.fhir("gp", "Practitioner", backend, identifier=f"{SDS_USER_SYSTEM}|555000000009").json()
    assert by_sds["total"] == 0
    # The store itself is untouched: NHS mode again shows the SDS user id.
    set_smart(http, sandbox, "gp", smart_mode="nhs")
    assert SDS_USER_SYSTEM in _systems(client.fhir("gp", "Practitioner/gp-prac-haddad", backend).json())


@pytest.mark.parametrize("mode", ["nhs", "generic"])
def test_user_a_practitioner_role_carries_national_rbac_codes(client, sandbox, http, mode):
    set_smart(http, sandbox, "gp", smart_mode=mode)
    token = _user_token(client, CAPABILITY_A)
    bundle = client.fhir("gp", "PractitionerRole", token, practitioner="Practitioner/gp-prac-haddad").json()
    assert bundle["total"] == 1
    codings = [c for cc in bundle["entry"][0]["resource"]["code"] for c in cc["coding"]]
    assert {(c["system"], c["code"]) for c in codings} == {
        (JOB_ROLE_SYSTEM, "R8000"),
        (ACTIVITY_CODE_SYSTEM, "B0360"),
        (ACTIVITY_CODE_SYSTEM, "B0370"),
    }


def test_user_b_has_no_practitioner_role_in_generic_mode_only(client, sandbox, http):
    token = _user_token(client, CAPABILITY_B)
    assert (
        client.fhir("gp", "PractitionerRole", token, practitioner="Practitioner/gp-prac-brennan").json()["total"] == 1
    )
    set_smart(http, sandbox, "gp", smart_mode="generic")
    token = _user_token(client, CAPABILITY_B)
    claims_user = client.fhir("gp", "Practitioner/gp-prac-brennan", token)
    assert claims_user.status_code == 200
    assert (
        client.fhir("gp", "PractitionerRole", token, practitioner="Practitioner/gp-prac-brennan").json()["total"] == 0
    )
    assert client.fhir("gp", "PractitionerRole/gp-role-brennan", token).status_code == 404
    everyone = client.fhir("gp", "PractitionerRole", token, _count=500).json()
    ids = {e["resource"]["id"] for e in everyone["entry"]}
    assert "gp-role-brennan" not in ids and {"gp-role-haddad", "gp-role-patel"} <= ids


# ---- generic-mode launches: standalone and from the EHR toolbar ---------------------------------------------


def test_generic_standalone_launch_with_patient_picker(client, sandbox, http):
    set_smart(http, sandbox, "gp", smart_mode="generic")
    person = gp_patient(sandbox.state)
    result = client.authorize(sandbox.fhir_base("gp"), None, scope=STANDALONE_SCOPES)
    assert result.code is None
    page = http.get(result.request_url)
    assert page.status_code == 200 and 'name="patient"' in page.text
    form = form_with(page, "decision")
    resp = form.submit(http, ("decision", "allow"), user=CAPABILITY_B, patient=person.nhs_number, allow_redirects=False)
    assert resp.status_code == 302, resp.text
    token = client.exchange(query(resp.headers["Location"])["code"], result.verifier).json()
    assert token["patient"] == person.ids["gp"]
    claims = decode_unverified(token["id_token"])
    assert set(claims) == GENERIC_CLAIMS and claims["fhirUser"] == "Practitioner/gp-prac-brennan"
    assert client.fhir("gp", f"Patient/{person.ids['gp']}", token["access_token"]).status_code == 200


def test_generic_standalone_launch_without_pkce(client, sandbox, http):
    set_smart(http, sandbox, "gp", smart_mode="generic")
    person = gp_patient(sandbox.state)
    result = client.authorize(
        sandbox.fhir_base("gp"), None, scope=STANDALONE_SCOPES, code_challenge=None, code_challenge_method=None
    )
    form = form_with(http.get(result.request_url), "decision")
    assert "code_challenge" not in form.names()
    resp = form.submit(http, ("decision", "allow"), user=CAPABILITY_A, patient=person.nhs_number, allow_redirects=False)
    token = client.exchange(query(resp.headers["Location"])["code"], None)
    assert token.status_code == 200, token.text


def test_generic_toolbar_launch(client, sandbox, http):
    set_smart(http, sandbox, "gp", smart_mode="generic")
    page = http.get(f"{sandbox.sandbox_url}/").text
    http.post(f"{sandbox.sandbox_url}/ehr/sign-in", data={"csrf": csrf(page), "user": CAPABILITY_A})
    person = gp_patient(sandbox.state)
    page = http.get(f"{sandbox.sandbox_url}/ehr/patient/{person.nhs_number}").text
    resp = http.post(
        f"{sandbox.sandbox_url}/ehr/patient/{person.nhs_number}/launch",
        data={"csrf": csrf(page)},
        allow_redirects=False,
    )
    q = query(resp.headers["Location"])
    assert q["iss"] == sandbox.fhir_base("gp")
    result = client.authorize(q["iss"], q["launch"])
    token = client.exchange(result.code, result.verifier).json()
    claims = decode_unverified(token["id_token"])
    assert set(claims) == GENERIC_CLAIMS and claims["sub"] == CAPABILITY_A
    assert token["patient"] == person.ids["gp"]
    detail = http.get(f"{sandbox.sandbox_url}/inspector/api/launches/{q['launch']}").json()
    id_token = next(t for t in detail["tokens"] if t["kind"] == "id_token")
    assert "kid" not in id_token["header"] and set(id_token["claims"]) == GENERIC_CLAIMS


def test_id_token_switches_still_apply_in_generic_mode(client, sandbox, http):
    http.post(f"{sandbox.sandbox_url}/admin/switches", json={"id_token_wrong_nonce": True}).raise_for_status()
    result = _generic_launch(client, sandbox)
    decoded = decode_unverified(client.exchange(result.code, result.verifier).json()["id_token"])
    assert decoded["nonce"] != result.nonce


# ---- Backend Services in every mode --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["nhs", "generic"])
@pytest.mark.parametrize("discovery", ["full", "token_endpoint_only", "capability_statement_only"])
def test_client_credentials_work_for_the_organisation_in_every_mode(client, sandbox, http, mode, discovery):
    set_smart(http, sandbox, "gp", smart_mode=mode, discovery=discovery)
    person = gp_patient(sandbox.state)
    resp = client.backend_token()
    assert resp.status_code == 200, resp.text
    found = client.fhir(
        "gp",
        "Patient",
        resp.json()["access_token"],
        identifier=f"https://fhir.nhs.uk/Id/nhs-number|{person.nhs_number}",
    ).json()
    assert [e["resource"]["id"] for e in found["entry"] if e["search"]["mode"] == "match"] == [person.ids["gp"]]


def test_generic_backend_services_at_the_host_derived_token_endpoint(client, sandbox, http):
    set_smart(http, sandbox, "gp", smart_mode="generic", discovery="token_endpoint_only")
    base = localhost(sandbox.sandbox_url)
    conf = http.get(f"{base}/fhir/gp/.well-known/smart-configuration").json()
    assert conf["token_endpoint"] == f"{base}/auth/token" and "authorization_endpoint" not in conf
    resp = http.post(
        conf["token_endpoint"],
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(client.keyset, "scr-viewer-backend", conf["token_endpoint"]),
        },
    )
    assert resp.status_code == 200, resp.text
    access = resp.json()["access_token"]
    assert http.get(f"{base}/fhir/gp/Patient", params={"_count": 1}, headers={"Authorization": f"Bearer {access}"}).ok


def test_host_derived_assertion_audience_is_refused_when_no_organisation_is_generic(client, sandbox, http):
    token_url = f"{localhost(sandbox.sandbox_url)}/auth/token"
    resp = http.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(client.keyset, "scr-viewer-backend", token_url),
        },
    )
    assert resp.status_code == 401


def test_generic_id_token_does_not_verify_against_another_key(client, sandbox):
    result = _generic_launch(client, sandbox)
    id_token = client.exchange(result.code, result.verifier).json()["id_token"]
    es_key = next(k for k in client.jwks() if k.get("alg") == "ES384")
    with pytest.raises((JoseError, ValueError)):
        jwt.decode(id_token, es_key, algorithms=["ES384"])
