"""The viewer's pages: start page, help, the record pages, the access forms, the privacy officer's pages."""

from __future__ import annotations

from flask import Flask, render_template

from app.record.catalogue import Catalogue

from . import access, privacy, record, register, session

# Paths under /r/<ctx>/ that are not section pages: a section may not take their name.
FIXED_RECORD_PATHS = frozenset({"progress", "export.json", "access", "privacy", "register", "search"})


def init_app(app: Flask, catalogue: Catalogue) -> None:
    config = app.config["SCR"]
    clash = {s.name for s in catalogue.pages} & FIXED_RECORD_PATHS
    if clash:
        raise ValueError(f"record sections would shadow fixed record pages: {', '.join(sorted(clash))}")

    @app.get("/help")
    def help_page():
        return render_template("viewer/help.html")

    @app.get("/")
    def start():
        return render_template("viewer/start.html", ehrs=[e for e in config.ehrs if e.standalone])

    app.register_blueprint(record.bp)
    app.register_blueprint(access.bp)
    app.register_blueprint(privacy.bp)
    app.register_blueprint(register.bp)
    app.register_blueprint(session.bp)  # logout, the ended page, idle and absolute limits
