"""docs/configuration.md lists exactly the tables and keys the loaders accept, with their defaults."""

from __future__ import annotations

import json
import re

import pytest

from app.config import ACCEPTED_KEYS, REQUIRED, SCHEMA, Table, all_tables
from sandbox.settings import ACCEPTED_KEYS as SANDBOX_KEYS
from sandbox.settings import SANDBOX
from tests.conftest import ROOT

DOC = ROOT / "docs" / "configuration.md"
HEADING = re.compile(r"^#{2,4} `(\[\[?)([a-z_.]+)(\]\]?)`\s*$")
ROW = re.compile(r"^\| `([A-Za-z_]+)` \|")
TABLES: dict[str, Table] = all_tables({**SCHEMA, "sandbox": SANDBOX})


def documented() -> tuple[dict[str, dict[str, list[str]]], dict[str, bool]]:
    """Each documented table → {key: the row's cells}, and whether it is documented as an array."""
    tables: dict[str, dict[str, list[str]]] = {}
    arrays: dict[str, bool] = {}
    current = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            match = HEADING.match(line)
            current = match.group(2) if match else None
            if match:
                assert current not in tables, f"{current} documented twice"
                tables[current] = {}
                arrays[current] = match.group(1) == "[["
            continue
        if current and (row := ROW.match(line)):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            assert len(cells) == 4, f"[{current}] {row.group(1)}: expected key | type | default | meaning"
            assert row.group(1) not in tables[current], f"[{current}] {row.group(1)} documented twice"
            tables[current][row.group(1)] = cells
    return tables, arrays


def test_the_doc_lists_every_table_and_key_the_loaders_accept_and_no_other():
    tables, _ = documented()
    accepted = {**ACCEPTED_KEYS, **SANDBOX_KEYS}
    assert set(tables) == set(accepted), "tables documented vs accepted"
    for name, keys in accepted.items():
        listed = set(tables[name])
        assert not keys - listed, f"[{name}] accepted but not documented: {sorted(keys - listed)}"
        assert not listed - keys, f"[{name}] documented but not accepted: {sorted(listed - keys)}"


def test_the_doc_writes_arrays_of_tables_as_arrays():
    _, arrays = documented()
    for name, is_array in arrays.items():
        assert is_array == TABLES[name].array, f"{name} should be written {TABLES[name].header}"


@pytest.mark.parametrize("table", sorted(TABLES))
def test_the_documented_defaults_are_the_loaders(table):
    tables, _ = documented()
    for key, spec in TABLES[table].keys.items():
        default = tables[table][key][2]
        if spec.default is REQUIRED:
            assert default == "**required**", f"[{table}] {key}"
        elif spec.default is not None:
            value = list(spec.default) if isinstance(spec.default, tuple) else spec.default
            assert default == f"`{json.dumps(value)}`", f"[{table}] {key}"
        else:
            assert default and default != "**required**", f"[{table}] {key}: say what the default is"
