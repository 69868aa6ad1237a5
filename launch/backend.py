"""SMART Backend Services: system tokens for each organisation's FHIR server, cached until near expiry.

client_credentials with a signed JWT assertion (private_key_jwt), system scopes from the source's
config, requested through Authlib's OAuth2Session (``launch.tokens.TokenEndpoint``). The token endpoint
comes from the source's ``token_url``, its smart-configuration or its CapabilityStatement (``Discovery``).
Tokens are kept in the shared store per source, refreshed under a per-source lock so a burst of launches
asks for one token, not many.
"""

from __future__ import annotations

import time

from core.state.store import KeyValueStore

from .client_auth import client_authentication
from .discovery import Discovery
from .errors import TokenError
from .registration import Source
from .tokens import TokenEndpoint, bearer_token

EARLY_RENEWAL = 60  # seconds before expiry at which a cached token is replaced


class BackendTokens:
    def __init__(self, store: KeyValueStore, discovery: Discovery, keyset) -> None:
        self.store, self.discovery, self.keyset = store, discovery, keyset

    def token_for(self, source: Source) -> str:
        key = f"backend:{source.id}"
        cached = self.store.get(key)
        if cached and cached["expires_at"] - time.time() > EARLY_RENEWAL:
            return cached["access_token"]
        with self.store.lock(f"lock:{key}", timeout=15):
            cached = self.store.get(key)
            if cached and cached["expires_at"] - time.time() > EARLY_RENEWAL:
                return cached["access_token"]
            token, lifetime = self._request(source)
            ttl = max(lifetime - EARLY_RENEWAL, 1)
            self.store.set(key, {"access_token": token, "expires_at": time.time() + lifetime}, ttl=ttl)
            return token

    def forget(self, source: Source) -> None:
        """Drop a cached token the server rejected (revoked, server restarted)."""
        self.store.delete(f"backend:{source.id}")

    def _request(self, source: Source) -> tuple[str, int]:
        if source.auth != "backend_services" or not source.client_id:
            raise TokenError(f"source {source.id} is not configured for backend services")
        endpoint = self.discovery.token_endpoint(source.base_url, source.token_url)
        auth = client_authentication(
            "private_key_jwt", source.client_id, endpoint, self.keyset, source.signing_alg, None
        )
        body = TokenEndpoint(endpoint, auth).client_credentials(source.scopes)
        try:
            token = bearer_token(body)
        except TokenError as exc:
            raise TokenError(f"{source.id}: {exc.detail}") from exc
        expires_in = body.get("expires_in")
        lifetime = int(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 300
        return token, lifetime
