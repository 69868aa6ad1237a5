"""Tokens for each launch context, kept server-side under their own keys and refreshed under a lock.

Requests that arrive together while a token is due for refresh wait on the lock; the first refreshes,
the others re-read the store and use the new token, so a rotated refresh token is never spent twice
and a refreshed token is never lost (pitfall S1).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import requests

from core.http import http_session
from core.state.store import KeyValueStore

from .client_auth import token_request_auth
from .errors import RelaunchRequired, SessionExpired, TokenError
from .registration import ClientSettings

log = logging.getLogger(__name__)

REFRESH_MARGIN = 60  # refresh when less than this many seconds remain
TOKEN_TTL = 12 * 3600  # how long a context's tokens are kept at most
TIMEOUT = 10.0


@dataclass
class TokenSet:
    access_token: str
    expires_at: float
    scope: str
    token_endpoint: str
    issuer: str
    refresh_token: str | None = None

    def fresh(self, now: float | None = None) -> bool:
        return self.expires_at - (now or time.time()) > REFRESH_MARGIN


def token_set_from_response(body: dict, token_endpoint: str, issuer: str, previous: TokenSet | None = None) -> TokenSet:
    if not isinstance(body.get("access_token"), str) or not body["access_token"]:
        raise TokenError("token response has no access_token")
    if str(body.get("token_type", "")).lower() != "bearer":
        raise TokenError(f"token_type {body.get('token_type')!r} is not Bearer")
    expires_in = body.get("expires_in")
    lifetime = int(expires_in) if isinstance(expires_in, int | float | str) and str(expires_in).isdigit() else 300
    return TokenSet(
        access_token=body["access_token"],
        expires_at=time.time() + lifetime,
        scope=body.get("scope") or (previous.scope if previous else ""),
        token_endpoint=token_endpoint,
        issuer=issuer,
        refresh_token=body.get("refresh_token") or (previous.refresh_token if previous else None),
    )


def post_token_request(token_endpoint: str, form: dict, headers: dict) -> dict:
    """POST to a token endpoint; any failure is a TokenError whose detail never includes a token."""
    try:
        resp = http_session().post(
            token_endpoint,
            data=form,
            timeout=TIMEOUT,
            allow_redirects=False,
            headers={"Accept": "application/json", **headers},
        )
    except requests.RequestException as exc:
        raise TokenError(f"token endpoint unreachable: {exc.__class__.__name__}") from exc
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code != 200 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        raise TokenError(f"token endpoint answered {resp.status_code} error={error!r}")
    return body


class TokenManager:
    def __init__(self, store: KeyValueStore, settings: ClientSettings, keyset) -> None:
        self.store = store
        self.settings = settings
        self.keyset = keyset

    def save(self, ctx_id: str, tokens: TokenSet) -> None:
        self.store.set(f"tok:{ctx_id}", asdict(tokens), ttl=TOKEN_TTL)

    def load(self, ctx_id: str) -> TokenSet | None:
        data = self.store.get(f"tok:{ctx_id}")
        return TokenSet(**data) if data else None

    def access_token(self, ctx_id: str, force_refresh: bool = False) -> str:
        tokens = self.load(ctx_id)
        if tokens is None:
            raise SessionExpired(f"no tokens for context {ctx_id[:6]}…")
        if tokens.fresh() and not force_refresh:
            return tokens.access_token
        stale = tokens.access_token
        with self.store.lock(f"lock:tok:{ctx_id}", timeout=15):
            tokens = self.load(ctx_id)  # another request may have refreshed while we waited
            if tokens is None:
                raise SessionExpired("tokens vanished during refresh")
            if tokens.access_token != stale and tokens.fresh():
                return tokens.access_token
            if tokens.fresh() and not force_refresh:
                return tokens.access_token
            refreshed = self._refresh(tokens)
            self.save(ctx_id, refreshed)
            return refreshed.access_token

    def _refresh(self, tokens: TokenSet) -> TokenSet:
        if not tokens.refresh_token:
            raise RelaunchRequired("access token expired and no refresh token was granted")
        ehr = self.settings.ehr_for_issuer(tokens.issuer)
        if ehr is None:
            raise RelaunchRequired("the issuer is no longer registered")
        form, headers = token_request_auth(
            ehr.client_auth, ehr.client_id, tokens.token_endpoint, self.keyset, ehr.signing_alg, ehr.client_secret
        )
        form.update(grant_type="refresh_token", refresh_token=tokens.refresh_token)
        try:
            body = post_token_request(tokens.token_endpoint, form, headers)
        except TokenError as exc:
            log.warning("refresh failed for %s: %s", tokens.issuer, exc.detail)
            raise RelaunchRequired(f"refresh failed: {exc.detail}") from exc
        log.info("refreshed access token for %s", tokens.issuer)
        return token_set_from_response(body, tokens.token_endpoint, tokens.issuer, previous=tokens)
