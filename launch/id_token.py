"""OpenID Connect id_token validation (OIDC Core 3.1.3.7) with SMART's algorithms.

Signature against the issuer's JWKS (with or without ``kid``), pinned issuer, audience = our client id,
expiry, nonce, and only RS256/RS384/ES384: ``none`` and HMAC are refused before any key is touched.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.util import to_bytes

from .errors import InvalidIdToken

ALLOWED_ALGS = ("RS256", "RS384", "ES384")
LEEWAY = 60


def validate_id_token(
    id_token: str,
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    keys: Callable[[bool], KeySet],
    now: float | None = None,
) -> dict:
    """Return the verified claims, or raise InvalidIdToken saying which rule failed (for the logs)."""
    header = _header(id_token)
    alg = header.get("alg")
    if alg not in ALLOWED_ALGS:
        raise InvalidIdToken(f"id_token alg {alg!r} is not allowed")
    keyset = keys(False)
    kid = header.get("kid")
    if kid and not _has_kid(keyset, kid):
        keyset = keys(True)  # the issuer may have rotated its keys
        if not _has_kid(keyset, kid):
            raise InvalidIdToken(f"id_token kid {kid!r} is not in the issuer's JWKS")
    token = _verify(id_token, keyset, alg, kid)
    claims = token.claims
    now = time.time() if now is None else now
    if claims.get("iss") != issuer:
        raise InvalidIdToken(f"id_token iss {claims.get('iss')!r} is not the pinned issuer {issuer!r}")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if client_id not in audiences:
        raise InvalidIdToken(f"id_token aud {aud!r} does not include our client id")
    if len(audiences) > 1 and claims.get("azp") not in (None, client_id):
        raise InvalidIdToken("id_token azp names another client")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or exp < now - LEEWAY:
        raise InvalidIdToken("id_token has expired")
    if isinstance(iat, int | float) and iat > now + LEEWAY:
        raise InvalidIdToken("id_token was issued in the future")
    if claims.get("nonce") != nonce:
        raise InvalidIdToken("id_token nonce does not match the one we sent")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise InvalidIdToken("id_token has no subject")
    return dict(claims)


def _header(token: str) -> dict:
    try:
        return jws.extract_compact(to_bytes(token)).headers()
    except (JoseError, ValueError, json.JSONDecodeError) as exc:
        raise InvalidIdToken(f"id_token is not a compact JWS: {exc}") from exc


def _has_kid(keyset: KeySet, kid: str) -> bool:
    return any(k.kid == kid for k in keyset)


def _verify(token: str, keyset: KeySet, alg: str, kid: str | None):
    """With a kid, joserfc picks the key; without, try each key that can do ``alg``."""
    candidates = [keyset] if kid else [k for k in keyset if k.get("alg") in (None, alg)]
    last: Exception | None = None
    for key in candidates:
        try:
            return jwt.decode(token, key, algorithms=[alg])
        except (JoseError, ValueError) as exc:
            last = exc
    raise InvalidIdToken(f"id_token signature does not verify: {last}")
