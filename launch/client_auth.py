"""How the viewer authenticates to token endpoints: private_key_jwt, client_secret_basic, or public.

private_key_jwt follows SMART's asymmetric profile: RS384 or ES384, ``kid`` in the header, ``exp`` at
most five minutes ahead, a fresh ``jti`` for every assertion (pitfall A3: never reuse one).
"""

from __future__ import annotations

import base64
import secrets
import time
from urllib.parse import quote

from joserfc import jwt
from joserfc.jwk import KeySet

from .keys import signing_key

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 240  # seconds; SMART allows at most 300


def client_assertion(keyset: KeySet, client_id: str, token_endpoint: str, alg: str = "RS384") -> str:
    key = signing_key(keyset, alg)
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
        "jti": secrets.token_urlsafe(24),
    }
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def token_request_auth(
    method: str, client_id: str, token_endpoint: str, keyset: KeySet | None, alg: str, secret: str | None
) -> tuple[dict, dict]:
    """(extra form fields, extra headers) for a token request under the registration's method."""
    if method == "private_key_jwt":
        assert keyset is not None
        return (
            {
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": client_assertion(keyset, client_id, token_endpoint, alg),
            },
            {},
        )
    if method == "client_secret_basic":
        assert secret is not None
        raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
        return {}, {"Authorization": "Basic " + base64.b64encode(raw).decode()}
    return {"client_id": client_id}, {}  # public client: identified, not authenticated (PKCE protects the code)
