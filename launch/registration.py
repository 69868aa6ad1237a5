"""What the SMART client is configured with: the host EHRs allowed to launch it and the FHIR servers it
reads with Backend Services. Defined here (the lower layer); ``app.config`` builds them from the TOML file."""

from __future__ import annotations

from dataclasses import dataclass, field

from .roles import IdentityPolicy

USER_TOKEN, BACKEND_SERVICES = "user_token", "backend_services"  # how a bound EHR's organisation is read


@dataclass(frozen=True)
class EhrRegistration:
    """A host EHR allowed to launch the viewer (its ``iss`` is the allow-list key)."""

    name: str
    issuer: str
    client_id: str
    client_auth: str
    signing_alg: str = "RS384"
    client_secret: str | None = None
    standalone: bool = False
    frame_origins: tuple[str, ...] = ()
    id_token_issuer: str | None = None  # pin when the EHR's smart-configuration has no `issuer`
    identity: IdentityPolicy = field(default_factory=IdentityPolicy)  # where users' roles come from
    source: str | None = None  # the [[source]] (organisation) this EHR belongs to
    read_with: str = USER_TOKEN  # a bound organisation's data: the user's token at the EHR, or backend_services
    ods_code: str | None = None  # an unbound EHR's own organisation
    kind: str | None = None
    timeout: float = 5.0  # an unbound EHR's deadline for the record read


@dataclass(frozen=True)
class Source:
    """An organisation's FHIR server that shares records with the viewer."""

    id: str
    name: str
    ods_code: str
    kind: str
    base_url: str
    auth: str
    client_id: str | None = None
    scopes: str = "system/*.rs"
    signing_alg: str = "RS384"
    timeout: float = 5.0
    token_url: str | None = None  # explicit token endpoint; else smart-configuration, else CapabilityStatement


@dataclass(frozen=True)
class ClientSettings:
    """The SMART client's view of the configuration: where it lives, who may launch it, what it reads."""

    base_url: str
    ehrs: tuple[EhrRegistration, ...]
    record_types: tuple[str, ...]  # the patient's resource types the record reads (scopes are derived)

    @property
    def redirect_uri(self) -> str:
        """From config, never from the Host header of the request."""
        return f"{self.base_url}/callback"

    def ehr_for_issuer(self, issuer: str) -> EhrRegistration | None:
        """Exact match only: ``iss`` comes from the query string and must be allow-listed (pitfall A8)."""
        return next((e for e in self.ehrs if e.issuer == issuer), None)
