"""Everything the sandbox remembers at run time: launches, issued tokens, FHIR requests, switches.

In memory and guarded by one lock: the sandbox is a single process for development and tests.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from .dataset import Dataset
from .keys import ServerKeys
from .settings import Faults, SandboxSettings, SmartProfile, validate_faults, validate_smart_profile

# Simulated errors an integrator can switch on (smart-launcher style) for negative tests.
SWITCHES = {
    "deny_consent": "authorize answers error=access_denied, as if the user refused",
    "invalid_client": "the token endpoint refuses every client with invalid_client",
    "expired_token": "FHIR servers reject every access token issued so far as expired",
    "invalid_refresh": "refresh_token grants fail with invalid_grant",
    "narrow_scopes": "grant only `launch patient/Observation.rs`, whatever was asked",
    "id_token_wrong_nonce": "id_tokens carry a nonce the app did not send",
    "id_token_wrong_issuer": "id_tokens name another issuer",
    "id_token_wrong_audience": "id_tokens are addressed to another client",
    "id_token_expired": "id_tokens expired an hour ago",
    "id_token_alg_none": "id_tokens are unsigned (alg none)",
    "id_token_hs256": "id_tokens are HMAC-signed (HS256) with a shared secret",
    "id_token_unknown_key": "id_tokens are signed by a key the JWKS does not publish",
    "id_token_no_kid": "id_tokens are correctly signed but carry no kid (valid: apps must cope)",
}
MAX_LAUNCHES = 200
MAX_REQUESTS = 5000


@dataclass
class IssuedToken:
    kind: str  # access_token | id_token | refresh_token
    issued_at: float
    expires_at: float | None
    client_id: str
    scope: str
    claims: dict
    header: dict = field(default_factory=dict)


@dataclass
class Launch:
    id: str
    created: float
    user_id: str
    org_id: str
    iss: str
    nhs_number: str
    patient_id: str
    encounter_id: str | None
    need_patient_banner: bool
    launch_url: str
    source: str  # "ehr" (toolbar / scripted) or "standalone"
    tokens: list[IssuedToken] = field(default_factory=list)


@dataclass
class FhirRequest:
    at: float
    org_id: str
    method: str
    url: str
    host: str
    status: int
    duration_ms: float
    request_id: str
    client_id: str | None
    launch_id: str | None
    nhs_number: str | None


class SandboxState:
    def __init__(self, settings: SandboxSettings, dataset: Dataset, keys: ServerKeys) -> None:
        self.settings = settings
        self.dataset = dataset
        self.keys = keys
        self.lock = threading.Lock()
        self.faults: dict[str, Faults] = {
            o.id: Faults(o.faults.latency_ms, o.faults.mode) for o in settings.organisations
        }
        self.smart: dict[str, SmartProfile] = {o.id: o.smart for o in settings.organisations}
        self.switches: set[str] = set()
        self.issued_jtis: deque[str] = deque(maxlen=20_000)
        self.expired_jtis: set[str] = set()
        self.launches: OrderedDict[str, Launch] = OrderedDict()
        self.requests: deque[FhirRequest] = deque(maxlen=MAX_REQUESTS)
        self.standalone_tokens: list[IssuedToken] = []
        self.backend_tokens: deque[IssuedToken] = deque(maxlen=500)
        self.inbox: deque[dict] = deque(maxlen=1000)  # alerts delivered by the viewer, newest last

    # -- launches ------------------------------------------------------------------------------
    def create_launch(self, **kwargs) -> Launch:
        launch = Launch(id=secrets.token_urlsafe(16), created=time.time(), **kwargs)
        with self.lock:
            self.launches[launch.id] = launch
            while len(self.launches) > MAX_LAUNCHES:
                self.launches.popitem(last=False)
        return launch

    def launch(self, launch_id: str | None) -> Launch | None:
        return self.launches.get(launch_id) if launch_id else None

    def recent_launches(self) -> list[Launch]:
        with self.lock:
            return list(reversed(self.launches.values()))

    def record_token(self, token: IssuedToken, launch_id: str | None) -> None:
        with self.lock:
            if token.kind == "access_token":
                self.issued_jtis.append(token.claims["jti"])
            launch = self.launches.get(launch_id) if launch_id else None
            if launch is not None:
                launch.tokens.append(token)
            elif token.client_id and token.claims.get("sub") == token.client_id:
                self.backend_tokens.append(token)
            else:
                self.standalone_tokens.append(token)

    # -- FHIR request log ----------------------------------------------------------------------
    def record_request(self, req: FhirRequest) -> None:
        with self.lock:
            self.requests.append(req)

    def requests_for_launch(self, launch: Launch) -> list[FhirRequest]:
        """Requests made with the launch's own tokens, plus any request about the same patient since."""
        with self.lock:
            return [
                r
                for r in self.requests
                if r.launch_id == launch.id or (r.nhs_number == launch.nhs_number and r.at >= launch.created)
            ]

    # -- faults and switches -------------------------------------------------------------------
    def set_faults(self, org_id: str, latency_ms: int | None = None, mode: str | None = None) -> Faults:
        if org_id not in self.faults:
            raise KeyError(org_id)
        current = self.faults[org_id]
        new_latency = current.latency_ms if latency_ms is None else latency_ms
        new_mode = current.mode if mode is None else mode
        validate_faults(new_latency, new_mode)
        with self.lock:
            self.faults[org_id] = Faults(new_latency, new_mode)
        return self.faults[org_id]

    # -- SMART profiles (smart_mode and discovery per organisation) ----------------------------------
    def smart_profile(self, org_id: str | None) -> SmartProfile:
        """The organisation's current profile; NHS defaults for anything that is not an organisation."""
        return self.smart.get(org_id or "", SmartProfile())

    def is_generic(self, org_id: str | None) -> bool:
        return self.smart_profile(org_id).generic

    def any_generic(self) -> bool:
        return any(p.generic for p in self.smart.values())

    def set_smart(self, org_id: str, smart_mode: str | None = None, discovery: str | None = None) -> SmartProfile:
        if org_id not in self.smart:
            raise KeyError(org_id)
        current = self.smart[org_id]
        new_mode = current.smart_mode if smart_mode is None else smart_mode
        new_discovery = current.discovery if discovery is None else discovery
        validate_smart_profile(new_mode, new_discovery)
        with self.lock:
            self.smart[org_id] = SmartProfile(new_mode, new_discovery)
        return self.smart[org_id]

    def set_switch(self, name: str, on: bool) -> None:
        if name not in SWITCHES:
            raise KeyError(name)
        with self.lock:
            if on:
                self.switches.add(name)
                if name == "expired_token":
                    self.expired_jtis = set(self.issued_jtis)
            else:
                self.switches.discard(name)
                if name == "expired_token":
                    self.expired_jtis = set()

    def reset(self) -> None:
        """Back to the configured faults and SMART profiles with no switches on (tests call this between cases)."""
        with self.lock:
            self.faults = {o.id: Faults(o.faults.latency_ms, o.faults.mode) for o in self.settings.organisations}
            self.smart = {o.id: o.smart for o in self.settings.organisations}
            self.switches.clear()
            self.expired_jtis = set()
