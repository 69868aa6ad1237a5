"""The product wheel installed in a fresh venv outside the repository, and the viewer started from it.

Shared by ``tests/test_packaging.py`` and ``tests/interop/test_three_organisations.py``: the wheel is built
and installed once per test session, by whichever of them asks first (each declares thin session fixtures
over ``product_wheel`` and ``installed_python``; the result is kept per session here, so two fixture
definitions still mean one build).

The fresh venv gets the wheel only (``--no-deps``). Its dependencies come from the repository's venv through
a ``.pth`` file naming that venv's site-packages: a path line in a ``.pth`` adds the folder to ``sys.path``
but does not run the ``.pth`` files inside it, so the repository's editable install (its import finder) is
not activated — the new venv sees Flask and the rest, but ``app`` only from the wheel and no ``sandbox``.

``start_installed_viewer`` runs ``<venv>/bin/python -m app`` from a deployment folder of its own (the working
directory) with a clean environment whose only setting is ``SCR_CONFIG``: nothing from the repository, its
``SCR_*`` settings or ``REDIS_URL`` reaches it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("app", "core", "launch")
# What the build needs from the source tree; the sandbox is copied too, so leaving it out is pyproject's doing.
BUILD_INPUTS = ("pyproject.toml", "README.md", *PRODUCT, "sandbox")
STRIPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "REDIS_URL", "SANDBOX_URL", "VIEWER_URL")
START_ATTEMPTS = 3  # a free port found by bind(0) can be taken before the viewer binds it
LOG_TAIL = 6000  # characters of a process's log shown with a failure

_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would point a process at the repository or its settings."""
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV and not k.startswith("SCR_")}
    return {**env, **extra}


def log_tail(log: Path | None, chars: int = LOG_TAIL) -> str:
    if log is None:
        return "(no log)"
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def wait_for(url: str, proc: subprocess.Popen, log: Path | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before {url} answered:\n{log_tail(log)}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered:\n{log_tail(log)}")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the child if pytest dies without running teardown (no stray servers)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a server process, its output to ``log``. Call from the main thread (PR_SET_PDEATHSIG fires when
    the thread that forked the child exits)."""
    with log.open("w") as out:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if _LIBC is not None else None,
        )


def stop(proc: subprocess.Popen) -> int:
    """SIGTERM, then SIGKILL after 20 s; the exit code (negative: killed by that signal)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# ---------------------------------------------------------------- the wheel and the fresh venv


def build_wheel(out: Path, src: Path) -> Path:
    """The product wheel, built from a copy of the source tree in ``src`` (nothing is written into the
    repository), into ``out``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, src / name)
    build = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*build, "--disable-pip-version-check", "-q", "-w", str(out)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("*.whl")
    return built


def make_venv(wheel: Path, home: Path) -> Path:
    """A fresh venv at ``home`` with the wheel installed and the repository venv's packages importable (see
    the module docstring); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(home)], check=True, timeout=120)
    python = home / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index"]
    proc = subprocess.run([*install, "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout.strip()
    (Path(site) / "repo_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


_SESSION: dict[tuple[Path, str], Path] = {}  # (the session's base temp folder, "wheel" | "python") → path


def product_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's product wheel (built on first use)."""
    key = (tmp_path_factory.getbasetemp(), "wheel")
    if key not in _SESSION:
        _SESSION[key] = build_wheel(tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("src"))
    return _SESSION[key]


def installed_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of the session's fresh venv with the product wheel installed (made on first use)."""
    key = (tmp_path_factory.getbasetemp(), "python")
    if key not in _SESSION:
        wheel = product_wheel(tmp_path_factory)
        _SESSION[key] = make_venv(wheel, tmp_path_factory.mktemp("venv") / "viewer-venv")
    return _SESSION[key]


# ---------------------------------------------------------------- the installed viewer, running

PROBE = (
    "import app, core, launch\n"
    "print(app.__file__)\n"
    "try:\n"
    "    import sandbox\n"
    "except ModuleNotFoundError:\n"
    "    print('no sandbox')\n"
    "else:\n"
    "    print('sandbox at', sandbox.__file__)\n"
)


@dataclass
class InstalledViewer:
    """``python -m app`` from the fresh venv, serving ``url`` from its deployment folder ``site``."""

    url: str
    site: Path
    config: Path
    proc: subprocess.Popen
    log: Path

    def log_tail(self, chars: int = LOG_TAIL) -> str:
        return log_tail(self.log, chars)

    def stop(self) -> int:
        return stop(self.proc)


def start_installed_viewer(
    python: Path, site: Path, toml: Callable[[str], str], timeout: float = 120
) -> InstalledViewer:
    """Write ``site/viewer.toml`` (``toml(viewer_url)``) and start the installed viewer from ``site`` with that
    file as its only input, on a free loopback port; returns once ``/healthz`` answers.

    Checked first, with the same interpreter, folder and environment: ``app`` is the wheel's copy (under the
    venv, not the repository) and there is no ``sandbox`` to import."""
    config = site / "viewer.toml"
    env = clean_env(SCR_CONFIG=str(config))
    probe = subprocess.run([str(python), "-c", PROBE], cwd=site, env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    app_file, sandbox_line = probe.stdout.splitlines()
    venv_home = python.parent.parent
    assert Path(app_file).is_relative_to(venv_home) and not Path(app_file).is_relative_to(ROOT), app_file
    assert sandbox_line == "no sandbox", sandbox_line
    for attempt in range(1, START_ATTEMPTS + 1):
        url = f"http://127.0.0.1:{free_port()}"
        config.write_text(toml(url))
        log = site / f"viewer-{attempt}.log"
        proc = start([str(python), "-m", "app"], site, env, log)
        try:
            wait_for(f"{url}/healthz", proc, log, timeout=timeout)
        except AssertionError:
            stop(proc)
            if "cannot listen" in log_tail(log) and attempt < START_ATTEMPTS:
                continue  # the port was taken between free_port() and the bind: another one
            raise
        return InstalledViewer(url, site, config, proc, log)
    raise AssertionError("unreachable")  # pragma: no cover


def failure_sections(item: pytest.Item) -> list[tuple[str, str]]:
    """For a failed test: the log of each installed viewer among its fixtures (itself, or as ``.viewer``)."""
    sections = []
    for value in getattr(item, "funcargs", {}).values():
        viewer = value if isinstance(value, InstalledViewer) else getattr(value, "viewer", None)
        if isinstance(viewer, InstalledViewer):
            sections.append((f"installed viewer log ({viewer.log}, last {LOG_TAIL} characters)", viewer.log_tail()))
    return sections
