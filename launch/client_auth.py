"""How the viewer authenticates to token endpoints: private_key_jwt, client_secret_basic, or public (none).

Authlib does the work. Each token request goes through an Authlib ``OAuth2Session`` (``launch.tokens``)
built from a :class:`ClientAuthentication`: the method's name, what Authlib calls the ``client_secret``
(the joserfc private key for private_key_jwt, the secret for client_secret_basic, nothing for a public
client) and, where the stock method does not meet SMART or RFC 6749, our registration of that method:

- ``private_key_jwt``: :class:`SmartPrivateKeyJWT` is Authlib's ``PrivateKeyJWT`` (rfc7523, signing with
  joserfc) held to SMART's asymmetric profile. The stock class signs for 3,600 s, puts no ``kid`` in the
  header, and writes its ``jti`` into a ``claims`` dict given to it, then reuses it for every assertion
  (pitfall A3). Ours: RS384 or ES384 only, ``kid`` in the header, ``exp`` 240 s ahead (SMART allows at
  most 300), a fresh ``jti`` for every assertion, ``aud`` the token endpoint.
- ``client_secret_basic``: Authlib's encoder, but given client_id and secret form-urlencoded first, as
  RFC 6749 §2.3.1 requires and servers decode (Authlib's own server unquotes them). The stock encoder
  sends them as they are: a secret with ``%`` or ``+``, or an id with ``:``, then reaches the server
  altered, and a non-Latin-1 character raises UnicodeEncodeError instead of sending anything.
- ``none`` (public client): Authlib's, unchanged (``client_id`` in the form; PKCE protects the code).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from authlib.oauth2.auth import ClientAuth, encode_client_secret_basic
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from joserfc.jwk import KeySet

from .keys import SUPPORTED_ALGS, signing_key

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 240  # seconds; SMART allows at most 300
CLIENT_AUTH_METHODS = ("private_key_jwt", "client_secret_basic", "none")


class SmartPrivateKeyJWT(PrivateKeyJWT):
    """Authlib's ``private_key_jwt`` with SMART's rules; the key is the session's ``client_secret``."""

    def __init__(self, token_endpoint: str, alg: str) -> None:
        if alg not in SUPPORTED_ALGS:
            raise ValueError(f"SMART client assertions are signed with {' or '.join(SUPPORTED_ALGS)}, not {alg}")
        super().__init__(token_endpoint=token_endpoint, alg=alg)

    def sign(self, auth, token_endpoint: str) -> str:
        key = auth.client_secret  # a joserfc RSAKey/ECKey for self.alg (see client_authentication)
        return private_key_jwt_sign(
            key,
            client_id=auth.client_id,
            token_endpoint=token_endpoint,
            alg=self.alg,
            claims=None,  # Authlib then adds a new jti to a new dict on every call
            header={"kid": key.kid, "typ": "JWT"},  # a new dict each call too: Authlib writes alg into it
            expires_in=ASSERTION_LIFETIME,
        )


def encode_client_secret_basic_rfc6749(client, method, uri, headers, body):
    """Authlib's client_secret_basic, with client_id and secret form-urlencoded first (RFC 6749 §2.3.1)."""
    encoded = ClientAuth(quote(client.client_id, safe=""), quote(client.client_secret, safe=""))
    return encode_client_secret_basic(encoded, method, uri, headers, body)


@dataclass(frozen=True)
class ClientAuthentication:
    """What an Authlib OAuth2Session needs to authenticate the viewer at one token endpoint."""

    client_id: str
    method: str  # one of CLIENT_AUTH_METHODS: the session's token_endpoint_auth_method
    client_secret: object = None  # private key (private_key_jwt), secret (client_secret_basic), None (none)
    registration: object = None  # our implementation of ``method``, registered on the session; None: Authlib's


def client_authentication(
    method: str, client_id: str, token_endpoint: str, keyset: KeySet | None, alg: str, secret: str | None
) -> ClientAuthentication:
    """The viewer's authentication at ``token_endpoint`` under the registration's method."""
    if method == "private_key_jwt":
        if keyset is None:
            raise ValueError("private_key_jwt needs the viewer's key set")
        return ClientAuthentication(
            client_id, method, signing_key(keyset, alg), SmartPrivateKeyJWT(token_endpoint, alg)
        )
    if method == "client_secret_basic":
        if not secret:
            raise ValueError("client_secret_basic needs a client secret")
        return ClientAuthentication(client_id, method, secret, (method, encode_client_secret_basic_rfc6749))
    if method == "none":
        return ClientAuthentication(client_id, method)
    raise ValueError(f"unknown client authentication method {method!r}")


def client_assertion(keyset: KeySet, client_id: str, token_endpoint: str, alg: str = "RS384") -> str:
    """One client assertion exactly as a private_key_jwt token request sends it."""
    auth = client_authentication("private_key_jwt", client_id, token_endpoint, keyset, alg, None)
    return auth.registration.sign(ClientAuth(client_id, auth.client_secret), token_endpoint)
