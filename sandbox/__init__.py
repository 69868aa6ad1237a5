"""The launch sandbox: a simulated host EHR, its SMART authorisation server, and one FHIR server per organisation."""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from flask import Flask, g, jsonify, render_template, request
from jinja2 import ChoiceLoader, FileSystemLoader

import app as viewer_package
from app.config import Config, origin_of

from .auth_server import build_authorization_server
from .dataset import Dataset, load_dataset
from .keys import ServerKeys
from .settings import SandboxSettings, sandbox_settings
from .state import SandboxState

HERE = Path(__file__).resolve().parent
VIEWER_FILES = Path(viewer_package.__file__).resolve().parent  # base.html and the static assets


@dataclass(frozen=True)
class SplitSettings(SandboxSettings):
    """Settings of a sandbox split over processes: some organisations' FHIR bases on origins of their own."""

    org_urls: tuple[tuple[str, str], ...] = ()  # (org id, origin): that org's base is <origin>/fhir/<org id>

    def fhir_base(self, org_id: str) -> str:
        origin = dict(self.org_urls).get(org_id)
        return f"{origin}/fhir/{org_id}" if origin else super().fhir_base(org_id)


def split_settings(settings: SandboxSettings, org_urls: Mapping[str, str]) -> SandboxSettings:
    unknown = set(org_urls) - {o.id for o in settings.organisations}
    if unknown:
        raise ValueError(f"no organisation {', '.join(sorted(unknown))} in this sandbox")
    values = {f.name: getattr(settings, f.name) for f in fields(SandboxSettings)}
    return SplitSettings(**values, org_urls=tuple((k, v.rstrip("/")) for k, v in sorted(org_urls.items())))


def create_sandbox_app(
    config: Config,
    dataset: Dataset | None = None,
    *,
    keys: ServerKeys | None = None,
    org_urls: Mapping[str, str] | None = None,
    orgs: Collection[str] | None = None,
) -> Flask:
    """One Flask app serves the EHR pages, ``/auth/*`` and every ``/fhir/<org>`` base.

    For a sandbox split over processes (benchmarks): ``keys`` shared by every process (``ServerKeys.shared``),
    ``org_urls`` the origin each organisation's FHIR base is reached at (the same map in every process, so
    issued ``aud``, ``iss`` links and next links agree), and ``orgs`` the only organisations whose FHIR bases
    this process answers (404 for the others).
    """
    settings = sandbox_settings(config)
    if org_urls:
        settings = split_settings(settings, org_urls)
    unknown = set(orgs or ()) - {o.id for o in settings.organisations}
    if unknown:
        raise ValueError(f"no organisation {', '.join(sorted(unknown))} in this sandbox")
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
    state = SandboxState(settings, dataset or load_dataset(settings), keys or ServerKeys.generate())
    app.extensions["sandbox_state"] = state
    app.extensions["sandbox_auth"] = build_authorization_server(app, state)
    viewer_origin = origin_of(config.viewer.base_url)

    from . import auth_views, ehr, fhir_server, inspector

    app.register_blueprint(ehr.bp)
    app.register_blueprint(auth_views.bp)
    app.register_blueprint(fhir_server.bp)
    app.register_blueprint(inspector.bp)

    if orgs is not None:
        served = frozenset(orgs)

        @app.before_request
        def _only_these_orgs():  # runs after the FHIR blueprint has put the organisation in g.org_id
            if request.blueprint == "fhir" and g.get("org_id") not in served:
                return jsonify(resourceType="OperationOutcome", issue=[{"severity": "error", "code": "not-found"}]), 404
            return None

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
