"""The organisations a record is gathered from: the configured sources, with the launching EHR's own
organisation read once.

An ``[[ehr]]`` bound to a ``[[source]]`` (``source = ...``, or the source whose base is the EHR's issuer)
is that organisation: its data is read once, under the source's name and ODS code — with the user's own
token at the EHR (``read_with = "user_token"``, the default) or with Backend Services at the source's base
(``read_with = "backend_services"``). An unbound EHR is read with the user's token as the organisation its
``[[ehr]]`` entry names (name, ODS code, kind, deadline). Every other organisation is read with Backend
Services. Never two copies of one organisation.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Config, Source
from launch.registration import BACKEND_SERVICES

USER = "user"  # read with the launch's own token at the launching EHR


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
    iss = launch_iss.rstrip("/")
    ehr = config.ehr_for_issuer(iss)
    bound = ehr.source if ehr else next((s.id for s in config.sources if s.base_url == iss), None)
    read_with_user = ehr is None or ehr.read_with != BACKEND_SERVICES
    sources: list[RecordSource] = []
    for s in config.sources:
        if s.id == bound and read_with_user:  # the launching EHR's own organisation, read at the EHR as the user
            sources.insert(0, RecordSource(s.id, s.name, s.ods_code, s.kind, iss, s.timeout, USER, s))
        else:
            sources.append(RecordSource(s.id, s.name, s.ods_code, s.kind, s.base_url, s.timeout, s.auth, s))
    if bound is None and ehr is not None:
        sources.insert(
            0, RecordSource("launching-ehr", ehr.name, ehr.ods_code or "", ehr.kind or "", iss, ehr.timeout, USER)
        )
    return sources
