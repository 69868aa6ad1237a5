"""The launch inspector and the admin switches: what each launch carried, what the viewer asked for.

Pages for people (``/inspector``) and JSON for tools (``/inspector/api/...``, ``/admin/...``).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from flask import Blueprint, abort, current_app, flash, jsonify, redirect, render_template, request, url_for

from .ehr import _check_csrf
from .settings import (
    DISCOVERY_NOTES,
    FAULT_MODE_NOTES,
    FAULT_MODES,
    SMART_MODE_NOTES,
    Faults,
    Organisation,
    SmartProfile,
)
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
        modes=FAULT_MODES,
        mode_notes=FAULT_MODE_NOTES,
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
# Each switch answers JSON to tools and, to the inspector's forms, goes back to the inspector with a
# confirmation of exactly what changed.


def _form_post() -> bool:
    """A browser's form (the inspector's buttons), not a tool's JSON or a bare ``curl -X POST``."""
    return request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data")


def _org_or_404(org_id: str) -> Organisation:
    org = _state().settings.organisation(org_id)
    if org is None:
        abort(404, f"No organisation {org_id!r} in this sandbox.")
    return org


def _server(org: Organisation) -> str:
    return f"{org.name} ({org.id}) FHIR server"


def _delay(latency_ms: int) -> str:
    return f"adds {latency_ms} ms to every response" if latency_ms else "adds no delay"


def faults_change(org: Organisation, before: Faults, after: Faults) -> str:
    """ "Northgate Hospitals … (hospital) FHIR server: now answers 500 … (before: answers normally)."""
    changes = []
    if after.mode != before.mode:
        changes.append(f"now {FAULT_MODE_NOTES[after.mode]} (before: {FAULT_MODE_NOTES[before.mode]})")
    if after.latency_ms != before.latency_ms:
        changes.append(f"now {_delay(after.latency_ms)} (before: {_delay(before.latency_ms)})")
    if not changes:
        return (
            f"{_server(org)}: nothing changed; it still {FAULT_MODE_NOTES[after.mode]} and {_delay(after.latency_ms)}."
        )
    return f"{_server(org)}: {'; '.join(changes)}."


def smart_change(org: Organisation, before: SmartProfile, after: SmartProfile) -> str:
    changes = []
    if after.smart_mode != before.smart_mode:
        changes.append(f"SMART mode now {after.smart_mode} (before: {before.smart_mode})")
    if after.discovery != before.discovery:
        changes.append(f"discovery now {after.discovery} (before: {before.discovery})")
    if not changes:
        return (
            f"{org.name} ({org.id}): nothing changed; SMART mode is still {after.smart_mode} "
            f"and discovery {after.discovery}."
        )
    return f"{org.name} ({org.id}): {'; '.join(changes)}."


def switch_change(name: str, before: bool, after: bool) -> str:
    if before == after:
        return f"Simulated authorisation error {name}: nothing changed; it was already {'on' if after else 'off'}."
    if after:
        return f"Simulated authorisation error {name}: now on ({SWITCHES[name]})."
    return f"Simulated authorisation error {name}: now off (it made: {SWITCHES[name]})."


def _back_to_inspector(summary: str, changes: list[str] | None = None):
    flash(summary, "summary")
    for change in changes or []:
        flash(change, "change")
    return redirect(url_for("inspector.inspector"))


@bp.get("/admin/faults")
def get_faults():
    return jsonify({org: asdict(f) for org, f in _state().faults.items()})


@bp.post("/admin/faults/<org_id>")
def set_faults(org_id: str):
    """JSON ``{"latency_ms": 200, "mode": "error_500"}`` (either key), or the inspector's form."""
    state = _state()
    data = request.get_json(silent=True) if request.is_json else None
    if data is None:
        return _set_faults_form(state, org_id)
    if not isinstance(data, dict):
        return jsonify({"error": "send a JSON object"}), 400
    try:
        faults = state.set_faults(org_id, data.get("latency_ms"), data.get("mode"))
    except KeyError:
        return jsonify({"error": f"unknown organisation {org_id}"}), 404
    except (TypeError, ValueError) as exc:
        return jsonify({"error": str(exc)}), 400
    return jsonify(asdict(faults))


def _set_faults_form(state: SandboxState, org_id: str):
    _check_csrf()
    org = _org_or_404(org_id)
    raw = (request.form.get("latency_ms") or "0").strip()
    if not raw.isdigit():
        abort(400, f"Added latency must be a whole number of milliseconds, not {raw!r}.")
    before = state.faults[org_id]
    try:
        after = state.set_faults(org_id, int(raw), request.form.get("mode"))
    except ValueError as exc:
        abort(400, f"{_server(org)}: {exc}.")
    return _back_to_inspector(faults_change(org, before, after))


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
        org = _org_or_404(org_id)
        before = state.smart[org_id]
        try:
            after = state.set_smart(org_id, request.form.get("smart_mode"), request.form.get("discovery"))
        except ValueError as exc:
            abort(400, f"{org.name} ({org.id}): {exc}.")
        return _back_to_inspector(smart_change(org, before, after))
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
        name, on = request.form.get("name", ""), request.form.get("on") == "1"
        if name not in SWITCHES:
            abort(400, f"No simulated authorisation error {name!r}: choose one listed on the inspector.")
        before = name in state.switches
        state.set_switch(name, on)
        return _back_to_inspector(switch_change(name, before, on))
    unknown = [k for k in data if k not in SWITCHES]
    if unknown:
        return jsonify({"error": f"unknown switch(es): {', '.join(unknown)}", "switches": list(SWITCHES)}), 400
    for name, on in data.items():
        state.set_switch(name, bool(on))
    return get_switches()


@bp.post("/admin/reset")
def reset():
    """Back to the configured faults and SMART profiles, every simulated authorisation error off (launches, tokens
    and the request log stay). Tools get the switches as JSON; the inspector's button, what changed."""
    state = _state()
    if not _form_post():
        state.reset()
        return get_switches()
    _check_csrf()
    faults, smart, switches_on = dict(state.faults), dict(state.smart), set(state.switches)
    state.reset()
    changes = []
    for org in state.settings.organisations:
        if faults[org.id] != state.faults[org.id]:
            changes.append(faults_change(org, faults[org.id], state.faults[org.id]))
        if smart[org.id] != state.smart[org.id]:
            changes.append(smart_change(org, smart[org.id], state.smart[org.id]))
    changes += [switch_change(name, True, False) for name in SWITCHES if name in switches_on]
    if not changes:
        return _back_to_inspector(
            "Nothing to reset: every organisation already behaves as configured and no simulated authorisation "
            "error is on."
        )
    return _back_to_inspector("All faults reset to the sandbox configuration. What changed:", changes)
