"""The viewer's own keys: generated once for development, public JWKS never exposes private parts."""

import json
import os

import pytest

from launch.keys import load_keyset, public_jwks, signing_key


def test_dev_keys_are_generated_once_and_private(tmp_path):
    path = tmp_path / "keys" / "viewer.jwks.json"
    first = load_keyset(path, generate=True, env={})
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    second = load_keyset(path, generate=True, env={})
    assert [k.kid for k in first] == [k.kid for k in second]
    assert {signing_key(first, a).get("alg") for a in ("RS384", "ES384")} == {"RS384", "ES384"}


def test_public_jwks_has_no_private_material(tmp_path):
    jwks = public_jwks(load_keyset(tmp_path / "k.json", generate=True, env={}))
    assert all("d" not in k and "p" not in k for k in jwks["keys"])
    assert {k["alg"] for k in jwks["keys"]} == {"RS384", "ES384"}


def test_missing_keys_without_generation_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="SCR_KEYS_JSON"):
        load_keyset(tmp_path / "absent.json", generate=False, env={})


def test_keys_from_environment(tmp_path):
    source = load_keyset(tmp_path / "k.json", generate=True, env={})
    env = {"SCR_KEYS_JSON": (tmp_path / "k.json").read_text()}
    loaded = load_keyset(tmp_path / "elsewhere.json", generate=False, env=env)
    assert [k.kid for k in loaded] == [k.kid for k in source]
    assert json.loads(env["SCR_KEYS_JSON"])["keys"]
