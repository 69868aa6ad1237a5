"""The organisations a record is gathered from: the configured sources plus the launching EHR.

The launching EHR is read with the user's own token; every other organisation with SMART Backend
Services. When the launching EHR is also a configured source it is read once, with the user's token.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Config, Source


@dataclass(frozen=True)
class RecordSource:
    id: str
    name: str
    ods_code: str
    kind: str
    base_url: str
    timeout: float
    auth: str  # "user" (the launch token) | "backend_services" | "none"
    config: Source | None = None


def record_sources(config: Config, launch_iss: str) -> list[RecordSource]:
    sources: list[RecordSource] = []
    iss = launch_iss.rstrip("/")
    for s in config.sources:
        auth = "user" if s.base_url.rstrip("/") == iss else s.auth
        sources.append(RecordSource(s.id, s.name, s.ods_code, s.kind, s.base_url, s.timeout, auth, s))
    if not any(s.auth == "user" for s in sources):
        ehr = config.ehr_for_issuer(iss)
        name = ehr.name if ehr else "Your clinical system"
        sources.insert(0, RecordSource("launching-ehr", name, "", "gp", iss, 5.0, "user"))
    return sources
