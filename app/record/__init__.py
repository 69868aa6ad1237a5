"""The consolidated record: the section catalogue, fetch and match at every organisation, merge.

``init_app`` builds the record service; it knows FHIR, not Flask requests.
"""

from __future__ import annotations

from app.config import Config
from core.state import KeyValueStore
from launch.flow import LaunchServices

from .catalogue import Catalogue
from .service import RecordService


def init_app(
    config: Config, catalogue: Catalogue, launch: LaunchServices, shared: KeyValueStore | None
) -> RecordService:
    """``shared``: the Redis store when configured, so any worker or host reuses a launch's fetch."""
    return RecordService(config, catalogue, launch.tokens, launch.backend, shared=shared)
