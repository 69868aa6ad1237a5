"""The viewer's services, typed, installed once by the application factory and reached through
``services()`` — never looked up by string in a view."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from app.access.register import AccessRegister
from app.access.service import AccessService
from app.access.training import TrainingRegister
from app.audit.alerts import AlertBox
from app.audit.store import AuditStore
from app.audit.trail import AuditTrail
from app.config import Config
from app.pipeline import RecordPipeline
from app.record.catalogue import Catalogue
from app.record.service import RecordService
from core.state import KeyValueStore
from launch.flow import LaunchServices

_KEY = "scr.services"


@dataclass(frozen=True)
class Services:
    config: Config
    catalogue: Catalogue
    store: KeyValueStore
    launch: LaunchServices
    audit_store: AuditStore
    audit: AuditTrail
    alerts: AlertBox
    training: TrainingRegister
    record: RecordService
    access: AccessService
    pipeline: RecordPipeline
    register: AccessRegister  # the local access register and its request queue


def install(app: Flask, services: Services) -> None:
    app.extensions[_KEY] = services


def services(app: Flask | None = None) -> Services:
    """The running app's services (``app`` for use outside a request, e.g. tests and the CLI)."""
    return (app or current_app).extensions[_KEY]
