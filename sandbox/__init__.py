"""The launch sandbox: a simulated host EHR, its SMART authorisation server, and one FHIR server per organisation."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from flask import Flask, render_template
from jinja2 import ChoiceLoader, FileSystemLoader

import app as viewer_package
from app.config import Config, origin_of

from .auth_server import build_authorization_server
from .dataset import Dataset, load_dataset
from .keys import ServerKeys
from .settings import sandbox_settings
from .state import SandboxState

HERE = Path(__file__).resolve().parent
VIEWER_FILES = Path(viewer_package.__file__).resolve().parent  # base.html and the static assets


def create_sandbox_app(config: Config, dataset: Dataset | None = None) -> Flask:
    """One Flask app serves the EHR pages, ``/auth/*`` and every ``/fhir/<org>`` base."""
    settings = sandbox_settings(config)
    app = Flask(__name__, static_folder=str(VIEWER_FILES / "static"))
    # The sandbox pages extend the viewer's base.html: its own folder first, then the viewer's.
    app.jinja_loader = ChoiceLoader(
        [FileSystemLoader(HERE / "templates"), FileSystemLoader(VIEWER_FILES / "templates")]
    )
    app.secret_key = secrets.token_bytes(32)
    app.config.update(
        SESSION_COOKIE_NAME="sandbox_ehr_session",  # cookies ignore ports: keep apart from the viewer's
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    state = SandboxState(settings, dataset or load_dataset(settings), ServerKeys.generate())
    app.extensions["sandbox_state"] = state
    app.extensions["sandbox_auth"] = build_authorization_server(app, state)
    viewer_origin = origin_of(config.viewer.base_url)

    from . import auth_views, ehr, fhir_server, inspector

    app.register_blueprint(ehr.bp)
    app.register_blueprint(auth_views.bp)
    app.register_blueprint(fhir_server.bp)
    app.register_blueprint(inspector.bp)

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault(
            "Content-Security-Policy",
            f"default-src 'self'; img-src 'self' data:; frame-src 'self' {viewer_origin}; "
            "frame-ancestors 'self'; base-uri 'none'; form-action 'self' " + viewer_origin,
        )
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        return resp

    @app.errorhandler(400)
    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(405)
    def _error(err):
        return render_template("sandbox/error.html", error=err), err.code

    app.config["SANDBOX_VIEWER_ORIGIN"] = viewer_origin
    app.jinja_env.filters["timestamp"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    return app
