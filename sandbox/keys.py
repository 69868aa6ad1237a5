"""The sandbox authorisation server's signing keys: fresh at every start, published at its JWKS URL.

A sandbox split over several processes (``python -m sandbox.serve --orgs …``, benchmarks) shares one set
through a file (``SANDBOX_KEYS_FILE``): the first process to start writes it, the others read it, so tokens
minted by the authorisation server's process verify in every organisation's process.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from joserfc.jwk import ECKey, KeySet, RSAKey

ID_TOKEN_ALGS = ("RS256", "RS384", "ES384")
ACCESS_TOKEN_ALG = "RS256"  # noqa: S105 (an algorithm name, not a secret)


@dataclass
class ServerKeys:
    keyset: KeySet

    @classmethod
    def generate(cls) -> ServerKeys:
        keys = [
            RSAKey.generate_key(2048, parameters={"alg": "RS256", "use": "sig"}, private=True, auto_kid=True),
            RSAKey.generate_key(2048, parameters={"alg": "RS384", "use": "sig"}, private=True, auto_kid=True),
            ECKey.generate_key("P-384", parameters={"alg": "ES384", "use": "sig"}, private=True, auto_kid=True),
        ]
        return cls(KeySet(keys))

    @classmethod
    def shared(cls, path: str | os.PathLike[str]) -> ServerKeys:
        """The keys in ``path`` (private JWKS); generated and written there first when the file does not exist.

        Safe when several processes start at once: the file is written under a temporary name and linked into
        place, so whoever links first wins and everyone reads the same keys.
        """
        path = Path(path)
        if not path.exists():
            keys = cls.generate()
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".sandbox-keys-")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(keys.keyset.as_dict(private=True), out)
                os.chmod(tmp, 0o600)
                with contextlib.suppress(FileExistsError):  # another process was first: use its keys
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        return cls(KeySet.import_key_set(json.loads(path.read_text(encoding="utf-8"))))

    def for_alg(self, alg: str):
        for key in self.keyset:
            if key.get("alg") == alg:
                return key
        raise LookupError(f"the sandbox has no {alg} key")

    def public_jwks(self) -> dict:
        return self.keyset.as_dict(private=False)
