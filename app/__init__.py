"""The shared care record viewer (Flask application package)."""

from __future__ import annotations

import logging
import os
import re
import secrets
import uuid
from pathlib import Path

from flask import Flask, g, render_template, request, session

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

    from core.state.redis import RedisStore
    from core.state.session import ServerSessionInterface
    from core.state.store import MemoryStore
    from launch.backend import BackendTokens
    from launch.context import ContextStore
    from launch.discovery import Discovery
    from launch.flow import LaunchServices
    from launch.keys import load_keyset
    from launch.tokens import TokenManager
    from launch.views import bp as launch_bp

    from .record.service import RecordService

    # Keys load (in development: are created) now, so a missing key fails at start, not mid-launch.
    keyset = load_keyset(config.viewer.keys_file, generate=config.viewer.generate_dev_keys)
    redis_url = os.environ.get("REDIS_URL") or config.raw.get("state", {}).get("redis_url") or ""
    store = RedisStore(redis_url) if redis_url else MemoryStore()
    discovery = Discovery()
    from launch.registration import ClientSettings

    from .record.fetch import FETCH_TYPES

    settings = ClientSettings(config.viewer.base_url, config.ehrs, FETCH_TYPES)
    tokens = TokenManager(store, settings, keyset)
    app.session_interface = ServerSessionInterface(store)
    app.extensions["launch"] = LaunchServices(
        settings=settings,
        store=store,
        discovery=discovery,
        tokens=tokens,
        contexts=ContextStore(store),
        keyset=keyset,
    )
    app.extensions["record"] = RecordService(
        config, tokens, BackendTokens(store, discovery, keyset), shared=store if redis_url else None
    )
    app.extensions["state_store"] = store
    _install_governance(app, config, store, tokens)
    app.register_blueprint(launch_bp)

    from .observability import install_operations
    from .security import install_security_headers
    from .views import register_views

    register_views(app)
    install_operations(app)
    install_security_headers(app)
    _install_template_helpers(app)
    _install_request_ids(app)
    _install_error_pages(app)
    return app


def _install_governance(app: Flask, config: Config, store, tokens) -> None:
    """Audit trail, alerts, training register and the access service, sharing one database."""
    from app.access.policy import AccessRules
    from app.access.service import AccessService
    from app.access.training import TrainingRegister
    from app.audit.alerts import AlertBox, WebhookDeliverer
    from app.audit.cli import audit_cli
    from app.audit.store import AuditStore, AuditUnavailable, database_url
    from app.audit.trail import AuditTrail
    from app.config import resolve_path

    audit_conf = config.raw.get("audit", {})
    url = database_url(
        audit_conf.get("database_url") or None,
        resolve_path(config.path.parent, audit_conf.get("sqlite_path", "../var/audit.sqlite3")),
    )
    audit_store = AuditStore(url)
    alerts = AlertBox(
        audit_store, [WebhookDeliverer(u) for u in config.raw.get("alerts", {}).get("webhook_urls", []) if u]
    )
    access_conf = dict(config.raw.get("access", {}))
    training = TrainingRegister(audit_store, access_conf.pop("training", []))
    try:
        audit_store.create_schema()
    except (AuditUnavailable, Exception) as exc:  # noqa: BLE001 - start anyway; every access will be refused
        log.error("audit store unavailable at start (%s): records will not be shown until it is back", exc)
    trail = AuditTrail(audit_store, observer=config.viewer.base_url)
    app.extensions.update(
        audit_store=audit_store,
        audit=trail,
        alerts=alerts,
        training=training,
        access=AccessService(AccessRules.from_config(access_conf), store, trail, alerts, training, tokens),
    )
    app.cli.add_command(audit_cli)

    def on_launch(ctx, request_id: str) -> None:
        """Audit the launch, then start gathering the record before the browser asks for it."""
        trail.record(
            "launch",
            request_id=request_id,
            ctx=ctx,
            description=f"launch from {ctx.ehr_name}",
            details={"standalone": ctx.standalone, "scope": ctx.scope},
        )

        access = app.extensions["access"]
        app.extensions["record"].start_early(
            ctx, request_id, then=lambda entry: access.prepare(ctx, entry.nhs_number, request_id)
        )

    app.extensions["launch"].on_launch = on_launch


def _install_template_helpers(app: Flask) -> None:
    import time

    from core.nhs_number import format_nhs_number

    from .views.csrf import csrf_token

    app.jinja_env.filters["nhs"] = lambda v: format_nhs_number(v or "")
    app.jinja_env.filters["clock"] = lambda t: time.strftime("%H:%M", time.localtime(t))
    app.jinja_env.globals["csrf_token"] = csrf_token


def _install_request_ids(app: Flask) -> None:
    @app.before_request
    def _request_id():
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else str(uuid.uuid4())
        if getattr(session, "unavailable", False):
            from core.state.store import StoreUnavailable

            raise StoreUnavailable("the session store could not be read")

    @app.after_request
    def _echo(resp):
        resp.headers["X-Request-Id"] = g.get("request_id", "")
        return resp


def _install_error_pages(app: Flask) -> None:
    from app.audit.store import AuditUnavailable
    from launch.errors import LaunchError

    from .views.gate import Interrupt

    @app.errorhandler(Interrupt)
    def _interrupt(exc: Interrupt):
        return exc.response

    @app.errorhandler(AuditUnavailable)
    def _audit_down(exc: AuditUnavailable):
        log.error("request %s: refused because the audit trail is unavailable: %s", g.get("request_id"), exc)
        return render_template(
            "viewer/error.html",
            error=_Plain(
                503,
                "The record cannot be shown right now",
                "Every look at a shared record must be recorded, and the record of access cannot be written at the "
                "moment, so nothing is shown. Try again shortly; if it keeps happening, contact the service desk.",
            ),
            request_id=g.get("request_id"),
        ), 503

    from core.state.store import StoreUnavailable

    @app.errorhandler(StoreUnavailable)
    def _store_down(exc: StoreUnavailable):
        log.error("request %s: session store unavailable: %s", g.get("request_id"), exc)
        return render_template(
            "viewer/error.html",
            error=_Plain(
                503,
                "The Shared Care Record is temporarily unavailable",
                "The service that keeps your sign-in is not responding. Nothing has been lost: wait a moment, "
                "then open the record again from your clinical system.",
            ),
            request_id=g.get("request_id"),
        ), 503

    @app.errorhandler(LaunchError)
    def _launch_error(err: LaunchError):
        log.warning("request %s: %s: %s", g.get("request_id"), err.audit_code, err.detail)
        try:
            app.extensions["audit"].record(
                "refusal" if err.status < 500 else "error",
                request_id=g.get("request_id", ""),
                user={},
                outcome="minor-failure" if err.status < 500 else "serious-failure",
                description=f"{err.audit_code}: {err.detail}"[:1000],
            )
        except AuditUnavailable:
            log.error("request %s: could not audit %s", g.get("request_id"), err.audit_code)
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
