"""Benchmarks (run as modules, e.g. ``python -m bench.record_bench``); not part of the application."""
