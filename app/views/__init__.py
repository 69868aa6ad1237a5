"""The viewer's pages. Until the SMART client lands, /launch shows what the EHR sent."""

from __future__ import annotations

from flask import Flask, jsonify, render_template, request

from launch.keys import public_jwks


def register_views(app: Flask) -> None:
    config = app.config["SCR"]

    @app.get("/")
    def start():
        return render_template("viewer/start.html", ehrs=[e for e in config.ehrs if e.standalone])

    @app.get("/launch")
    def launch():
        iss, launch_id = request.args.get("iss", ""), request.args.get("launch", "")
        ehr = config.ehr_for_issuer(iss)
        status = 200 if ehr and launch_id else 400
        return render_template("viewer/launch_received.html", iss=iss, launch=launch_id, ehr=ehr), status

    @app.get("/.well-known/jwks.json")
    def jwks():
        return jsonify(public_jwks(app.extensions["viewer_keys"]))

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    @app.after_request
    def _headers(resp):
        origins = " ".join(sorted({o for e in config.ehrs for o in e.frame_origins})) or "'none'"
        resp.headers.setdefault(
            "Content-Security-Policy",
            f"default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors {origins}",
        )
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp
