"""Run directories: the source of truth for every run.

    <runs>/<run-id>/config.json     resolved preset, written once
                    status.json     state, stage, progress, pid, heartbeat (replaced atomically)
                    metrics.jsonl   append-only events
                    cells/<cell>.json   one finished grid cell each (a finished cell is never recomputed)
                    results.json    per-split selection and per-task aggregates, when finished
                    prompts/*.safetensors
                    engine.log

"crashed" is derived, never stored: a status that says running whose process is
gone (or whose heartbeat is stale) reads as crashed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs

RUNS_DIR_ENV = "MPT_TUI_RUNS_DIR"
STATES = ("queued", "running", "finished", "failed", "cancelled", "crashed")
HEARTBEAT_STALE_S = 120.0


class RunsDirError(OSError):
    pass


def default_runs_root() -> Path:
    return Path(os.environ.get(RUNS_DIR_ENV) or Path(platformdirs.user_data_dir("mpt-tui")) / "runs")


def ensure_writable_root(root: Path) -> Path:
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunsDirError(f"runs directory {root} cannot be created: {exc.strerror}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise RunsDirError(f"runs directory {root} is not writable")
    return root


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, allow_nan=True), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path):
    """Parsed JSON, or None when the file is missing or damaged (a run killed mid-write)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "run"


def pid_alive(pid: int | None, host: str | None = None) -> bool:
    if not pid or (host and host != socket.gethostname()):
        return bool(pid)  # another machine's process: trust the heartbeat instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Run:
    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def log_path(self) -> Path:
        return self.path / "engine.log"

    @property
    def cells_dir(self) -> Path:
        return self.path / "cells"

    @property
    def prompts_dir(self) -> Path:
        return self.path / "prompts"

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    def config(self) -> dict:
        cfg = read_json(self.config_path)
        if not isinstance(cfg, dict):
            raise RunsDirError(f"{self.config_path}: missing or damaged")
        return cfg

    def status(self) -> dict:
        """The stored status with the derived state; damaged files give state 'damaged'."""
        raw = read_json(self.status_path)
        if not isinstance(raw, dict) or raw.get("state") not in STATES:
            return {"state": "damaged", "run_id": self.id}
        status = dict(raw)
        if status["state"] in ("running", "queued") and status.get("pid"):
            stale = time.time() - float(status.get("heartbeat", 0)) > HEARTBEAT_STALE_S
            if not pid_alive(status.get("pid"), status.get("host")) or stale:
                status["state"] = "crashed"
        return status

    def update_status(self, **fields) -> dict:
        status = read_json(self.status_path)
        status = status if isinstance(status, dict) else {}
        status.update(fields, run_id=self.id, updated=time.time())
        write_json_atomic(self.status_path, status)
        return status

    def append_event(self, event: dict) -> None:
        event = {"t": round(time.time(), 3), **event}
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(event, allow_nan=True) + "\n")

    def events(self) -> list[dict]:
        """All complete events; a torn last line (killed mid-write) is skipped."""
        out = []
        try:
            lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return out
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def create_run(root: Path, config: dict, name: str) -> Run:
    """Allocate a run directory race-free (atomic mkdir, retry on collision) and write its config."""
    root = ensure_writable_root(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        run_id = f"{stamp}-{_slug(name)}" + (f"-{attempt}" if attempt else "")
        try:
            (root / run_id).mkdir()
        except FileExistsError:
            continue
        run = Run(root / run_id)
        write_json_atomic(run.config_path, config)
        run.update_status(state="queued", created=time.time(), name=name)
        return run
    raise RunsDirError(f"could not allocate a run id in {root}")


def list_runs(root: Path) -> list[Run]:
    root = Path(root)
    if not root.is_dir():
        return []
    return [Run(p) for p in sorted(root.iterdir()) if p.is_dir() and (p / "config.json").exists()]
