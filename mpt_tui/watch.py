"""What the app knows about runs, read from run directories only (never torch).

`RunWatcher.refresh()` is cheap enough to call a few times a second with many
runs: it lists the runs again only when the runs root changed, re-reads a status.json
only when it changed (or its run is active), and reads the metrics of the run shown in
detail only, through that run's `EventIndex` (only the bytes appended since the
last call, indexed per cell; see `mpt_tui.events_index`). It runs in a worker
thread (the Runs screen's `refresh_runs`), one call at a time, and the screen
starts the next one only after it has shown the last one's views, so the UI
thread never reads an index while it grows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from engine.experiment import Cell, Plan, grid_cells
from engine.store import ACTIVE_STATES, Curve, Run, list_runs, read_json
from mpt_tui.events_index import EventIndex


@dataclass(eq=False)  # compared by identity: a view is the same run's view for the app's whole life
class RunView:
    run: Run
    status: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    log: str = ""  # the log's tail, read by `refresh` for the run the app shows in detail
    status_stamp: tuple | None = None  # status.json's (mtime, size) when last read

    @cached_property
    def index(self) -> EventIndex:
        return EventIndex(self.run.metrics_path)

    @cached_property
    def grid(self) -> list[Cell]:
        """The run's grid cells in grid order, from its config (empty when the config lacks them)."""
        try:
            plan = self.config["plan"]
            lrs = list(self.config["preset"]["downstream"]["learning_rates"])
            return grid_cells(Plan("", None, "", [], list(plan["targets"]), list(plan["seeds"]),
                                   methods=list(plan.get("methods") or ["pt"])), lrs)
        except (KeyError, TypeError):
            return []

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

    def read_status(self) -> None:
        """Re-read status.json if it changed, or if the run is active (its state is derived from the clock
        and the worker's pid, so an unchanged file can still turn 'crashed')."""
        try:
            st = self.run.status_path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp is None or stamp != self.status_stamp or self.is_active():
            self.status = self.run.status()
            self.status_stamp = stamp

    def read_new_events(self) -> int:
        """Index the metrics events written since the last call; returns how many were added."""
        return self.index.read()

    def upstream_curves(self) -> dict[str, Curve]:
        return self.index.upstream_curves()

    def cell_curves(self, cell: str) -> tuple[Curve, Curve]:
        """(train loss, dev score) of one downstream cell."""
        return self.index.cell_curves(cell)

    def last_cell(self) -> str | None:
        return self.index.last_cell

    def finished_cells(self) -> list[dict]:
        return self.index.finished

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
    RELIST_S = 2.0

    def __init__(self, root: Path):
        self.root = Path(root)
        self.views: dict[str, RunView] = {}
        self._lock = threading.Lock()  # one refresh at a time, whichever thread calls it
        self._listed: tuple[int | None, float, list[Run]] = (None, 0.0, [])  # (root's mtime, when, runs) last listed

    def refresh(self, detail: str | None = None) -> list[RunView]:
        """Every run's view, newest first; `detail`: the run whose log tail is read too (None: the newest)."""
        with self._lock:
            runs = self._runs()
            if detail is None and runs:
                detail = runs[-1].id
            for run in runs:
                view = self.views.get(run.id)
                if view is None:
                    config = read_json(run.config_path)
                    view = self.views[run.id] = RunView(run, config=config if isinstance(config, dict) else {})
                view.read_status()
                if run.id == detail:  # only the run shown in detail: the others' metrics are not drawn
                    view.read_new_events()
                    view.log = view.log_tail()
            for gone in set(self.views) - {run.id for run in runs}:
                del self.views[gone]
            return sorted(self.views.values(), key=lambda v: v.id, reverse=True)

    def _runs(self) -> list[Run]:
        """The run directories, listed again when the root changed (a run created or deleted) and every
        RELIST_S anyway (a run directory made just before its config.json was written is listed then)."""
        try:
            mtime = self.root.stat().st_mtime_ns
        except OSError:
            mtime = None
        listed_mtime, listed_at, runs = self._listed
        now = time.monotonic()
        if mtime is None or mtime != listed_mtime or now - listed_at > self.RELIST_S:
            self._listed = (mtime, now, list_runs(self.root))
        return self._listed[2]
