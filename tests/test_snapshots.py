"""Snapshots of every screen at 80x24 and 120x40.

The store here is written by hand with fixed ids, times and scores, so the
pictures are the same on every machine; the pilot tests in test_app.py use
stores filled by real runs.
"""

from __future__ import annotations

import json
import math

import pytest

from engine.experiment.plan import select_and_aggregate
from engine.store.run_dir import Run, write_json_atomic
from engine.store.index import RunIndex
from mpt_tui.app import MptApp

SIZES = [(80, 24), (120, 40)]
T0 = 1_790_000_000.0


def _write_run(root, run_id: str, state: str, methods: list[str], progress: float) -> None:
    run = Run(root / run_id)
    run.path.mkdir(parents=True)
    targets = ["poem_sentiment", "superglue-cb"]
    config = {"preset": {"name": "snap", "model": {"name": "smollm2-135m"}, "prompt": {"length": 8},
                         "downstream": {"learning_rates": [0.3, 0.1], "steps": 20, "batch_size": 4,
                                        "optimizer": "adafactor"}},
              "plan": {"setting": "class_to_class", "targets": targets, "seeds": [13, 42], "methods": methods}}
    write_json_atomic(run.config_path, config)
    cells = []
    for mi, method in enumerate(methods):
        for ti, task in enumerate(targets):
            for seed in (13, 42):
                for li, lr in enumerate((0.3, 0.1)):
                    value = 0.3 + 0.05 * mi + 0.1 * ti + 0.02 * li + (0.01 if seed == 42 else 0.0)
                    cells.append({"method": method, "task": task, "seed": seed, "lr": lr, "metric": "ACC",
                                  "dev": value, "test": value - 0.03, "best_step": 10 + 10 * li})
    lines = []
    for step in range(1, 21):
        lines.append({"t": T0 + step, "stage": "upstream", "method": "mtl", "step": step, "loss": 3 / step})
        lines.append({"t": T0 + step, "stage": "upstream", "method": "maml", "step": step,
                      "loss": 3.5 / step + 0.1 * math.sin(step)})
    for step in range(1, 21):
        lines.append({"t": T0 + 30 + step, "stage": "downstream", "cell": "pt__poem_sentiment__s13__lr0.3",
                      "step": step, "loss": 2.0 / step})
        if step % 5 == 0:
            lines.append({"t": T0 + 30 + step, "stage": "downstream", "cell": "pt__poem_sentiment__s13__lr0.3",
                          "step": step, "dev": 0.2 + 0.02 * step})
    if state == "finished":
        write_json_atomic(run.results_path, select_and_aggregate(cells))
        lines.append({"t": T0 + 60, "stage": "downstream", "cell": "pt__poem_sentiment__s13__lr0.3",
                      "event": "cell_done", "dev": 0.6, "test": 0.55})
    run.metrics_path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    run.log_path.write_text("2026-01-01 00:00:00,000 INFO loading smollm2-135m on cpu\n"
                            "2026-01-01 00:00:01,000 INFO cell pt__poem_sentiment__s13__lr0.3: start\n")
    status = {"state": state, "run_id": run_id, "created": T0, "started": T0, "progress": progress,
              "stage": "done" if state == "finished" else "downstream", "total_cells": 16,
              "pid": None, "heartbeat": T0}
    if state != "running":
        status["finished"] = T0 + 3725
    write_json_atomic(run.status_path, status)


ANALYSIS = {"version": 1, "sources": ["glue-sst2", "amazon_polarity", "ag_news", "trec"],
            "targets": ["poem_sentiment", "superglue-cb"],
            "kinds": {"prompt": {"matrix": [[0.91, 0.84, 0.22, 0.10], [0.35, 0.30, 0.41, 0.52]],
                                 "nearest": {"poem_sentiment": [["glue-sst2", 0.91], ["amazon_polarity", 0.84]],
                                             "superglue-cb": [["trec", 0.52], ["ag_news", 0.41]]}},
                      "text": {"matrix": [[0.71, 0.64, 0.52, 0.40], [0.55, 0.50, 0.61, 0.62]],
                               "nearest": {"poem_sentiment": [["glue-sst2", 0.71], ["amazon_polarity", 0.64]],
                                           "superglue-cb": [["trec", 0.62], ["ag_news", 0.61]]}}},
            "correlations": [{"similarity": "prompt", "method": "maml", "aggregate": "max", "level": "task", "n": 2,
                              "rho": 1.0, "p": 0.5},
                             {"similarity": "prompt", "method": "mtl", "aggregate": "mean", "level": "split", "n": 4,
                              "rho": -0.2, "p": 0.8}],
            "gains": {"maml": {"poem_sentiment": 0.1, "superglue-cb": 0.1}},
            "note": "2 targets: a rank correlation over so few targets means little"}


@pytest.fixture
def snapshot_store(tmp_path):
    root = tmp_path / "runs"
    _write_run(root, "20260101-000000-snap", "finished", ["pt", "mtl", "maml"], 1.0)
    _write_run(root, "20260101-010000-snap", "cancelled", ["pt", "mtl"], 0.42)
    write_json_atomic(root / "20260101-000000-snap" / "analysis.json", ANALYSIS)
    RunIndex(root).rebuild()
    return root


async def _settle(pilot) -> None:
    """Let the workers (run directories, index, data directory) deliver what they read, twice: what one
    delivers can start another (the Launch form's task catalog, then its plan line)."""
    for _ in range(2):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


SCREENS = {"runs": [], "runs-compare": ["down", "v"], "runs-upstream": ["v", "v"], "results": ["2"],
           "results-mean": ["2", "tab", "down", "down"], "launch": ["3"], "analysis": ["4"],
           "analysis-missing": ["4", "up", "enter"], "help": ["question_mark"]}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("keys", list(SCREENS.values()), ids=list(SCREENS))
def test_screen_snapshot(snap_compare, snapshot_store, size, keys, monkeypatch):
    monkeypatch.setenv("MPT_TUI_DATA_DIR", "")  # the demo preset's own data, wherever the test runs
    app = MptApp(snapshot_store, data_dir="", refresh_hz=4)

    async def run_before(pilot) -> None:
        await _settle(pilot)
        for key in keys:
            await pilot.press(key)
            await _settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)
