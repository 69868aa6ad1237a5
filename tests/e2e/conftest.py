"""Browser journeys: Debian's Chromium driven by Playwright (the bundled-browser download does not work here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import IN_CI, ROOT, chromium_path

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = ROOT / "test-artifacts"


def pytest_collection_modifyitems(config, items):
    if chromium_path():
        return
    for item in items:
        if "e2e" in str(item.fspath):
            if IN_CI:
                item.add_marker(pytest.mark.xfail(reason="Chromium missing in CI", strict=True, run=False))
                raise pytest.UsageError("CI=true but /usr/bin/chromium is missing: .ci/run must install it")
            item.add_marker(pytest.mark.skip(reason="Chromium not installed (apt-get install chromium)"))


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": chromium_path(), "args": CHROMIUM_ARGS}


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
