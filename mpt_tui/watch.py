"""What the app knows about runs, read from run directories only (never torch).

`RunWatcher.refresh()` is cheap enough to call a few times a second with many
runs: it re-reads each status.json (small) and only the bytes appended to each
metrics.jsonl since the last call; a torn last line waits for its end. It runs
in a worker thread (the Runs screen's `refresh_runs`), one call at a time; the UI
thread only reads the views it hands over: a view's `status` and `log` are
replaced whole, its `events` list only grows.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.runs import ACTIVE_STATES, Curve, Run, cell_curves, finished_cells, last_cell, list_runs, read_json, \
    upstream_curves


@dataclass(eq=False)  # compared by identity: a view is the same run's view for the app's whole life
class RunView:
    run: Run
    status: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    log: str = ""  # the log's tail, read by `refresh` for the run the app shows in detail
    _offset: int = 0
    _partial: bytes = b""

    @property
    def id(self) -> str:
        return self.run.id

    @property
    def state(self) -> str:
        return self.status.get("state", "damaged")

    @property
    def name(self) -> str:
        return self.config.get("preset", {}).get("name", "?")

    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    def elapsed_s(self) -> float | None:
        start = self.status.get("started")
        if not start:
            return None
        end = self.status.get("finished") if not self.is_active() else None
        return (end or time.time()) - start

    def read_new_events(self, max_bytes: int = 4 << 20) -> int:
        """Append events written since the last call; returns how many were added."""
        try:
            with self.run.metrics_path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read(max_bytes)
        except OSError:
            return 0
        if not chunk:
            return 0
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an incomplete last line (the writer is mid-line)
        added = 0
        for line in lines:
            try:
                self.events.append(json.loads(line))
                added += 1
            except ValueError:
                continue  # a damaged line (a run killed mid-write) is skipped
        return added

    # the metrics.jsonl readers are engine.runs' (the schema lives there)

    def upstream_curves(self) -> dict[str, Curve]:
        return upstream_curves(self.events)

    def cell_curves(self, cell: str) -> tuple[Curve, Curve]:
        """(train loss, dev score) of one downstream cell."""
        return cell_curves(self.events, cell)

    def last_cell(self) -> str | None:
        return last_cell(self.events)

    def finished_cells(self) -> list[dict]:
        return finished_cells(self.events)

    def log_tail(self, lines: int = 14) -> str:
        try:
            with self.run.log_path.open("rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - 8192))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class RunWatcher:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.views: dict[str, RunView] = {}
        self._lock = threading.Lock()  # one refresh at a time, whichever thread calls it

    def refresh(self, detail: str | None = None) -> list[RunView]:
        """Every run's view, newest first; `detail`: the run whose log tail is read too (None: the newest)."""
        with self._lock:
            runs = list_runs(self.root)
            if detail is None and runs:
                detail = runs[-1].id
            for run in runs:
                view = self.views.get(run.id)
                if view is None:
                    config = read_json(run.config_path)
                    view = self.views[run.id] = RunView(run, config=config if isinstance(config, dict) else {})
                view.status = run.status()
                view.read_new_events()
                if run.id == detail:
                    view.log = view.log_tail()
            for gone in set(self.views) - {run.id for run in runs}:
                del self.views[gone]
            return sorted(self.views.values(), key=lambda v: v.id, reverse=True)
