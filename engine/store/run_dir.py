"""Run directories: the source of truth for every run. `Run` owns every path in one.

    <runs>/<run-id>/config.json         the resolved preset and plan, written once, with "schema"
                                        (engine.experiment.records.SCHEMA; none: an old run, schema 0)
                    status.json         state, stage, progress, ETA, pid, host, heartbeat (replaced atomically)
                    metrics.jsonl       append-only events (schema below)
                    groups.json         which grid cells train together; a resumed run keeps it
                    cells/<cell>.json   one finished grid cell each (a finished cell is never recomputed):
                                        engine.experiment.records.CellRecord (read_record, write_record)
                    checkpoints/upstream-<method>.pt, checkpoints/<cell>.pt
                                        work in progress (+ a .json beside each with its step)
                    prompts/upstream-<method>.safetensors   a learned initialisation
                    prompts/upstream-<method>-<set>.safetensors  the same, of one source set under
                                        data.sources = "nearest:K" (<set>: engine.experiment.plan.source_set_key;
                                        checkpoints likewise)
                    prompts/<cell>.safetensors              a cell's best-dev prompt
                    results.json        per-split selection and per-task aggregates, when finished
                    engine.log          the worker's log (and anything it printed)
    <runs>/index.json (+ .lock)         the run index (engine.store.index), summaries only
    <runs>/.devices/<device>.lock       the device queue (engine.runner.devices)
    <runs>/exports/                     CSV files the app exports

metrics.jsonl holds one JSON object a line, each with "t" (unix time) and "stage":
    {"stage": "upstream", "method": M, "step": S, "loss": L}          Run.log_upstream_loss
    {"stage": "downstream", "cell": C, "step": S, "loss": L}          Run.log_cell_loss
    {"stage": "downstream", "cell": C, "step": S, "dev": D}           Run.log_cell_dev
    {"stage": "downstream", "cell": C, "event": "cell_done", "dev": D, "test": T}   Run.log_cell_done
Readers use the functions below (`upstream_curves`, `cell_curves`, `last_cell`,
`finished_cells`) or engine.store.metrics_log (the one parser and fold behind them, incremental
from a byte offset for the app), never the keys. A step may appear twice after a resume from a
periodic checkpoint: the later event wins.

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

from engine.base import durable
from engine.experiment.records import SCHEMA, SCHEMA_KEY, CellRecord, SchemaError, check_schema, schema_of
from engine.store import metrics_log

RUNS_DIR_ENV = "MPT_TUI_RUNS_DIR"
STATES = ("queued", "running", "finished", "failed", "cancelled", "crashed")
ACTIVE_STATES = ("queued", "running")  # a worker owns the run (or should: else it reads as crashed)
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
    """Whole or not at all, and on the disk once this returns (engine.base.durable)."""
    durable.write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=True).encode("utf-8"))


def read_json(path: Path):
    """Parsed JSON, or None when the file is missing or damaged (a run killed mid-write)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_record(path: Path, kind=CellRecord):
    """The record stored at `path` (a CellRecord, or `kind`), or None when the file is missing or damaged;
    a newer schema than this code knows is a RunsDirError naming the file."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        return None
    try:
        return kind.from_dict(doc, path)
    except SchemaError as exc:
        if schema_of(doc) > SCHEMA:
            raise RunsDirError(str(exc)) from None
        return None


def write_record(path: Path, record) -> None:
    """A record (CellRecord, UpstreamRecord, or a CellRecord's dict) written whole, with the schema."""
    write_json_atomic(path, (record if hasattr(record, "to_dict") else CellRecord.from_dict(record)).to_dict())


def read_results(path: Path) -> dict | None:
    """results.json, or None when missing or damaged; a newer schema is a RunsDirError naming the file."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        return None
    try:
        check_schema(doc, path)
    except SchemaError as exc:
        raise RunsDirError(str(exc)) from None
    return doc


def write_results(path: Path, results: dict) -> dict:
    """results.json: engine.experiment.plan.select_and_aggregate's document with the schema; returns what it wrote."""
    doc = {**results, SCHEMA_KEY: SCHEMA}
    write_json_atomic(path, doc)
    return doc


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "run"


def _upstream_name(method: str, source_set: str) -> str:
    return f"{method}-{source_set}" if source_set else method


def pid_alive(pid: int | None, host: str | None = None) -> bool:
    if not pid or (host and host != socket.gethostname()):
        return bool(pid)  # another machine's process: trust the heartbeat instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A worker that died but was not reaped yet (its parent, say the app, has not waited for it) is dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS): the heartbeat catches it
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


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

    @property
    def groups_path(self) -> Path:
        return self.path / "groups.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def cell_path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.json"

    def cell_checkpoint(self, cell_id: str) -> Path:
        return self.checkpoints_dir / f"{cell_id}.pt"

    def cell_prompt(self, cell_id: str) -> Path:
        return self.prompts_dir / f"{cell_id}.safetensors"

    def upstream_checkpoint(self, method: str, source_set: str = "") -> Path:
        """`source_set`: the key of a nearest:K source set; "" (every target's sources) keeps the plain name."""
        return self.checkpoints_dir / f"upstream-{_upstream_name(method, source_set)}.pt"

    def upstream_prompt(self, method: str, source_set: str = "") -> Path:
        return self.prompts_dir / f"upstream-{_upstream_name(method, source_set)}.safetensors"

    def finished_cell_records(self, cell_ids) -> dict[str, CellRecord]:
        """The stored record of every finished cell among `cell_ids` (a damaged file counts as not done; a
        record of a newer schema is a RunsDirError naming it)."""
        records = {cell_id: read_record(self.cell_path(cell_id)) for cell_id in cell_ids}
        return {k: v for k, v in records.items() if v is not None}

    def save_cell_record(self, cell_id: str, record: CellRecord | dict) -> None:
        self.cells_dir.mkdir(exist_ok=True)
        write_record(self.cell_path(cell_id), record)  # written last: from now on the cell is done

    def config(self) -> dict:
        """config.json without its "schema" (`schema()`; a newer one than this code knows is a RunsDirError)."""
        cfg = read_json(self.config_path)
        if not isinstance(cfg, dict):
            raise RunsDirError(f"{self.config_path}: missing or damaged")
        try:
            check_schema(cfg, self.config_path)
        except SchemaError as exc:
            raise RunsDirError(str(exc)) from None
        return {k: v for k, v in cfg.items() if k != SCHEMA_KEY}

    def schema(self) -> int:
        """The schema config.json names (0: a run written before schemas existed)."""
        return schema_of(read_json(self.config_path))

    def status(self) -> dict:
        """The stored status with the derived state; damaged files give state 'damaged'."""
        raw = read_json(self.status_path)
        if not isinstance(raw, dict) or raw.get("state") not in STATES:
            return {"state": "damaged", "run_id": self.id}
        status = dict(raw)
        if status["state"] in ACTIVE_STATES and status.get("pid"):
            stale = time.time() - float(status.get("heartbeat", 0)) > HEARTBEAT_STALE_S
            if not pid_alive(status.get("pid"), status.get("host")) or stale:
                status["state"] = "crashed"
        elif status["state"] in ACTIVE_STATES:  # no worker ever wrote its pid (it died before its first write)
            if time.time() - float(status.get("updated") or status.get("created") or 0) > HEARTBEAT_STALE_S:
                status["state"] = "crashed"  # after the same grace as a stale heartbeat: resumable
        return status

    def update_status(self, **fields) -> dict:
        status = read_json(self.status_path)
        status = status if isinstance(status, dict) else {}
        status.update(fields, run_id=self.id, updated=time.time())
        write_json_atomic(self.status_path, status)
        return status

    def is_active(self) -> bool:
        return self.status()["state"] in ACTIVE_STATES

    # ---- metrics.jsonl: the writers (the schema is in the module docstring) ----------

    def _append_event(self, event: dict) -> None:
        event = {"t": round(time.time(), 3), **event}
        line = (json.dumps(event, allow_nan=True) + "\n").encode("utf-8")
        with self.metrics_path.open("a+b") as f:
            if f.tell():  # a worker killed mid-line left a torn last line: start on a fresh one
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)

    def log_upstream_loss(self, method: str, step: int, loss: float) -> None:
        self._append_event({"stage": "upstream", "method": method, "step": step, "loss": loss})

    def log_cell_loss(self, cell_id: str, step: int, loss: float) -> None:
        self._append_event({"stage": "downstream", "cell": cell_id, "step": step, "loss": loss})

    def log_cell_dev(self, cell_id: str, step: int, score: float) -> None:
        self._append_event({"stage": "downstream", "cell": cell_id, "step": step, "dev": score})

    def log_cell_done(self, cell_id: str, dev: float, test: float) -> None:
        self._append_event({"stage": "downstream", "cell": cell_id, "event": "cell_done", "dev": dev, "test": test})

    def events(self) -> list[dict]:
        """All complete events; a torn last line (killed mid-write) is skipped (engine.store.metrics_log)."""
        return metrics_log.read_events(self.metrics_path)


# ---- metrics.jsonl: the readers (one fold, engine.store.metrics_log.EventIndex, for these and the app) ----

Curve = metrics_log.Curve


def upstream_curves(events: list[dict]) -> dict[str, Curve]:
    """Each upstream method's loss by meta-update."""
    return metrics_log.EventIndex.of(events).upstream_curves()


def cell_curves(events: list[dict], cell_id: str) -> tuple[Curve, Curve]:
    """(train loss, dev score) of one grid cell, by step."""
    return metrics_log.EventIndex.of(e for e in events if e.get(metrics_log.CELL) == cell_id).cell_curves(cell_id)


def last_cell(events: list[dict]) -> str | None:
    """The grid cell that logged last (the one training now, in a running run)."""
    return metrics_log.EventIndex.of(events).last_cell


def finished_cells(events: list[dict]) -> list[dict]:
    """{"cell", "dev", "test"} of each finished cell, in the order they finished."""
    return metrics_log.EventIndex.of(events).finished


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
        write_json_atomic(run.config_path, {**config, SCHEMA_KEY: SCHEMA})
        run.update_status(state="queued", created=time.time(), name=name)
        return run
    raise RunsDirError(f"could not allocate a run id in {root}")


def list_runs(root: Path) -> list[Run]:
    root = Path(root)
    if not root.is_dir():
        return []
    return [Run(p) for p in sorted(root.iterdir()) if p.is_dir() and (p / "config.json").exists()]


def find_run(root: Path, ref: str) -> Run:
    """The run whose id is `ref`, or the one run whose id starts with it; reads only.

    An unknown id or an ambiguous prefix is a one-line RunsDirError (the ambiguous one lists the matches).
    """
    root = Path(root)
    if not root.is_dir():
        raise RunsDirError(f"runs directory {root} does not exist")
    ref = ref.strip()
    if not ref or "/" in ref or ref in (".", ".."):
        raise RunsDirError(f"'{ref}' is not a run id")
    runs = list_runs(root)
    exact = [r for r in runs if r.id == ref]
    if exact:
        return exact[0]
    matches = [r for r in runs if r.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunsDirError(f"no run '{ref}' in {root}")
    shown = ", ".join(r.id for r in matches[:10]) + (f" and {len(matches) - 10} more" if len(matches) > 10 else "")
    raise RunsDirError(f"'{ref}' matches {len(matches)} runs: {shown}")
