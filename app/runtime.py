"""Process settings every entry point shares: gunicorn workers (``post_worker_init`` in gunicorn.conf.py),
``python -m app`` / ``scr-viewer`` and ``make run`` (``sandbox/serve.py``) call :func:`tune_gc` once the
application exists, so a benchmark of one is a benchmark of the others.

Parsing FHIR bundles and merging them allocate many small objects that live for the request or the record
cache: with CPython's default thresholds (700, 10, 10) a launch of a large record triggers hundreds of young
collections and several full ones, each walking everything the process holds. A larger first threshold
collects the young generation far less often; ``gc.freeze()`` moves what exists after start-up (modules, the
Flask app, templates, the sandbox's read-only stores) out of every later collection.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Raise the collector's thresholds and freeze what start-up allocated. Call after the app is created."""
    gc.set_threshold(*GC_THRESHOLDS)
    gc.collect()  # start-up garbage is dropped, not frozen
    gc.freeze()
