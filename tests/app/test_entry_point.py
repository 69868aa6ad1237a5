"""The viewer's own entry point (``python -m app`` / ``scr-viewer``) and its refusal to guess a configuration.

The installed wheel started for real, and a launch through it, are in tests/test_packaging.py.
"""

from __future__ import annotations

import pytest

import app.__main__ as entry
from app import create_app
from app.config import ConfigError, load_config


@pytest.mark.parametrize("env", [{}, {"SCR_CONFIG": ""}])
def test_load_config_without_a_file_refuses_and_says_what_to_set(env):
    with pytest.raises(ConfigError) as err:
        load_config(env=env)
    assert "SCR_CONFIG" in str(err.value) and "docs/configuration.md" in str(err.value)


def test_create_app_without_scr_config_refuses_instead_of_using_the_sandbox(monkeypatch):
    monkeypatch.delenv("SCR_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="SCR_CONFIG"):
        create_app()


def test_python_m_app_without_a_configuration_exits_2_with_the_message(monkeypatch, capsys):
    monkeypatch.delenv("SCR_CONFIG", raising=False)
    assert entry.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("configuration error: no configuration file")
    assert "SCR_CONFIG" in err and "docs/configuration.md" in err and "--config" in err


def test_python_m_app_reports_a_missing_or_broken_file(tmp_path, capsys):
    assert entry.main(["--config", str(tmp_path / "absent.toml")]) == 2
    assert "configuration file not found" in capsys.readouterr().err
    broken = tmp_path / "broken.toml"
    broken.write_text("[viewer\n")
    assert entry.main(["--config", str(broken)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_the_explicit_file_wins_over_scr_config(tmp_path, monkeypatch):
    monkeypatch.setenv("SCR_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config()
    from sandbox.serve import SANDBOX_CONFIG

    assert load_config(SANDBOX_CONFIG, env={}).path == SANDBOX_CONFIG


def test_the_sandbox_and_the_viewer_share_one_no_delay_handler():
    from sandbox import serve

    assert serve.NoDelayHandler is entry.NoDelayHandler
    assert entry.NoDelayHandler.disable_nagle_algorithm is True
