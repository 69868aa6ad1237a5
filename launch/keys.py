"""The viewer's signing keys (private_key_jwt) and the public JWKS that EHRs register.

Production keys come from a file (or ``SCR_KEYS_JSON``); the sandbox generates a development key set on
first start so nothing needs setting up by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from joserfc.jwk import ECKey, KeySet, RSAKey

SUPPORTED_ALGS = ("RS384", "ES384")


def generate_keyset() -> KeySet:
    """One RS384 and one ES384 signing key: the two algorithms SMART requires servers to accept."""
    rsa = RSAKey.generate_key(2048, parameters={"alg": "RS384", "use": "sig"}, private=True, auto_kid=True)
    ec = ECKey.generate_key("P-384", parameters={"alg": "ES384", "use": "sig"}, private=True, auto_kid=True)
    return KeySet([rsa, ec])


def load_keyset(path: Path, generate: bool = False, env: dict[str, str] | None = None) -> KeySet:
    """Load the private key set; create it (atomically, 0600) when allowed and missing."""
    env = os.environ if env is None else env
    if env.get("SCR_KEYS_JSON"):
        return KeySet.import_key_set(json.loads(env["SCR_KEYS_JSON"]))
    if not path.exists():
        if not generate:
            raise FileNotFoundError(f"viewer key set not found: {path} (set keys_file or SCR_KEYS_JSON)")
        _create(path, generate_keyset())
    return KeySet.import_key_set(json.loads(path.read_text(encoding="utf-8")))


def public_jwks(keyset: KeySet) -> dict:
    """The JWKS to publish: public parts only, never ``d``."""
    return keyset.as_dict(private=False)


def signing_key(keyset: KeySet, alg: str):
    """The first key of the key set for ``alg`` (RS384 or ES384)."""
    for key in keyset:
        if key.get("alg") == alg:
            return key
    raise LookupError(f"no {alg} key in the viewer key set")


def _create(path: Path, keyset: KeySet) -> None:
    """Write with O_EXCL so the sandbox and the viewer starting together end up sharing one key set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(keyset.as_dict(private=True)).encode()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    try:
        os.link(tmp, path)  # fails if another process won the race; theirs is kept
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m launch.keys <path>``: write a new private key set (0600) for a deployment."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m launch.keys /secure/path/viewer.jwks.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    if path.exists():
        print(f"{path} exists: refusing to overwrite a key set EHRs may have registered", file=sys.stderr)
        return 1
    _create(path, generate_keyset())
    print(json.dumps(public_jwks(load_keyset(path)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
