"""The run index: one TinyDB document of summary per run, for browsing and export.

TinyDB is not safe across processes and rewrites its whole JSON file on each
write, so every access holds a file lock and only summaries are stored (never
per-step metrics). Run directories stay the source of truth: a lost or damaged
index is moved aside and rebuilt from them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from filelock import FileLock
from tinydb import Query, TinyDB

from engine.base import faults
from engine.experiment.records import MEAN, SPLITS, TASKS
from engine.store.run_dir import Run, list_runs, read_json
from engine.experiment.similarity import ANALYSIS_FILE, index_entry

INDEX_FILE = "index.json"


def summarize(run: Run) -> dict:
    """The index document of a run, from its directory alone."""
    config = read_json(run.config_path) or {}
    preset = config.get("preset", {})
    plan = config.get("plan", {})
    status = run.status()
    results = read_json(run.results_path) or {}
    analysis = read_json(run.path / ANALYSIS_FILE)
    summary = {
        "run_id": run.id,
        "name": preset.get("name", ""),
        "state": status.get("state", "damaged"),
        "created": status.get("created"),
        "finished": status.get("finished"),
        "model": preset.get("model", {}).get("name", ""),
        "setting": plan.get("setting", ""),
        "targets": plan.get("targets", []),
        "seeds": plan.get("seeds", []),
        "methods": plan.get("methods", []),
        "prompt_length": preset.get("prompt", {}).get("length"),
        "learning_rates": preset.get("downstream", {}).get("learning_rates", []),
        "steps": preset.get("downstream", {}).get("steps"),
        "batch_size": preset.get("downstream", {}).get("batch_size"),
        "optimizer": preset.get("downstream", {}).get("optimizer", ""),
        SPLITS: results.get(SPLITS, []),  # engine.experiment.records: results.json's keys
        TASKS: results.get(TASKS, {}),
        MEAN: results.get(MEAN, {}),
    }
    if isinstance(analysis, dict) and analysis.get("kinds"):  # a pointer and the top sources, never the matrix
        summary["analysis"] = index_entry(analysis)
    return summary


class RunIndex:
    def __init__(self, root: Path, timeout_s: float = 120.0):
        self.root = Path(root)
        self.path = self.root / INDEX_FILE
        self.lock = FileLock(str(self.path) + ".lock", timeout=timeout_s)

    def _open(self) -> TinyDB:
        """Open under the lock; a missing, empty or damaged index is rebuilt from the run directories."""
        if self.path.exists() and self.path.stat().st_size > 0:
            try:
                db = TinyDB(self.path)
                db.all()  # parse now, so damage is found under the lock
                return db
            except (ValueError, json.JSONDecodeError):
                damaged = self.path.with_name(f"{INDEX_FILE}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
                self.path.replace(damaged)
        db = TinyDB(self.path)
        for run in list_runs(self.root):
            db.insert(summarize(run))
        return db

    def upsert(self, summary: dict) -> None:
        with self.lock:
            db = self._open()
            try:
                faults.point("write")
                db.upsert(summary, Query().run_id == summary["run_id"])
            finally:
                db.close()

    def record(self, run: Run) -> dict:
        summary = summarize(run)
        self.upsert(summary)
        return summary

    def remove(self, run_id: str) -> None:
        with self.lock:
            db = self._open()
            try:
                db.remove(Query().run_id == run_id)
            finally:
                db.close()

    def all(self) -> list[dict]:
        if not self.root.is_dir():
            return []
        with self.lock:
            db = self._open()
            try:
                return sorted(db.all(), key=lambda d: d.get("run_id", ""))
            finally:
                db.close()

    def rebuild(self) -> int:
        with self.lock:
            if self.path.exists():
                self.path.unlink()
            db = TinyDB(self.path)
            try:
                runs = list_runs(self.root)
                for run in runs:
                    db.insert(summarize(run))
                return len(runs)
            finally:
                db.close()
