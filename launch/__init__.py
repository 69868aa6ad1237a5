"""SMART App Launch client: EHR + standalone launch, tokens, Backend Services, the viewer's own keys.

``init_app`` installs it on a Flask app; ``services()`` reaches it from a request.
"""

from __future__ import annotations

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


def init_app(
    app: Flask, settings: ClientSettings, store: KeyValueStore, keys_file: Path, generate_dev_keys: bool
) -> LaunchServices:
    """Keys load (in development: are created) now, so a missing key fails at start, not mid-launch."""
    from .views import bp

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
