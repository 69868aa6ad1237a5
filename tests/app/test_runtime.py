"""One set of GC settings for every entry point: gunicorn workers, ``python -m app`` and ``make run``
(``sandbox.serve``) all call ``app.runtime.tune_gc()`` once the app exists, so what a benchmark of one
measures is what the others run with."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.runtime import GC_THRESHOLDS

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_CONFIG = ROOT / "sandbox" / "config.toml"


def calls_in(path: Path, function: str) -> list[str]:
    """The names called inside ``function`` in ``path``, in source order."""
    tree = ast.parse(path.read_text())
    found = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    calls = [n for n in ast.walk(found) if isinstance(n, ast.Call)]
    calls.sort(key=lambda n: (n.lineno, n.col_offset))
    return [n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "") for n in calls]


@pytest.mark.parametrize(
    ("path", "function"),
    [("gunicorn.conf.py", "post_worker_init"), ("app/__main__.py", "main"), ("sandbox/serve.py", "main")],
)
def test_every_entry_point_tunes_the_gc_once_the_app_exists(path, function):
    names = calls_in(ROOT / path, function)
    assert names.count("tune_gc") == 1, f"{path}:{function} must call app.runtime.tune_gc()"
    if "create_app" in names:  # the single-process entry points create the app themselves
        assert names.index("create_app") < names.index("tune_gc")
    source = (ROOT / path).read_text()
    assert "set_threshold" not in source and "gc.freeze" not in source, "the settings live in app/runtime.py only"


def test_gunicorn_tunes_the_gc_after_the_worker_loaded_the_app():
    """post_worker_init runs after the worker imported the app (``preload_app = False``), post_fork before."""
    source = (ROOT / "gunicorn.conf.py").read_text()
    assert "preload_app = False" in source
    assert "tune_gc" not in "".join(calls_in(ROOT / "gunicorn.conf.py", "post_fork"))


DRIVER = """
import gc, json, sys
import {module} as entry

class Server:
    server_port = 0
    def shutdown(self):
        pass

entry.serve = lambda app, host, port: Server()
entry.wait_for_stop = lambda: None
before = gc.get_threshold()
code = entry.main({argv!r})
print(json.dumps({{"code": code, "before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}}))
"""


@pytest.mark.parametrize(
    ("module", "argv"),
    [("app.__main__", ["--config", str(SANDBOX_CONFIG)]), ("sandbox.serve", ["--only", "viewer"])],
)
def test_the_single_process_entry_points_run_with_the_gunicorn_settings(module, argv, tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "SCR_CONFIG": str(SANDBOX_CONFIG),
        "SANDBOX_URL": "http://127.0.0.1:9",
        "VIEWER_URL": "http://127.0.0.1:9",
        "SCR_KEYS_FILE": str(tmp_path / "keys.json"),
        "SCR_AUDIT_SQLITE": str(tmp_path / "audit.sqlite3"),
        "SCR_LOG_LEVEL": "WARNING",
    }
    script = textwrap.dedent(DRIVER.format(module=module, argv=argv))
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["code"] == 0
    assert tuple(out["before"]) != GC_THRESHOLDS, "the interpreter's defaults before start-up"
    assert tuple(out["after"]) == GC_THRESHOLDS
    assert out["frozen"] > 10_000, "what start-up allocated (modules, the app) is out of every later collection"


def test_tune_gc_sets_the_thresholds_and_freezes_what_exists():
    script = (
        "import gc, json; from app.runtime import tune_gc; keep = [[] for _ in range(5000)]; tune_gc(); "
        "print(json.dumps([gc.get_threshold(), gc.get_freeze_count()]))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)  # noqa: S603
    thresholds, frozen = json.loads(done.stdout)
    assert tuple(thresholds) == GC_THRESHOLDS and frozen >= 5000


def test_settle_freezes_a_complete_record_only_in_a_tuned_process():
    """A record kept in the cache is out of later collections once settled, but only where an entry point
    tuned the process (a test process, or a library user, is left alone); release_freed is safe to call."""
    script = (
        "import gc, json; from app.runtime import release_freed, settle, tune_gc\n"
        "record = [{'resourceType': 'Observation', 'code': {'coding': [{'code': str(i)}]}} for i in range(3000)]\n"
        "settle(); untuned = gc.get_freeze_count()\n"
        "tune_gc(); frozen = gc.get_freeze_count()\n"
        "later = [{'id': str(i), 'meta': {}} for i in range(3000)]\n"
        "settle(); release_freed()\n"
        "walked = {id(o) for o in gc.get_objects()}\n"
        "print(json.dumps([untuned, gc.get_freeze_count() - frozen, id(later) in walked, id(later[0]) in walked]))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)  # noqa: S603
    untuned, newly_frozen, list_walked, item_walked = json.loads(done.stdout)
    assert untuned == 0, "settle() froze in a process that never called tune_gc()"
    assert newly_frozen >= 3000 and not list_walked and not item_walked
