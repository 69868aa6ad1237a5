"""The SMART App Launch flow: begin (redirect to authorize) and complete (callback → launch context).

Knows OAuth and nothing about records or Flask requests: the views pass in query parameters and the
browser-session binding, and get back a URL or a LaunchContext.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from urllib.parse import urlencode

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from flask import current_app, has_app_context
from joserfc.jwk import KeySet

from core.http import fetch_executor
from core.state.session import SessionEnd
from core.state.store import KeyValueStore

from .backend import BackendTokens
from .context import ContextStore, LaunchContext, new_context_id
from .discovery import Discovery
from .ehr_client import EhrFhirClient
from .errors import AccessDenied, BadState, DiscoveryFailed, InvalidIdToken, MissingScope, TokenError, UnknownIssuer
from .id_token import validate_id_token
from .identity import resolve_identity
from .registration import ClientSettings, EhrRegistration
from .roles import RegisterLookup
from .scopes import launch_scopes, missing_scopes
from .tokens import TokenEndpoint, TokenManager, token_set_from_response

log = logging.getLogger(__name__)
STATE_TTL = 600  # ten minutes to complete sign-in


class CallbackReads:
    """The launching EHR's Patient, read at the callback alongside the identity reads, kept briefly in this
    process for the record gathering to take once (``callback_patient``): the Patient is read once, and its
    read does not wait for identity. Bounded: what nobody takes (a refused launch) is dropped."""

    TTL = 120.0
    MAX = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads: OrderedDict[str, tuple[float, Future]] = OrderedDict()

    def put(self, ctx_id: str, patient: Future) -> None:
        with self._lock:
            self._reads[ctx_id] = (time.monotonic(), patient)
            while len(self._reads) > self.MAX or (
                self._reads and time.monotonic() - next(iter(self._reads.values()))[0] > self.TTL
            ):
                self._reads.popitem(last=False)

    def take(self, ctx_id: str) -> Future | None:
        with self._lock:
            found = self._reads.pop(ctx_id, None)
        return found[1] if found and time.monotonic() - found[0] <= self.TTL else None


@dataclass
class LaunchServices:
    settings: ClientSettings
    store: KeyValueStore
    discovery: Discovery
    tokens: TokenManager
    contexts: ContextStore
    keyset: KeySet
    backend: BackendTokens
    on_launch: Callable[[LaunchContext, str], None] | None = None  # e.g. the audit trail; may refuse by raising
    register: RegisterLookup | None = None  # the viewer's local access register (identity source "register")
    # Told when a browser session that held launch contexts ends (logout, idle, replaced...): e.g. the audit
    # trail. Arguments: the SessionEnd, the contexts it held, the request id, details for the record.
    on_session_end: Callable[[SessionEnd, list[LaunchContext], str, dict], None] | None = None
    callback_reads: CallbackReads = field(default_factory=CallbackReads)

    @property
    def redirect_uri(self) -> str:
        return self.settings.redirect_uri


EXTENSION = "launch"  # where init_app installs LaunchServices on the Flask app


def services() -> LaunchServices:
    """The running app's SMART client services."""
    return current_app.extensions[EXTENSION]


def callback_patient(ctx_id: str) -> Future | None:
    """The read of the launch's Patient at the launching EHR that the callback started (once; None when there
    is none: another process, or already taken). Its result is the Patient, or raises what the read raised."""
    if not has_app_context():
        return None
    launch = current_app.extensions.get(EXTENSION)
    return launch.callback_reads.take(ctx_id) if launch is not None else None


def binding_hash(binding: str) -> str:
    return hashlib.sha256(binding.encode()).hexdigest()


def begin(services: LaunchServices, ehr: EhrRegistration, launch: str | None, binding: str) -> str:
    """Store state/nonce/PKCE verifier server-side and return the authorize URL to redirect to."""
    smart = services.discovery.configuration(ehr.issuer)
    if not smart.authorization_endpoint:
        raise DiscoveryFailed(f"{ehr.issuer} advertises no authorization_endpoint, so it cannot launch the viewer")
    state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(64)
    scope = launch_scopes(services.settings.record_types, standalone=launch is None)
    services.store.set(
        f"oauth:{state}",
        {
            "iss": ehr.issuer,
            "nonce": nonce,
            "verifier": verifier,
            "scope": scope,
            "binding": binding_hash(binding),
            "standalone": launch is None,
        },
        ttl=STATE_TTL,
    )
    params = {
        "response_type": "code",
        "client_id": ehr.client_id,
        "redirect_uri": services.redirect_uri,
        "scope": scope,
        "state": state,
        "nonce": nonce,
        "aud": ehr.issuer,
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
    }
    if launch is not None:
        params["launch"] = launch
    sep = "&" if "?" in smart.authorization_endpoint else "?"
    return f"{smart.authorization_endpoint}{sep}{urlencode(params)}"


def complete(services: LaunchServices, params: dict[str, str], binding: str, request_id: str) -> LaunchContext:
    """Validate the callback, exchange the code, validate the id_token, build the launch context."""
    state = params.get("state") or ""
    pending = services.store.pop(f"oauth:{state}") if state else None  # single use, even on failure
    if pending is None:
        raise BadState("unknown, expired or already used state")
    if not secrets.compare_digest(pending["binding"], binding_hash(binding)):
        raise BadState("state belongs to another browser session (or the browser dropped the session cookie)")
    if params.get("error"):
        raise AccessDenied(f"authorization server answered error={params.get('error')!r}")
    code = params.get("code")
    if not code:
        raise TokenError("callback carried neither code nor error")
    ehr = services.settings.ehr_for_issuer(pending["iss"])
    if ehr is None:
        raise UnknownIssuer(f"issuer {pending['iss']} was removed from the configuration mid-launch")
    smart = services.discovery.configuration(ehr.issuer)

    endpoint = TokenEndpoint.for_ehr(smart.token_endpoint, ehr, services.keyset)
    body = endpoint.authorization_code(code, services.redirect_uri, pending["verifier"])
    tokens = token_set_from_response(body, smart.token_endpoint, ehr.issuer)
    if not body.get("scope"):
        tokens.scope = pending["scope"]  # RFC 6749 5.1: omitted scope means as requested
    missing = missing_scopes(tokens.scope)
    if missing:
        raise MissingScope(f"not granted: {' '.join(missing)}")
    if not isinstance(body.get("patient"), str) or not body["patient"]:
        raise MissingScope("token response has no patient context")

    claims = _validated_claims(services, ehr, smart, body.get("id_token"), pending["nonce"])
    ctx = LaunchContext(
        id=new_context_id(),
        iss=ehr.issuer,
        ehr_name=ehr.name,
        patient=body["patient"],
        encounter=body.get("encounter") if isinstance(body.get("encounter"), str) else None,
        need_patient_banner=body.get("need_patient_banner", True) is not False,
        scope=tokens.scope,
        standalone=pending["standalone"],
        fhir_user=claims.get("fhirUser"),
        user_claims={k: v for k, v in claims.items() if k not in ("nonce", "at_hash", "c_hash")},
    )
    services.tokens.save(ctx.id, tokens)
    client = EhrFhirClient(services.tokens, ctx.id, ctx.iss, request_id)
    # The patient is read alongside the identity reads (one round trip for both), for the record to use.
    services.callback_reads.put(ctx.id, fetch_executor().submit(client.get, f"Patient/{ctx.patient}"))
    try:
        ctx.identity = resolve_identity(
            client, ctx.fhir_user, claims, issuer=ehr.issuer, policy=ehr.identity, register=services.register
        )
    except Exception:
        services.callback_reads.take(ctx.id)
        raise
    services.contexts.save(ctx)
    log.info("launch complete: context %s… for %s at %s", ctx.id[:6], claims.get("sub"), ehr.issuer)
    return ctx


def _validated_claims(services: LaunchServices, ehr: EhrRegistration, smart, id_token, nonce: str) -> dict:
    if not isinstance(id_token, str) or not id_token:
        raise InvalidIdToken("token response has no id_token although openid was granted")
    issuer = ehr.id_token_issuer or smart.issuer
    if not issuer:
        raise InvalidIdToken("no issuer to pin: set id_token_issuer for this EHR")
    if not smart.jwks_uri:
        raise InvalidIdToken("the EHR publishes no jwks_uri")
    return validate_id_token(
        id_token,
        issuer=issuer,
        client_id=ehr.client_id,
        nonce=nonce,
        keys=lambda refresh: services.discovery.jwks(smart.jwks_uri, refresh=refresh),
    )
