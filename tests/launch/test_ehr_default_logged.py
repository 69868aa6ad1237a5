"""An EHR default role is a deliberate, visible choice: every start logs it, and only when it is on."""

from __future__ import annotations

import logging

from flask import Flask

import launch
from core.state.store import MemoryStore
from launch.registration import ClientSettings, EhrRegistration
from launch.roles import IdentityPolicy, RoleGrant


def start(tmp_path, *ehrs: EhrRegistration) -> None:
    settings = ClientSettings("https://viewer.example", tuple(ehrs), ("Patient",))
    launch.init_app(Flask(__name__), settings, MemoryStore(), tmp_path / "keys.json", True)


def test_an_ehr_default_is_logged_at_every_start(tmp_path, caplog):
    grant = RoleGrant(("R8000",), ("B0370",), "ehr_default")
    theatres = EhrRegistration(
        "Theatre system", "https://theatres.example/fhir", "scr", "none", identity=IdentityPolicy(default_grant=grant)
    )
    with caplog.at_level(logging.WARNING, logger="launch"):
        start(tmp_path, theatres)
    (line,) = [r.getMessage() for r in caplog.records if "ehr_default" in r.getMessage()]
    assert "Theatre system" in line and "R8000" in line and "B0370" in line


def test_no_line_when_no_ehr_has_a_default(tmp_path, caplog):
    gp = EhrRegistration("GP system", "https://gp.example/fhir", "scr", "none")
    with caplog.at_level(logging.WARNING, logger="launch"):
        start(tmp_path, gp)
    assert not [r for r in caplog.records if "ehr_default" in r.getMessage()]
