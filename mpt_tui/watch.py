"""What the app knows about runs, read from run directories only (never torch).

`RunWatcher.refresh()` is cheap enough to call a few times a second with many
runs: it re-reads each status.json (small) and only the bytes appended to each
metrics.jsonl since the last call; a torn last line waits for its end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.runs import Run, list_runs, read_json


@dataclass
class RunView:
    run: Run
    status: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
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

    def elapsed_s(self) -> float | None:
        start = self.status.get("started")
        if not start:
            return None
        end = self.status.get("finished") if self.state not in ("running", "queued") else None
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

    def upstream_curves(self) -> dict[str, tuple[list[int], list[float]]]:
        curves: dict[str, tuple[list[int], list[float]]] = {}
        for e in self.events:
            if e.get("stage") == "upstream" and "loss" in e:
                xs, ys = curves.setdefault(e["method"], ([], []))
                xs.append(e["step"])
                ys.append(e["loss"])
        return curves

    def cell_curves(self, cell: str) -> tuple[tuple[list[int], list[float]], tuple[list[int], list[float]]]:
        """(train loss, dev score) of one downstream cell."""
        loss, dev = ([], []), ([], [])
        for e in self.events:
            if e.get("cell") != cell or "step" not in e:
                continue
            if "loss" in e:
                loss[0].append(e["step"])
                loss[1].append(e["loss"])
            if "dev" in e:
                dev[0].append(e["step"])
                dev[1].append(e["dev"])
        return loss, dev

    def last_cell(self) -> str | None:
        for e in reversed(self.events):
            if e.get("stage") == "downstream" and e.get("cell"):
                return e["cell"]
        return None

    def log_tail(self, lines: int = 12) -> str:
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

    def refresh(self) -> list[RunView]:
        seen = set()
        for run in list_runs(self.root):
            seen.add(run.id)
            view = self.views.get(run.id)
            if view is None:
                config = read_json(run.config_path)
                view = self.views[run.id] = RunView(run, config=config if isinstance(config, dict) else {})
            view.status = run.status()
            view.read_new_events()
        for gone in set(self.views) - seen:
            del self.views[gone]
        return sorted(self.views.values(), key=lambda v: v.id, reverse=True)
