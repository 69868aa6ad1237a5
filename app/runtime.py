"""Process settings every entry point shares: gunicorn workers (``post_worker_init`` in gunicorn.conf.py),
``python -m app`` / ``scr-viewer`` and ``make run`` (``sandbox/serve.py``) call :func:`tune_gc` once the
application exists, so a benchmark of one is a benchmark of the others.

Parsing FHIR bundles and merging them allocate many small objects that live for the request or the record
cache: with CPython's default thresholds (700, 10, 10) a launch of a large record triggers hundreds of young
collections and several full ones, each walking everything the process holds. A first threshold of 10,000
collects the young generation less often while keeping each young collection short (a few ms of CPU; 50,000
made them up to ~25 ms and the older ones up to ~70 ms). ``gc.freeze()`` moves what exists after start-up
(modules, the Flask app, templates, the sandbox's read-only stores) out of every later collection, and
:func:`settle` does the same for each complete record, so the older generations never hold the record cache.
glibc's malloc gets two arenas per process (:func:`tune_malloc`) and gives freed memory back when records are
dropped (:func:`release_freed`). Measured in bench/README.md.
"""

from __future__ import annotations

import ctypes
import gc
import os

GC_THRESHOLDS = (10_000, 10, 10)  # young collections of ~10 ms at most (bench/README.md)


_tuned = False  # tune_gc() ran in this process: settle() freezes (never in a test process that did not ask)


def tune_gc() -> None:
    """Raise the collector's thresholds and freeze what start-up allocated (and cap malloc's arenas, see
    :func:`tune_malloc`). Call after the app is created."""
    global _tuned
    tune_malloc()
    gc.set_threshold(*GC_THRESHOLDS)
    gc.collect()  # start-up garbage is dropped, not frozen
    gc.freeze()
    _tuned = True


def settle() -> None:
    """A launch's record is complete: move what the process holds now out of every later collection.

    The parsed resources of a cached record (and its merge) live for minutes and hold no reference cycles, so
    they are freed by reference counting when the record leaves the cache, frozen or not; left in the
    collector, each one is walked by every older-generation collection until then, and with a full cache of
    large records that walk is what made the long pauses (bench/README.md). ``gc.freeze()`` is O(1). What it
    costs: objects in reference cycles that are alive now (another request's in flight) and become garbage
    later are never collected; the worker's ``max_requests`` recycling bounds that. Only in a process whose
    entry point called :func:`tune_gc`."""
    if _tuned:
        gc.freeze()


M_ARENA_MAX = -8  # glibc mallopt parameter
MALLOC_ARENAS = 2


def tune_malloc() -> None:
    """Cap glibc's malloc arenas for this process (unless ``MALLOC_ARENA_MAX`` says otherwise).

    A gunicorn worker runs 16 request threads and the fetch pool; glibc gives busy threads arenas of their own
    (up to 8 per core), and memory freed in one is kept for that arena, so a worker's RSS grows with the number
    of threads that once parsed a large record, not with what it holds. Python's own small-object allocator is
    unaffected; larger objects (big dicts, lists and strings of parsed bundles) come from malloc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return  # already read by glibc at start-up
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def release_freed() -> None:
    """Give memory that records dropped from the cache freed back to the system (glibc ``malloc_trim``).

    Freed blocks otherwise stay in malloc's free lists, and the worker's RSS stays at its high-water mark.
    The call walks malloc's arenas without the GIL (ctypes releases it), so other requests go on meanwhile."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:  # not glibc (macOS, musl): nothing to tune
            _LIBC = False
    return _LIBC or None


_LIBC = None
