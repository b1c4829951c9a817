"""A run's metrics.jsonl, indexed per grid cell and read incrementally (torch- and Textual-free).

A paper-setting run has about 1,400 grid cells and hundreds of thousands of events. The
app must not keep them as a list and scan it per redraw: `EventIndex.read()` parses only
the bytes appended since its last call (it remembers the byte offset; a torn last line
waits for its end; a file that shrank, i.e. was replaced or truncated, is read again from
the start) and files each event under its cell or upstream method as a curve point, so
a cell's curves, the finished cells and the cell training now are lookups.

The schema and its rules are engine.store.run_dir' (its module docstring; "a step logged twice:
the later event wins"); `tests/test_app.py` checks this index against engine.store.run_dir'
readers (`cell_curves`, `upstream_curves`, `last_cell`, `finished_cells`) on the same file.

One thread writes (`read`, in the Runs screen's refresh worker) while the UI thread
only reads between refreshes; `rev` numbers tell the UI what changed since it last drew.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

Curve = tuple[list[int], list[float]]


def _curve(points: dict[int, float]) -> Curve:
    steps = sorted(points)
    return steps, [points[s] for s in steps]


@dataclass(eq=False)
class CellEvents:
    """One grid cell's points: train loss and dev score by step, and its result once finished."""

    loss: dict[int, float] = field(default_factory=dict)
    dev: dict[int, float] = field(default_factory=dict)
    done: dict | None = None  # {"dev", "test"} of its cell_done event
    rev: int = 0  # the index's event count when this cell last changed

    def curves(self) -> tuple[Curve, Curve]:
        return _curve(self.loss), _curve(self.dev)

    def last_dev(self) -> float | None:
        return self.dev[max(self.dev)] if self.dev else None


class EventIndex:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0
        self.partial = b""
        self.restarts = 0  # how often the file shrank and was read again from the start
        self._clear()

    def _clear(self) -> None:
        self.cells: dict[str, CellEvents] = {}  # in the order they first logged
        self.upstream: dict[str, dict[int, float]] = {}  # method -> step -> loss
        self.finished: list[dict] = []  # {"cell", "dev", "test"} in the order they finished
        self.last_cell: str | None = None  # the cell that logged last (training now, in a live run)
        self.events = 0  # events indexed: also the revision number
        self.damaged = 0  # lines that were not JSON (a run killed mid-write)

    @property
    def behind(self) -> bool:
        """Whether the file has bytes not indexed yet (a first read of a big file goes over several refreshes)."""
        try:
            return self.path.stat().st_size > self.offset
        except OSError:
            return False

    def read(self, max_bytes: int = 8 << 20, chunk_bytes: int = 1 << 20) -> int:
        """Index what was appended since the last call, up to `max_bytes` (the rest at the next call, so the
        first read of a huge file does not hold up a refresh); returns the number of events added."""
        try:
            with self.path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:  # replaced or truncated: what we indexed is gone
                    self.offset, self.partial = 0, b""
                    self.restarts += 1
                    self._clear()
                f.seek(self.offset)
                added, budget = 0, max_bytes
                while budget > 0:
                    chunk = f.read(min(chunk_bytes, budget))
                    if not chunk:
                        return added
                    budget -= len(chunk)
                    self.offset += len(chunk)
                    added += self._index(chunk)
                return added
        except OSError:
            return 0

    def _index(self, chunk: bytes) -> int:
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()  # an incomplete last line: the writer is mid-line
        added = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                self.damaged += 1  # a torn line followed by a new one: skipped, like engine.store.run_dir' reader
                continue
            if isinstance(event, dict):
                self._add(event)
                added += 1
        return added

    def _add(self, e: dict) -> None:
        self.events += 1
        cell_id = e.get("cell")
        if e.get("stage") == "upstream":
            if "loss" in e and "step" in e:
                self.upstream.setdefault(e.get("method", "?"), {})[e["step"]] = e["loss"]
            return
        if not cell_id:
            return
        if e.get("stage") == "downstream":
            self.last_cell = cell_id
        cell = self.cells.get(cell_id)
        if cell is None:
            cell = self.cells[cell_id] = CellEvents()
        cell.rev = self.events
        if e.get("event") == "cell_done":
            cell.done = {"dev": e.get("dev"), "test": e.get("test")}
            self.finished.append({"cell": cell_id, "dev": e.get("dev"), "test": e.get("test")})
        if "step" in e:
            if "loss" in e:
                cell.loss[e["step"]] = e["loss"]
            if "dev" in e:
                cell.dev[e["step"]] = e["dev"]

    # ---- lookups -----------------------------------------------------------------------

    def cell_curves(self, cell_id: str) -> tuple[Curve, Curve]:
        cell = self.cells.get(cell_id)
        return cell.curves() if cell else (([], []), ([], []))

    def upstream_curves(self) -> dict[str, Curve]:
        return {method: _curve(points) for method, points in list(self.upstream.items())}
