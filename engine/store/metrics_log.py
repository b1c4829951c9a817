"""metrics.jsonl read in one place: the whole file (`read_events`) or incrementally from a byte offset
(`MetricsTail`), and indexed per grid cell and upstream method (`EventIndex`).

The schema is engine.store.run_dir's (its module docstring). The rules every reader follows, here once:
a line that is not a JSON object (a worker killed mid-write) is skipped; a step logged twice (a resume
from a periodic checkpoint) keeps the later event; an upstream point needs "step" and "loss", a cell
point "cell" and "step".

`engine.store.run_dir`'s readers (`cell_curves`, `upstream_curves`, `last_cell`, `finished_cells`) and
the app's live index (`mpt_tui.events_index`, which re-exports `EventIndex`) both fold events through
`EventIndex.add`, so a curve is the same whichever reads it.

A paper-setting run has about 1,400 grid cells and hundreds of thousands of events. The app must not
keep them as a list and scan it per redraw: `EventIndex.read()` parses only the bytes appended since its
last call (it remembers the byte offset; a torn last line waits for its end; a file that shrank, i.e. was
replaced or truncated, is read again from the start) and files each event under its cell or upstream
method as a curve point, so a cell's curves, the finished cells and the cell training now are lookups.
One thread writes (`read`) while another only reads between calls; `rev` numbers say what changed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

Curve = tuple[list[int], list[float]]

# metrics.jsonl keys (the writers are engine.store.run_dir.Run.log_*)
STAGE, UPSTREAM, DOWNSTREAM = "stage", "upstream", "downstream"
METHOD, CELL, STEP, LOSS, DEV, TEST, EVENT, CELL_DONE = "method", "cell", "step", "loss", "dev", "test", "event", "cell_done"


def curve(points: dict[int, float]) -> Curve:
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def parse_lines(data: bytes) -> tuple[list[dict], int]:
    """(the JSON-object events of the complete lines in `data`, how many complete non-blank lines were not)."""
    events, damaged = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            damaged += 1
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, damaged


def read_events(path: Path) -> list[dict]:
    """Every complete event of a metrics.jsonl (missing file: none); a torn last line is skipped."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return []
    return parse_lines(data)[0]


class MetricsTail:
    """Reads a metrics.jsonl from a byte offset: each `read` returns the events appended since the last one.

    An incomplete last line (the writer is mid-line) is kept until its end arrives; a file that shrank
    (replaced or truncated) is read again from the start (`restarted` says so, once)."""

    def __init__(self, path: Path, offset: int = 0):
        self.path = Path(path)
        self.offset = offset
        self.partial = b""
        self.damaged = 0  # lines that were not JSON
        self.restarts = 0

    @property
    def behind(self) -> bool:
        """Whether the file has bytes not read yet."""
        try:
            return self.path.stat().st_size > self.offset
        except OSError:
            return False

    def read(self, max_bytes: int = 8 << 20, chunk_bytes: int = 1 << 20) -> tuple[list[dict], bool]:
        """(the events in up to `max_bytes` appended since the last call, whether the file was read again from
        the start because it shrank)."""
        restarted, events = False, []
        try:
            with self.path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:  # replaced or truncated: what was read is gone
                    self.offset, self.partial, restarted = 0, b"", True
                    self.restarts += 1
                f.seek(self.offset)
                budget = max_bytes
                while budget > 0:
                    chunk = f.read(min(chunk_bytes, budget))
                    if not chunk:
                        break
                    budget -= len(chunk)
                    self.offset += len(chunk)
                    data = self.partial + chunk
                    cut = data.rfind(b"\n") + 1
                    self.partial = data[cut:]
                    got, damaged = parse_lines(data[:cut])
                    events.extend(got)
                    self.damaged += damaged
        except OSError:
            pass
        return events, restarted


@dataclass(eq=False)
class CellEvents:
    """One grid cell's points: train loss and dev score by step, and its result once finished."""

    loss: dict[int, float] = field(default_factory=dict)
    dev: dict[int, float] = field(default_factory=dict)
    done: dict | None = None  # {"dev", "test"} of its cell_done event
    rev: int = 0  # the index's event count when this cell last changed

    def curves(self) -> tuple[Curve, Curve]:
        return curve(self.loss), curve(self.dev)

    def last_dev(self) -> float | None:
        return self.dev[max(self.dev)] if self.dev else None


class EventIndex:
    """metrics.jsonl events filed per cell and upstream method; `read()` tails `path`, `add()` takes one event."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else None
        self.tail = MetricsTail(self.path) if self.path is not None else None
        self._clear()

    @classmethod
    def of(cls, events) -> "EventIndex":
        """The index of a list of events already read (engine.store.run_dir's readers)."""
        index = cls()
        for event in events:
            if isinstance(event, dict):
                index.add(event)
        return index

    def _clear(self) -> None:
        self.cells: dict[str, CellEvents] = {}  # in the order they first logged
        self.upstream: dict[str, dict[int, float]] = {}  # method -> step -> loss
        self.finished: list[dict] = []  # {"cell", "dev", "test"} in the order they finished
        self.last_cell: str | None = None  # the cell that logged last (training now, in a live run)
        self.events = 0  # events indexed: also the revision number

    @property
    def offset(self) -> int:
        return self.tail.offset if self.tail else 0

    @property
    def restarts(self) -> int:
        return self.tail.restarts if self.tail else 0

    @property
    def damaged(self) -> int:
        return self.tail.damaged if self.tail else 0

    @property
    def behind(self) -> bool:
        """Whether the file has bytes not indexed yet (a first read of a big file goes over several refreshes)."""
        return bool(self.tail and self.tail.behind)

    def read(self, max_bytes: int = 8 << 20, chunk_bytes: int = 1 << 20) -> int:
        """Index what was appended since the last call, up to `max_bytes` (the rest at the next call, so the
        first read of a huge file does not hold up a refresh); returns the number of events added."""
        if self.tail is None:
            return 0
        events, restarted = self.tail.read(max_bytes, chunk_bytes)
        if restarted:
            self._clear()
        for event in events:
            self.add(event)
        return len(events)

    def add(self, e: dict) -> None:
        self.events += 1
        cell_id = e.get(CELL)
        if e.get(STAGE) == UPSTREAM:
            if LOSS in e and STEP in e:
                self.upstream.setdefault(e.get(METHOD, "?"), {})[e[STEP]] = e[LOSS]
            return
        if not cell_id:
            return
        if e.get(STAGE) == DOWNSTREAM:
            self.last_cell = cell_id
        cell = self.cells.get(cell_id)
        if cell is None:
            cell = self.cells[cell_id] = CellEvents()
        cell.rev = self.events
        if e.get(EVENT) == CELL_DONE:
            cell.done = {DEV: e.get(DEV), TEST: e.get(TEST)}
            self.finished.append({CELL: cell_id, DEV: e.get(DEV), TEST: e.get(TEST)})
        if STEP in e:
            if LOSS in e:
                cell.loss[e[STEP]] = e[LOSS]
            if DEV in e:
                cell.dev[e[STEP]] = e[DEV]

    # ---- lookups -----------------------------------------------------------------------

    def cell_curves(self, cell_id: str) -> tuple[Curve, Curve]:
        cell = self.cells.get(cell_id)
        return cell.curves() if cell else (([], []), ([], []))

    def upstream_curves(self) -> dict[str, Curve]:
        return {method: curve(points) for method, points in list(self.upstream.items())}
