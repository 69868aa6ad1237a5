"""The shared care record viewer (Flask application package)."""

from __future__ import annotations

import secrets
from pathlib import Path

from flask import Flask

from .config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent


def create_app(config: Config | None = None) -> Flask:
    """Application factory: one app per process, configured from ``SCR_CONFIG`` unless given a Config."""
    config = config or load_config()
    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"))
    app.config["SCR"] = config
    app.secret_key = config.viewer.secret_key or secrets.token_bytes(32)
    app.config["SESSION_COOKIE_NAME"] = "scr_session"  # distinct from the sandbox's (cookies ignore ports)

    from launch.keys import load_keyset

    # Load (in development: create) the signing keys now, so a missing key fails at start, not mid-launch.
    app.extensions["viewer_keys"] = load_keyset(config.viewer.keys_file, generate=config.viewer.generate_dev_keys)

    from .views import register_views

    register_views(app)
    return app
