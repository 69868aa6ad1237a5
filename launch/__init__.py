"""SMART App Launch client: EHR + standalone launch, tokens, Backend Services, the viewer's own keys.

``init_app`` installs it on a Flask app; ``services()`` reaches it from a request.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask

from core.state import KeyValueStore

from .backend import BackendTokens
from .context import ContextStore
from .discovery import Discovery
from .flow import EXTENSION, LaunchServices, services
from .keys import load_keyset
from .registration import ClientSettings
from .tokens import TokenManager

log = logging.getLogger(__name__)


def init_app(
    app: Flask, settings: ClientSettings, store: KeyValueStore, keys_file: Path, generate_dev_keys: bool
) -> LaunchServices:
    """Keys load (in development: are created) now, so a missing key fails at start, not mid-launch."""
    from .views import bp

    for ehr in settings.ehrs:
        grant = ehr.identity.default_grant
        if grant is not None:  # a deliberate, visible choice: every user this EHR launches gets these codes
            log.warning(
                "identity source ehr_default is ON for %s (%s): users it launches without another role get "
                "role %s, activities %s",
                ehr.name,
                ehr.issuer,
                ",".join(grant.role_codes) or "-",
                ",".join(grant.activity_codes),
            )
    keyset = load_keyset(keys_file, generate=generate_dev_keys)
    discovery = Discovery()
    tokens = TokenManager(store, settings, keyset)
    launch = LaunchServices(
        settings=settings,
        store=store,
        discovery=discovery,
        tokens=tokens,
        contexts=ContextStore(store),
        keyset=keyset,
        backend=BackendTokens(store, discovery, keyset),
    )
    app.extensions[EXTENSION] = launch
    app.register_blueprint(bp)
    return launch


__all__ = ["ClientSettings", "LaunchServices", "init_app", "services"]
