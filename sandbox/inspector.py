"""The launch inspector and the admin switches: what each launch carried, what the viewer asked for.

Pages for people (``/inspector``) and JSON for tools (``/inspector/api/...``, ``/admin/...``).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from flask import Blueprint, abort, current_app, jsonify, redirect, render_template, request, url_for

from .ehr import _check_csrf
from .settings import DISCOVERY_NOTES, SMART_MODE_NOTES
from .state import SWITCHES, Launch, SandboxState

bp = Blueprint("inspector", __name__)


def _state() -> SandboxState:
    return current_app.extensions["sandbox_state"]


def launch_summary(state: SandboxState, launch: Launch, with_details: bool = False) -> dict:
    staff = state.dataset.staff.get(launch.user_id)
    person = state.dataset.patient(launch.nhs_number)
    out = {
        "id": launch.id,
        "created": launch.created,
        "source": launch.source,
        "user": {"id": launch.user_id, "name": staff.display_name if staff else launch.user_id},
        "organisation": launch.org_id,
        "iss": launch.iss,
        "patient": {"id": launch.patient_id, "nhs_number": launch.nhs_number, "name": person.name if person else ""},
        "encounter": launch.encounter_id,
        "need_patient_banner": launch.need_patient_banner,
        "launch_url": launch.launch_url,
    }
    if with_details:
        out["tokens"] = [
            {
                "kind": t.kind,
                "issued_at": t.issued_at,
                "expires_at": t.expires_at,
                "expired": bool(t.expires_at and t.expires_at < time.time()),
                "client_id": t.client_id,
                "scope": t.scope,
                "header": t.header,
                "claims": t.claims,
            }
            for t in launch.tokens
        ]
        out["requests"] = [asdict(r) for r in state.requests_for_launch(launch)]
    return out


@bp.get("/inspector")
def inspector():
    state = _state()
    launches = [launch_summary(state, launch) for launch in state.recent_launches()]
    return render_template(
        "sandbox/inspector.html",
        launches=launches,
        faults=state.faults,
        switches=SWITCHES,
        switches_on=state.switches,
        modes=_modes(),
        smart=state.smart,
        smart_modes=SMART_MODE_NOTES,
        discovery_modes=DISCOVERY_NOTES,
        staff=sorted(state.dataset.staff.values(), key=lambda s: (s.organisation, s.display_name)),
    )


@bp.get("/inspector/launch/<launch_id>")
def launch_detail(launch_id: str):
    state = _state()
    launch = state.launch(launch_id)
    if launch is None:
        abort(404, "No such launch (the inspector keeps the most recent 200).")
    return render_template("sandbox/launch.html", launch=launch_summary(state, launch, with_details=True))


@bp.get("/inspector/api/launches")
def api_launches():
    state = _state()
    return jsonify([launch_summary(state, launch) for launch in state.recent_launches()])


@bp.get("/inspector/api/launches/<launch_id>")
def api_launch(launch_id: str):
    state = _state()
    launch = state.launch(launch_id)
    if launch is None:
        return jsonify({"error": "unknown launch"}), 404
    return jsonify(launch_summary(state, launch, with_details=True))


@bp.get("/inspector/api/requests")
def api_requests():
    """Recent FHIR requests, optionally for one organisation (``?org=``)."""
    state = _state()
    org = request.args.get("org")
    with state.lock:
        rows = [asdict(r) for r in state.requests if not org or r.org_id == org]
    return jsonify(rows)


# ---- admin: faults and simulated errors --------------------------------------------------------------


@bp.get("/admin/faults")
def get_faults():
    return jsonify({org: asdict(f) for org, f in _state().faults.items()})


@bp.post("/admin/faults/<org_id>")
def set_faults(org_id: str):
    """JSON ``{"latency_ms": 200, "mode": "error_500"}`` (either key), or the inspector's form."""
    state = _state()
    data = request.get_json(silent=True) if request.is_json else None
    if data is None:
        _check_csrf()
        data = {"latency_ms": int(request.form.get("latency_ms") or 0), "mode": request.form.get("mode")}
    if not isinstance(data, dict):
        return jsonify({"error": "send a JSON object"}), 400
    try:
        faults = state.set_faults(org_id, data.get("latency_ms"), data.get("mode"))
    except KeyError:
        return jsonify({"error": f"unknown organisation {org_id}"}), 404
    except (TypeError, ValueError) as exc:
        return jsonify({"error": str(exc)}), 400
    if not request.is_json:
        return redirect(url_for("inspector.inspector"))
    return jsonify(asdict(faults))


@bp.get("/admin/smart")
def get_smart():
    """Each organisation's SMART profile: ``{"gp": {"smart_mode": "nhs", "discovery": "full"}, ...}``."""
    return jsonify({org: asdict(p) for org, p in _state().smart.items()})


@bp.post("/admin/smart/<org_id>")
def set_smart(org_id: str):
    """JSON ``{"smart_mode": "generic", "discovery": "token_endpoint_only"}`` (either key), or the inspector's form."""
    state = _state()
    data = request.get_json(silent=True) if request.is_json else None
    if data is None:
        _check_csrf()
        data = {"smart_mode": request.form.get("smart_mode"), "discovery": request.form.get("discovery")}
    if not isinstance(data, dict):
        return jsonify({"error": "send a JSON object"}), 400
    unknown = sorted(set(data) - {"smart_mode", "discovery"})
    if unknown:
        return jsonify({"error": f"unknown key(s): {', '.join(unknown)}; send smart_mode and/or discovery"}), 400
    try:
        profile = state.set_smart(org_id, data.get("smart_mode"), data.get("discovery"))
    except KeyError:
        return jsonify({"error": f"unknown organisation {org_id}"}), 404
    except (TypeError, ValueError) as exc:
        return jsonify({"error": str(exc)}), 400
    if not request.is_json:
        return redirect(url_for("inspector.inspector"))
    return jsonify(asdict(profile))


@bp.get("/admin/switches")
def get_switches():
    state = _state()
    return jsonify({name: name in state.switches for name in SWITCHES})


@bp.post("/admin/switches")
def set_switches():
    """JSON ``{"deny_consent": true, ...}``, or the inspector's form (one switch at a time)."""
    state = _state()
    if request.is_json:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            return jsonify({"error": "send a JSON object of switch names to true/false"}), 400
    else:
        _check_csrf()
        data = {request.form.get("name", ""): request.form.get("on") == "1"}
    unknown = [k for k in data if k not in SWITCHES]
    if unknown:
        return jsonify({"error": f"unknown switch(es): {', '.join(unknown)}", "switches": list(SWITCHES)}), 400
    for name, on in data.items():
        state.set_switch(name, bool(on))
    if not request.is_json:
        return redirect(url_for("inspector.inspector"))
    return get_switches()


@bp.post("/admin/reset")
def reset():
    _state().reset()
    return get_switches()


def _modes() -> tuple[str, ...]:
    from .settings import FAULT_MODES

    return FAULT_MODES
