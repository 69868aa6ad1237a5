"""The shared care record viewer (Flask application package)."""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from pathlib import Path

from flask import Flask, g, render_template, request

from .config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def create_app(config: Config | None = None) -> Flask:
    """Application factory: one app per process, configured from ``SCR_CONFIG`` unless given a Config."""
    config = config or load_config()
    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"))
    app.config["SCR"] = config
    app.secret_key = config.viewer.secret_key or secrets.token_bytes(32)

    from launch.backend import BackendTokens
    from launch.context import ContextStore
    from launch.discovery import Discovery
    from launch.flow import LaunchServices
    from launch.keys import load_keyset
    from launch.session import ServerSessionInterface
    from launch.store import MemoryStore
    from launch.tokens import TokenManager
    from launch.views import bp as launch_bp

    from .record.service import RecordService

    # Keys load (in development: are created) now, so a missing key fails at start, not mid-launch.
    keyset = load_keyset(config.viewer.keys_file, generate=config.viewer.generate_dev_keys)
    store = MemoryStore()
    discovery = Discovery()
    tokens = TokenManager(store, config, keyset)
    app.session_interface = ServerSessionInterface(store)
    app.extensions["launch"] = LaunchServices(
        config=config,
        store=store,
        discovery=discovery,
        tokens=tokens,
        contexts=ContextStore(store),
        keyset=keyset,
    )
    app.extensions["record"] = RecordService(config, tokens, BackendTokens(store, discovery, keyset))
    app.register_blueprint(launch_bp)

    from .security import install_security_headers
    from .views import register_views

    register_views(app)
    install_security_headers(app)
    _install_request_ids(app)
    _install_error_pages(app)
    return app


def _install_request_ids(app: Flask) -> None:
    @app.before_request
    def _request_id():
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else str(uuid.uuid4())

    @app.after_request
    def _echo(resp):
        resp.headers["X-Request-Id"] = g.get("request_id", "")
        return resp


def _install_error_pages(app: Flask) -> None:
    from launch.errors import LaunchError

    @app.errorhandler(LaunchError)
    def _launch_error(err: LaunchError):
        log.warning("request %s: %s: %s", g.get("request_id"), err.audit_code, err.detail)
        return render_template("viewer/error.html", error=err, request_id=g.get("request_id")), err.status

    @app.errorhandler(404)
    def _not_found(err):
        return render_template(
            "viewer/error.html",
            error=_Plain(404, "Page not found", "There is no page at this address."),
            request_id=g.get("request_id"),
        ), 404

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        if hasattr(err, "code") and isinstance(getattr(err, "code", None), int) and err.code < 500:
            return render_template(
                "viewer/error.html",
                error=_Plain(err.code, "Request not accepted", "The request could not be handled."),
                request_id=g.get("request_id"),
            ), err.code
        log.exception("request %s failed", g.get("request_id"))
        return render_template(
            "viewer/error.html",
            error=_Plain(
                500, "Something went wrong", "An unexpected error stopped the record from opening. It has been logged."
            ),
            request_id=g.get("request_id"),
        ), 500


class _Plain:
    def __init__(self, status: int, title: str, message: str) -> None:
        self.status, self.title, self.message = status, title, message
