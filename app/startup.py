"""Checks before the viewer takes traffic that need the network (``python -m app`` and gunicorn's master run
them, once, before any worker starts).

A Backend Services source must say where its token endpoint is: an explicit ``token_url``, its
smart-configuration or its CapabilityStatement. A source that answers but offers none of them is a
configuration error at start-up, not a surprise at the first launch. A source that does not answer at all
is only a warning: one organisation being down must not keep the viewer from everyone, and it is asked
again at the first launch that needs it.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from launch.discovery import Discovery
from launch.errors import DiscoveryFailed, DiscoveryUnreachable
from launch.registration import BACKEND_SERVICES

from .config import Config, ConfigError

log = logging.getLogger(__name__)


def check_sources(config: Config, discovery: Discovery | None = None) -> list[str]:
    """Raise ConfigError naming every source that answers without a token endpoint; return warnings."""
    discovery = discovery or Discovery()
    needing = [s for s in config.sources if s.auth == BACKEND_SERVICES and not s.token_url]
    if not needing:
        return []

    def probe(source) -> tuple[str, str | None]:
        try:
            discovery.token_endpoint(source.base_url)
        except DiscoveryUnreachable as exc:
            return "warning", f"[[source]] {source.id!r}: could not be asked for its token endpoint now ({exc.detail})"
        except DiscoveryFailed as exc:
            return "error", (
                f"[[source]] {source.id!r} offers no Backend Services token endpoint ({exc.detail}); "
                "set token_url, or ask the organisation to publish .well-known/smart-configuration"
            )
        return "ok", None

    with ThreadPoolExecutor(max_workers=min(8, len(needing))) as pool:
        found = list(pool.map(probe, needing))
    errors = [message for kind, message in found if kind == "error"]
    if errors:
        raise ConfigError(f"{config.path}: " + "; ".join(errors))
    warnings = [message for kind, message in found if kind == "warning"]
    for message in warnings:
        log.warning("%s", message)
    return warnings
