"""A run as `mpt-tui show` sees it: state, progress, key settings and the comparison table so far.

Everything is read from the run directory (never torch), so it works the same for a
running, cancelled, crashed or finished run. The table so far is the paper's
selection over the finished grid cells, but only over complete splits: a split
(method, target task, seed) counts once every one of its learning rates is
finished, because a best-dev choice over some of them would mislead. The rest is
pending. `complete_split_records` is that rule, in one place.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from engine.experiment.methods import PT, in_display_order
from engine.experiment.plan import Cell, Plan, grid_cells, select_and_aggregate
from engine.experiment.records import SPLITS, CellRecord
from engine.results.reference import overview_block
from engine.results.report import Column, Report, build_report
from engine.store.run_dir import ACTIVE_STATES, Run, RunsDirError

LOG_TAIL_LINES = 10


def complete_split_records(cells: list[Cell], records: dict[str, CellRecord]) -> list[CellRecord]:
    """The finished records (grid order) of the splits whose learning rates are all finished; the rest wait."""
    by_split: dict[tuple, list[Cell]] = {}
    for cell in cells:
        by_split.setdefault((cell.method, cell.task, cell.seed), []).append(cell)
    complete = {key for key, members in by_split.items() if all(c.id in records for c in members)}
    return [records[c.id] for c in cells if (c.method, c.task, c.seed) in complete]


@dataclass
class PartialResults:
    """The comparison over a run's complete splits so far (all of them once the run finished)."""

    results: dict  # engine.experiment.plan.select_and_aggregate over the complete splits: "splits", "tasks", "mean"
    methods: list[str]
    targets: list[str]
    seeds: list[int]
    learning_rates: list[float]
    cells_done: int
    cells_total: int
    splits_done: dict[str, dict[str, int]] = field(default_factory=dict)  # method -> task -> complete splits

    @property
    def splits_total(self) -> int:
        return len(self.seeds)

    @property
    def complete(self) -> bool:
        return all(self.splits_done[m][t] == self.splits_total for m in self.methods for t in self.targets)

    def to_dict(self) -> dict:
        return {"complete": self.complete, "cells": {"done": self.cells_done, "total": self.cells_total},
                "splits_total": self.splits_total, "splits_done": self.splits_done,
                "learning_rates": self.learning_rates, **self.results}


def run_plan(run: Run) -> tuple[dict, Plan]:
    """The run's stored preset (as a dict) and plan; a damaged config.json is a RunsDirError."""
    config = run.config()
    try:
        return dict(config["preset"]), Plan(**config["plan"])
    except (KeyError, TypeError) as exc:
        raise RunsDirError(f"{run.config_path}: damaged ({exc})") from None


def partial_results(run: Run) -> PartialResults:
    preset, plan = run_plan(run)
    learning_rates = list(preset.get("downstream", {}).get("learning_rates", []))
    cells = grid_cells(plan, learning_rates)
    records = run.finished_cell_records([c.id for c in cells])
    complete = complete_split_records(cells, records)
    results = select_and_aggregate(complete) if complete else {"splits": [], "tasks": {}, "mean": {}}
    splits_done = {m: {t: 0 for t in plan.targets} for m in plan.methods}
    for split in map(CellRecord.from_dict, results[SPLITS]):
        splits_done[split.method][split.task] += 1
    return PartialResults(results, list(plan.methods), list(plan.targets), list(plan.seeds), learning_rates,
                          len(records), len(cells), splits_done)


def partial_report(partial: PartialResults, run_id: str) -> Report:
    """engine.results.report's table over the complete splits, with every method and target task of the run as a
    column and a row (a pending one shows no score)."""
    report = build_report([{"run_id": run_id, **partial.results}])
    if partial.complete:
        return report
    columns = [Column(run_id, m) for m in in_display_order(partial.methods)]
    metrics = {t: report.metrics.get(t, "") for t in partial.targets}
    means = {c: report.means.get(c) for c in columns}
    gains = {c: report.gains.get(c) for c in columns}
    return Report(columns, sorted(partial.targets), report.scores, metrics, means, gains)


def partial_note(partial: PartialResults) -> str:
    """What a partial table holds, in one line."""
    done = sum(n for by_task in partial.splits_done.values() for n in by_task.values())
    total = partial.splits_total * len(partial.methods) * len(partial.targets)
    n_lr = len(partial.learning_rates)
    return (f"{done} of {total} splits complete (a split counts once all its {n_lr} learning rate"
            f"{'s are' if n_lr != 1 else ' is'} finished); each score and mean is over the complete ones")


def elapsed_s(status: dict) -> float | None:
    start = status.get("started")
    if not start:
        return None
    end = status.get("finished") if status.get("state") not in ACTIVE_STATES else None
    end = end if end and end >= start else None
    return (end or time.time()) - start


def log_tail(run: Run, lines: int = LOG_TAIL_LINES, max_bytes: int = 1 << 16) -> list[str]:
    """The log's last lines (its last 64 KiB at most); none when there is no log yet."""
    try:
        with run.log_path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return list(deque(text.splitlines(), maxlen=lines)) if lines > 0 else []


def preset_keys(preset: dict, plan: Plan) -> dict:
    """The preset's key values, as `show` prints them."""
    down, up, prompt, model = (preset.get(k, {}) for k in ("downstream", "upstream", "prompt", "model"))
    return {"name": preset.get("name", ""), "model": model.get("name", ""), "device": model.get("device", ""),
            "setting": plan.setting, "sources": list(plan.sources), "targets": list(plan.targets),
            "seeds": list(plan.seeds), "methods": list(plan.methods), "prompt_length": prompt.get("length"),
            "learning_rates": list(down.get("learning_rates", [])), "steps": down.get("steps"),
            "batch_size": down.get("batch_size"), "optimizer": down.get("optimizer", ""),
            "upstream_steps": up.get("steps") if plan.methods != [PT] else None}


def overview(run: Run, log_lines: int = LOG_TAIL_LINES) -> tuple[dict, PartialResults, Report]:
    """Everything `mpt-tui show` prints: plain JSON-ready data (NaN as None), and the partial results and
    table it was made from (read once, so the text and the table agree)."""
    status = run.status()
    preset, plan = run_plan(run)
    partial = partial_results(run)
    report = partial_report(partial, run.id)
    gains = {c.method: report.gains.get(c) for c in report.columns}
    data = json_safe({
        "run_id": run.id, "path": str(run.path), "state": status.get("state"), "stage": status.get("stage", ""),
        "progress": status.get("progress"), "eta_s": status.get("eta_s") if status.get("state") in ACTIVE_STATES
        else None, "elapsed_s": elapsed_s(status), "device": status.get("device"), "pid": status.get("pid"),
        "device_name": status.get("device_name"), "precision": status.get("precision"),
        "cluster": status.get("cluster"),
        "error": status.get("error"), "warnings": status.get("warnings", []), "created": status.get("created"),
        "started": status.get("started"), "finished": status.get("finished"),
        "preset": preset_keys(preset, plan), "results": {**partial.to_dict(), "gain": gains,
                                                      "note": "" if partial.complete else partial_note(partial)},
        "analysis": analysis_summary(run),
        "reported": overview_block(report, {"run_id": run.id, "setting": plan.setting,
                                            "model": preset.get("model", {}).get("name", ""),
                                            "seeds": list(plan.seeds)}),
        "log_path": str(run.log_path), "log_tail": log_tail(run, log_lines)})
    return data, partial, report


def analysis_summary(run: Run) -> dict | None:
    """The run's task similarity analysis in brief: its kinds, and when one was added after the run by
    `mpt-tui analyse` (its request: when, with which settings and other runs); None without one."""
    from engine.results.analysis import analysis_request, read_analysis

    doc = read_analysis(run)
    request = analysis_request(run)
    if doc is None and request is None:
        return None
    return {"kinds": sorted(doc["kinds"]) if doc else [], "done": doc is not None,
            "added_later": (doc or {}).get("requested") or request}


def json_safe(obj):
    """JSON without NaN (scripts parse it strictly)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj

