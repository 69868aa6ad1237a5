"""id_token validation rules, one failing case each, against real keys."""

from __future__ import annotations

import base64
import json
import time

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

from launch.errors import InvalidIdToken
from launch.id_token import validate_id_token

ISSUER = "https://ehr.example/auth"
CLIENT = "scr-viewer"
NONCE = "n-0S6_WzA2Mj"


@pytest.fixture(scope="module")
def keys():
    return KeySet(
        [
            RSAKey.generate_key(2048, parameters={"alg": "RS256"}, private=True, auto_kid=True),
            RSAKey.generate_key(2048, parameters={"alg": "RS384"}, private=True, auto_kid=True),
            ECKey.generate_key("P-384", parameters={"alg": "ES384"}, private=True, auto_kid=True),
        ]
    )


def claims(**over):
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "sub": "dr-patel",
        "aud": CLIENT,
        "iat": now,
        "exp": now + 300,
        "nonce": NONCE,
        "fhirUser": "https://ehr.example/fhir/Practitioner/1",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(keys, alg="RS256", kid=True, **over):
    key = next(k for k in keys if k.get("alg") == alg)
    header = {"alg": alg, **({"kid": key.kid} if kid else {})}
    return jwt.encode(header, claims(**over), key, algorithms=[alg])


def validate(token, keys, **kw):
    public = KeySet.import_key_set(keys.as_dict(private=False))
    fetched = []

    def source(refresh):
        fetched.append(refresh)
        return kw.pop("keyset", public) if refresh else public

    return validate_id_token(token, issuer=ISSUER, client_id=CLIENT, nonce=NONCE, keys=source), fetched


@pytest.mark.parametrize("alg", ["RS256", "RS384", "ES384"])
def test_valid_tokens_pass(keys, alg):
    result, _ = validate(sign(keys, alg), keys)
    assert result["sub"] == "dr-patel" and result["fhirUser"].endswith("Practitioner/1")


def test_token_without_kid_is_checked_against_each_key(keys):
    result, _ = validate(sign(keys, "ES384", kid=False), keys)
    assert result["nonce"] == NONCE


def test_audience_list_with_our_client(keys):
    result, _ = validate(sign(keys, aud=[CLIENT]), keys)
    assert result["aud"] == [CLIENT]


@pytest.mark.parametrize(
    ("over", "rule"),
    [
        ({"iss": "https://impostor.example/auth"}, "pinned issuer"),
        ({"aud": "another-client"}, "does not include our client id"),
        ({"aud": [CLIENT, "other"], "azp": "other"}, "azp"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200}, "in the future"),
        ({"nonce": "replayed"}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"sub": None}, "subject"),
    ],
)
def test_each_claim_rule(keys, over, rule):
    with pytest.raises(InvalidIdToken, match=rule):
        validate(sign(keys, **over), keys)


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_is_refused(keys):
    token = f"{b64({'alg': 'none'})}.{b64(claims())}."
    with pytest.raises(InvalidIdToken, match="alg 'none' is not allowed"):
        validate(token, keys)


def test_hs256_is_refused_even_with_a_plausible_kid(keys):
    rsa = next(k for k in keys if k.get("alg") == "RS256")
    token = jwt.encode({"alg": "HS256", "kid": rsa.kid}, claims(), OctKey.generate_key(256), algorithms=["HS256"])
    with pytest.raises(InvalidIdToken, match="alg 'HS256' is not allowed"):
        validate(token, keys)


def test_signature_by_another_key_is_refused(keys):
    stranger = KeySet([RSAKey.generate_key(2048, parameters={"alg": "RS256"}, private=True, auto_kid=True)])
    with pytest.raises(InvalidIdToken, match="not in the issuer's JWKS"):
        validate(sign(stranger), keys)


def test_tampered_payload_is_refused(keys):
    header, _, signature = sign(keys).split(".")
    forged = f"{header}.{b64(claims(sub='someone-else'))}.{signature}"
    with pytest.raises(InvalidIdToken, match="signature"):
        validate(forged, keys)


def test_unknown_kid_refetches_the_jwks_once(keys):
    rotated = KeySet([RSAKey.generate_key(2048, parameters={"alg": "RS256"}, private=True, auto_kid=True)])
    token = sign(rotated)
    public_rotated = KeySet.import_key_set(rotated.as_dict(private=False))
    result, fetched = validate(token, keys, keyset=public_rotated)
    assert fetched == [False, True]
    assert result["sub"] == "dr-patel"


def test_garbage_is_refused(keys):
    with pytest.raises(InvalidIdToken, match="compact JWS"):
        validate("not-a-token", keys)
