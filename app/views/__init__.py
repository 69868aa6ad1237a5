"""The viewer's pages: start page, the record pages, errors."""

from __future__ import annotations

from flask import Flask, render_template

from . import access, privacy, record


def register_views(app: Flask) -> None:
    config = app.config["SCR"]

    @app.get("/help")
    def help_page():
        return render_template("viewer/help.html")

    @app.get("/")
    def start():
        return render_template("viewer/start.html", ehrs=[e for e in config.ehrs if e.standalone])

    app.register_blueprint(record.bp)
    app.register_blueprint(access.bp)
    app.register_blueprint(privacy.bp)
