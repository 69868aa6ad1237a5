"""Information governance: who may see what, and why (policy, facts, reasons, break-glass, training).

``init_app`` builds the access service; the decision itself is ``policy.decide``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict

from app.audit.alerts import AlertBox
from app.audit.store import AuditStore
from app.audit.trail import AuditTrail
from app.config import Config
from core.state import KeyValueStore
from launch.tokens import TokenManager

from .service import AccessService
from .training import TrainingRegister


def init_app(
    config: Config,
    audiences: Mapping[str, frozenset[str]],
    store: KeyValueStore,
    audit_store: AuditStore,
    trail: AuditTrail,
    alerts: AlertBox,
    tokens: TokenManager,
) -> tuple[AccessService, TrainingRegister]:
    training = TrainingRegister(audit_store, [asdict(t) for t in config.access.training])
    return AccessService(config.access, audiences, store, trail, alerts, training, tokens), training
