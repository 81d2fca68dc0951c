"""Process-wide settings for the hub's long-running processes (listener, ingest, API server, benches)."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Call once at start-up, after the imports, in a long-running process.

    A batch or a request allocates many short-lived objects; with CPython's default thresholds the
    collector runs full scans over every long-lived object (SQLAlchemy, Airflow, pydantic schemas)
    again and again, which measured here costs more than half of the ingest time and puts pauses in
    the API's latency tail. Freezing what start-up created and collecting the young generation less
    often keeps work at its real cost.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
