"""Tokens for each launch context, kept server-side under their own keys and refreshed under a lock.

Requests that arrive together while a token is due for refresh wait on the lock; the first refreshes,
the others re-read the store and use the new token, so a rotated refresh token is never spent twice
and a refreshed token is never lost (pitfall S1).

Token requests go through Authlib's ``OAuth2Session`` (:class:`TokenEndpoint`): ``fetch_token`` for the
authorization code (with the PKCE verifier) and client_credentials, ``refresh_token`` for refreshes, and
the client authentication of ``launch.client_auth``. The session is one per request (Authlib keeps the
token it fetched on it), mounted on the process's pooled adapters from ``core.http.http_session`` with
the same policy: no proxies or credentials from the environment, our User-Agent, a timeout, and no
redirects on a token POST. Kept ours, deliberately:

- the answer's status: Authlib takes any JSON object without ``error`` from a non-5xx answer as a token
  (a 302 or a 401 carrying ``{}`` too); we accept only 200 (RFC 6749 §5.1), through Authlib's
  ``access_token_response``/``refresh_token_response`` hooks, and turn every failure into a
  :class:`TokenError` whose detail names the status and the ``error`` code, never a token;
- what makes a usable token: a non-empty ``access_token`` and ``token_type`` Bearer (Authlib checks
  neither), and the store, lock and refresh policy below.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from joserfc.jwk import KeySet

from core.http import http_session
from core.state.store import KeyValueStore

from .client_auth import ClientAuthentication, client_authentication
from .errors import RelaunchRequired, SessionExpired, TokenError
from .registration import ClientSettings, EhrRegistration

log = logging.getLogger(__name__)

REFRESH_MARGIN = 60  # refresh when less than this many seconds remain
TOKEN_TTL = 12 * 3600  # how long a context's tokens are kept at most
TIMEOUT = 10.0
REQUEST_OPTIONS = {"timeout": TIMEOUT, "allow_redirects": False}  # handed by Authlib to requests


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


def bearer_token(body: dict) -> str:
    """The access token of a token response; refused if missing or not a Bearer token."""
    if not isinstance(body.get("access_token"), str) or not body["access_token"]:
        raise TokenError("token response has no access_token")
    if str(body.get("token_type", "")).lower() != "bearer":
        raise TokenError(f"token_type {body.get('token_type')!r} is not Bearer")
    return body["access_token"]


def token_set_from_response(body: dict, token_endpoint: str, issuer: str, previous: TokenSet | None = None) -> TokenSet:
    access_token = bearer_token(body)
    expires_in = body.get("expires_in")
    lifetime = int(expires_in) if isinstance(expires_in, int | float | str) and str(expires_in).isdigit() else 300
    return TokenSet(
        access_token=access_token,
        expires_at=time.time() + lifetime,
        scope=body.get("scope") or (previous.scope if previous else ""),
        token_endpoint=token_endpoint,
        issuer=issuer,
        refresh_token=body.get("refresh_token") or (previous.refresh_token if previous else None),
    )


def _require_success(resp: requests.Response) -> requests.Response:
    """Authlib hook on every token answer: only a 200 with a JSON object goes on to Authlib's parsing."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code != 200 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        raise TokenError(f"token endpoint answered {resp.status_code} error={error!r}")
    return resp


def token_session(auth: ClientAuthentication) -> OAuth2Session:
    """An Authlib session for one token request, on the process's pooled connections and HTTP policy.

    It borrows ``http_session()``'s adapters (its connection pools); never ``close()`` it, which would
    close those pools for the whole process.
    """
    shared = http_session()
    session = OAuth2Session(
        auth.client_id,
        auth.client_secret,
        token_endpoint_auth_method=auth.method,
        trust_env=False,  # no proxies or .netrc credentials from the environment
        default_timeout=TIMEOUT,
    )
    if auth.registration is not None:
        session.register_client_auth_method(auth.registration)
    session.headers.update(shared.headers)  # our User-Agent
    for prefix, adapter in shared.adapters.items():
        session.mount(prefix, adapter)
    session.register_compliance_hook("access_token_response", _require_success)
    session.register_compliance_hook("refresh_token_response", _require_success)
    return session


class TokenEndpoint:
    """One authorisation server's token endpoint, called through Authlib with the viewer's client auth."""

    def __init__(self, url: str, auth: ClientAuthentication) -> None:
        self.url, self.auth = url, auth

    @classmethod
    def for_ehr(cls, url: str, ehr: EhrRegistration, keyset: KeySet | None) -> TokenEndpoint:
        auth = client_authentication(ehr.client_auth, ehr.client_id, url, keyset, ehr.signing_alg, ehr.client_secret)
        return cls(url, auth)

    def authorization_code(self, code: str, redirect_uri: str, code_verifier: str) -> dict:
        return self._call(
            lambda s: s.fetch_token(
                self.url,
                grant_type="authorization_code",
                code=code,
                redirect_uri=redirect_uri,
                code_verifier=code_verifier,
                **REQUEST_OPTIONS,
            )
        )

    def refresh(self, refresh_token: str) -> dict:
        return self._call(lambda s: s.refresh_token(self.url, refresh_token=refresh_token, **REQUEST_OPTIONS))

    def client_credentials(self, scope: str) -> dict:
        return self._call(
            lambda s: s.fetch_token(self.url, grant_type="client_credentials", scope=scope, **REQUEST_OPTIONS)
        )

    def _call(self, request: Callable[[OAuth2Session], dict]) -> dict:
        """Any failure is a TokenError whose detail never includes a token, a code or an assertion."""
        try:
            return dict(request(token_session(self.auth)))
        except TokenError:
            raise
        except requests.RequestException as exc:
            raise TokenError(f"token endpoint unreachable: {exc.__class__.__name__}") from exc
        except OAuthError as exc:  # a 200 answer carrying an error
            raise TokenError(f"token endpoint answered 200 error={exc.error!r}") from exc
        except (ValueError, TypeError) as exc:  # Authlib could not read the answer (e.g. expires_in)
            raise TokenError(f"token response could not be read: {exc.__class__.__name__}") from exc


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
        try:
            body = TokenEndpoint.for_ehr(tokens.token_endpoint, ehr, self.keyset).refresh(tokens.refresh_token)
        except TokenError as exc:
            log.warning("refresh failed for %s: %s", tokens.issuer, exc.detail)
            raise RelaunchRequired(f"refresh failed: {exc.detail}") from exc
        log.info("refreshed access token for %s", tokens.issuer)
        return token_set_from_response(body, tokens.token_endpoint, tokens.issuer, previous=tokens)
