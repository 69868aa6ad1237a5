"""The shared care record viewer (Flask application package).

``create_app`` is a list of installs, lowest layer first: state, the SMART client, the audit trail, the
record, access, the pipeline that orders them, then the pages and operations.
"""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from pathlib import Path

from flask import Flask, g, render_template, request, session
from werkzeug.exceptions import HTTPException

from .config import Config, load_config
from .record.catalogue import CATALOGUE, EXPORT_AUDIENCE, Catalogue

HERE = Path(__file__).resolve().parent
log = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def create_app(config: Config | None = None, catalogue: Catalogue = CATALOGUE) -> Flask:
    """Application factory: one app per process, configured from ``SCR_CONFIG`` unless given a Config.
    ``catalogue``: the record sections (tests pass their own to prove everything is derived from it)."""
    import core.state
    import launch

    from . import access, audit, observability, record, security, views
    from .access.cli import access_cli
    from .access.register import AccessRegister
    from .pipeline import RecordPipeline
    from .services import Services, install, services

    config = config or load_config()
    app = Flask(__name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"))
    app.config["SCR"] = config
    app.secret_key = config.viewer.secret_key or secrets.token_bytes(32)

    redis_url = config.state.redis_url
    store = core.state.init_app(app, redis_url, config.state.key_prefix)
    settings = launch.ClientSettings(config.viewer.base_url, config.ehrs, catalogue.fetch_types)
    smart = launch.init_app(app, settings, store, config.viewer.keys_file, config.viewer.generate_dev_keys)
    audit_store, trail, alerts = audit.init_app(app, config)
    records = record.init_app(config, catalogue, smart, shared=store if redis_url else None)
    # The search page: for anyone who may open a page it searches (it finds only the rows of those pages).
    audiences = {**catalogue.audiences(), "export": EXPORT_AUDIENCE, "search": catalogue.search_audience()}
    governance, training = access.init_app(config, audiences, store, audit_store, trail, alerts, smart.tokens)
    register = AccessRegister(audit_store, trail, default_days=config.access.register_default_days)
    smart.register = register.lookup  # the identity source "register"
    app.cli.add_command(access_cli)
    pipeline = RecordPipeline(records, governance, trail, catalogue)
    smart.on_launch = pipeline.launch_completed
    install(
        app,
        Services(
            config,
            catalogue,
            store,
            smart,
            audit_store,
            trail,
            alerts,
            training,
            records,
            governance,
            pipeline,
            register=register,
        ),
    )
    views.init_app(app, catalogue)
    observability.install_operations(app, audit_store=lambda: services(app).audit_store, state_store=lambda: store)
    security.install_request_limits(app)
    security.install_security_headers(app)
    _install_template_helpers(app)
    _install_request_ids(app)
    _install_error_pages(app)
    return app


def _install_template_helpers(app: Flask) -> None:
    from core import ukdates
    from core.nhs_number import format_nhs_number

    from .record.values import number
    from .views.csrf import csrf_token
    from .views.dateinput import parts as date_parts

    app.jinja_env.filters["nhs"] = lambda v: format_nhs_number(v or "")
    app.jinja_env.filters["clock"] = ukdates.uk_time  # a UNIX time as HH:mm, UK local time
    ukdates.register(app.jinja_env)
    app.jinja_env.globals["date_parts"] = date_parts
    app.jinja_env.filters["number"] = number  # a value as recorded (app/record/values.py)
    app.jinja_env.globals["csrf_token"] = csrf_token


def _install_request_ids(app: Flask) -> None:
    @app.before_request
    def _request_id():
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else str(uuid.uuid4())
        if getattr(session, "unavailable", False):
            from core.state import StoreUnavailable

            raise StoreUnavailable("the session store could not be read")

    @app.after_request
    def _echo(resp):
        resp.headers["X-Request-Id"] = g.get("request_id", "")
        return resp


def _install_error_pages(app: Flask) -> None:
    from app.audit.store import AuditUnavailable
    from core.state import StoreUnavailable
    from launch.errors import LaunchError

    from .services import services

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
            services(app).audit.record(
                "refusal" if err.status < 500 else "error",
                request_id=g.get("request_id", ""),
                user=None,
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
        if isinstance(err, HTTPException) and err.code and err.code < 500:
            title, message = _CLIENT_ERRORS.get(err.code, ("Request not accepted", "The request could not be handled."))
            log.info("request %s: %s %s", g.get("request_id"), err.code, err.name)
            resp = app.make_response(
                (
                    render_template(
                        "viewer/error.html", error=_Plain(err.code, title, message), request_id=g.get("request_id")
                    ),
                    err.code,
                )
            )
            for name, value in err.get_headers():
                if name == "Allow":
                    resp.headers["Allow"] = value
            return resp
        log.exception("request %s failed", g.get("request_id"))
        return render_template(
            "viewer/error.html",
            error=_Plain(
                500, "Something went wrong", "An unexpected error stopped the record from opening. It has been logged."
            ),
            request_id=g.get("request_id"),
        ), 500


_CLIENT_ERRORS = {
    405: ("Request not accepted", "This address does not accept that kind of request."),
    413: ("Too much data sent", "The form sent more data than the Shared Care Record accepts. Nothing was saved."),
    431: ("Request not accepted", "The request carried more header data than the Shared Care Record accepts."),
}


class _Plain:
    def __init__(self, status: int, title: str, message: str) -> None:
        self.status, self.title, self.message = status, title, message
