"""The sandbox authorisation server's signing keys: fresh at every start, published at its JWKS URL."""

from __future__ import annotations

from dataclasses import dataclass

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

    def for_alg(self, alg: str):
        for key in self.keyset:
            if key.get("alg") == alg:
                return key
        raise LookupError(f"the sandbox has no {alg} key")

    def public_jwks(self) -> dict:
        return self.keyset.as_dict(private=False)
