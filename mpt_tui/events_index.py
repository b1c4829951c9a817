"""A run's metrics.jsonl, indexed per grid cell and read incrementally (torch- and Textual-free).

The reader lives in the store layer, shared with engine.store.run_dir's readers: see
engine.store.metrics_log (`EventIndex.read()` parses only the bytes appended since its last call).
This module keeps the app's import path.
"""

from __future__ import annotations

from engine.store import CellEvents, Curve, EventIndex

__all__ = ["CellEvents", "Curve", "EventIndex"]
