"""CSV export (engine.export) from the index, through the CLI too; results are synthetic cell records."""

from __future__ import annotations

import csv
import io
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.export import SPLIT_COLUMNS, split_rows, table_rows, to_csv
from engine.protocol import select_and_aggregate
from engine.runs import Run, create_run, list_runs, write_json_atomic
from engine.store import RunIndex, summarize

from conftest import EXPECTED_CHOICE, synthetic_cells

PRESET_FOR_EXPORT = {
    "name": "exp", "model": {"name": "tiny-model"}, "prompt": {"length": 16},
    "downstream": {"learning_rates": [0.3, 0.1], "steps": 30, "batch_size": 8, "optimizer": "adafactor"},
}


@pytest.fixture
def export_runs(tmp_path) -> Path:
    """Three runs as the worker leaves them: two finished with results, one queued without; all indexed."""
    root = tmp_path / "runs"
    full = select_and_aggregate(synthetic_cells())
    only_b = select_and_aggregate([c for c in synthetic_cells() if c["task"] == "task-b"])
    index = RunIndex(root)
    for name, results in (("first", full), ("second", only_b), ("third", None)):
        config = {"preset": {**PRESET_FOR_EXPORT, "name": name},
                  "plan": {"setting": "cls", "targets": ["task-a", "task-b", "task-c"], "seeds": [13, 42, 100],
                           "methods": ["pt", "mpt"]}}
        run = create_run(root, config, name)
        if results is not None:
            write_json_atomic(run.results_path, results)
            run.update_status(state="finished", finished=time.time())
        index.record(run)
        time.sleep(0.01)
    return root


def _expected_split_keys(root: Path) -> list[tuple]:
    runs = {Run(p).config()["preset"]["name"]: p.name for p in root.iterdir() if p.is_dir()}
    keys = [(runs["first"], m, t, s) for (m, t, s) in EXPECTED_CHOICE]
    keys += [(runs["second"], "pt", "task-b", s) for s in (13, 42, 100)]
    return sorted(keys)


def test_summarize_and_split_rows(export_runs):
    summaries = [summarize(run) for run in list_runs(export_runs)]
    by_name = {s["name"]: s for s in summaries}
    assert by_name["first"]["state"] == "finished" and by_name["third"]["state"] == "queued"
    assert by_name["first"]["model"] == "tiny-model" and by_name["first"]["setting"] == "cls"
    assert by_name["third"]["splits"] == [] and by_name["third"]["tasks"] == {}
    rows = split_rows(summaries)
    assert len(rows) == len(EXPECTED_CHOICE) + 3
    assert sorted((r["run_id"], r["method"], r["task"], r["seed"]) for r in rows) == _expected_split_keys(export_runs)
    for r in rows:
        assert set(r) == set(SPLIT_COLUMNS)
        assert (r["name"], r["model"], r["setting"], r["optimizer"]) in {
            ("first", "tiny-model", "cls", "adafactor"), ("second", "tiny-model", "cls", "adafactor")}
        assert (r["prompt_length"], r["steps"], r["batch_size"], r["best_step"]) == (16, 30, 8, 10)
        if r["name"] == "first":
            assert (r["learning_rate"], r["test"]) == EXPECTED_CHOICE[(r["method"], r["task"], r["seed"])]


def test_table_rows_with_mean(export_runs):
    summaries = RunIndex(export_runs).all()
    rows = table_rows(summaries)
    first = [r for r in rows if r["name"] == "first"]
    assert [(r["method"], r["task"]) for r in first] == [  # PT first, as in every rendering of the report
        ("pt", "task-a"), ("pt", "task-b"), ("pt", "task-c"), ("pt", "MEAN"),
        ("mpt", "task-a"), ("mpt", "MEAN")]
    pt_mean = next(r for r in first if (r["method"], r["task"]) == ("pt", "MEAN"))
    assert pt_mean["mean"] == pytest.approx(0.5) and pt_mean["n"] == 3 and pt_mean["gain_over_pt"] == 0.0
    mpt_mean = next(r for r in first if (r["method"], r["task"]) == ("mpt", "MEAN"))
    assert mpt_mean["gain_over_pt"] == pytest.approx((mpt_mean["mean"] - 0.5) / 0.5)
    second = [r for r in rows if r["name"] == "second"]
    assert [(r["task"], round(r["mean"], 6)) for r in second] == [("task-b", 0.4), ("MEAN", 0.4)]
    assert not [r for r in rows if r["name"] == "third"]


SPLIT_HEADER = ["run_id", "name", "state", "model", "setting", "prompt_length", "optimizer", "steps", "batch_size",
                "method", "task", "metric", "seed", "learning_rate", "best_step", "dev", "test"]
TABLE_HEADER = ["run_id", "name", "model", "setting", "method", "task", "metric", "mean", "std", "n", "gain_over_pt"]


def _parse_csv(text: str) -> tuple[list[str], list[dict]]:
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


def test_to_csv_one_row_per_split(export_runs):
    text = to_csv(split_rows(RunIndex(export_runs).all()), SPLIT_COLUMNS)
    header, rows = _parse_csv(text)
    assert header == SPLIT_HEADER
    assert len(rows) == len(EXPECTED_CHOICE) + 3
    assert sorted((r["run_id"], r["method"], r["task"], int(r["seed"])) for r in rows) == \
        _expected_split_keys(export_runs)
    nan_row = next(r for r in rows if r["task"] == "task-c")
    assert float(nan_row["dev"]) == pytest.approx(0.2) and float(nan_row["learning_rate"]) == 0.1


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MPT_TUI_RUNS_DIR", None)
    return subprocess.run([sys.executable, "-m", "mpt_tui.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_export_splits_csv(export_runs, tmp_path):
    out = tmp_path / "splits.csv"
    result = _cli("export", "--format", "csv", "--out", str(out), "--runs-dir", str(export_runs), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    summaries = [summarize(run) for run in list_runs(export_runs)]
    assert text == to_csv(split_rows(summaries), SPLIT_COLUMNS)
    header, rows = _parse_csv(text)
    assert header == SPLIT_HEADER and len(rows) == len(EXPECTED_CHOICE) + 3
    assert f"wrote {len(rows)} rows" in result.stderr
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_export_tasks_table(export_runs, tmp_path):
    out = tmp_path / "tasks.csv"
    result = _cli("export", "--format", "csv", "--table", "tasks", "--out", str(out),
                  "--runs-dir", str(export_runs), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, rows = _parse_csv(out.read_text(encoding="utf-8"))
    assert header == TABLE_HEADER
    assert len(rows) == 6 + 2
    means = [r for r in rows if r["task"] == "MEAN"]
    assert {(r["name"], r["method"]): float(r["mean"]) for r in means} == {
        ("first", "mpt"): pytest.approx(0.2), ("first", "pt"): pytest.approx(0.5),
        ("second", "pt"): pytest.approx(0.4)}
    task_a = next(r for r in rows if (r["name"], r["method"], r["task"]) == ("first", "pt", "task-a"))
    assert float(task_a["mean"]) == pytest.approx(0.8)
    assert float(task_a["std"]) == pytest.approx(statistics.pstdev([0.8, 0.7, 0.9]))
    assert int(task_a["n"]) == 3 and task_a["metric"] == "accuracy"


def test_cli_export_to_stdout_and_run_filter(export_runs, tmp_path):
    first = next(p.name for p in export_runs.iterdir() if p.is_dir() and Run(p).config()["preset"]["name"] == "first")
    result = _cli("export", "--run", first, "--runs-dir", str(export_runs), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, rows = _parse_csv(result.stdout)
    assert header == SPLIT_HEADER and len(rows) == len(EXPECTED_CHOICE)
    assert {r["run_id"] for r in rows} == {first}
    bad = _cli("export", "--run", "no-such-run", "--runs-dir", str(export_runs), cwd=tmp_path)
    assert bad.returncode == 2 and "no-such-run" in bad.stderr


def test_cli_export_missing_runs_dir(tmp_path):
    result = _cli("export", "--runs-dir", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == 2
    assert str(tmp_path / "nope") in result.stderr
