"""A launch context: one launch of one patient by one user, addressed by an id carried in the URLs.

Each launch gets its own id, so a tab left open from an earlier launch keeps showing (and fetching) its
own patient and never the patient of a newer launch.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field

from core.state.store import KeyValueStore

from .identity import UserIdentity

CONTEXT_TTL = 12 * 3600
MAX_CONTEXTS_PER_SESSION = 10


@dataclass
class LaunchContext:
    id: str
    iss: str
    ehr_name: str
    patient: str
    scope: str
    standalone: bool
    user_claims: dict
    encounter: str | None = None
    need_patient_banner: bool = True
    fhir_user: str | None = None
    identity: UserIdentity | None = None
    created: float = field(default_factory=time.time)

    @classmethod
    def from_dict(cls, data: dict) -> LaunchContext:
        identity = data.get("identity")
        return cls(**{**data, "identity": UserIdentity.from_dict(identity) if identity else None})


def new_context_id() -> str:
    return secrets.token_urlsafe(16)


class ContextStore:
    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    def save(self, ctx: LaunchContext) -> None:
        self.store.set(f"ctx:{ctx.id}", asdict(ctx), ttl=CONTEXT_TTL)

    def load(self, ctx_id: str) -> LaunchContext | None:
        data = self.store.get(f"ctx:{ctx_id}")
        return LaunchContext.from_dict(data) if data else None

    def delete(self, ctx_id: str) -> None:
        self.store.delete(f"ctx:{ctx_id}")
        self.store.delete(f"tok:{ctx_id}")
