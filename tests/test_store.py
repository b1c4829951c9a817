"""Tests for run directories (engine.runs), the run index (engine.store) and CSV export (engine.export).

Results are synthetic cell records run through the real selection/aggregation code; nothing trains.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.export import SPLIT_COLUMNS, split_rows, table_rows, to_csv
from engine.protocol import select_and_aggregate
from engine.runs import Run, create_run, list_runs, write_json_atomic
from engine.store import INDEX_FILE, RunIndex, summarize

FORK = multiprocessing.get_context("fork")
FIXED_STAMP = "20240101-000000"


# ---- concurrency helpers (module level so child processes can run them) -------------------------

def _create_runs_worker(root: str, barrier, worker: int, count: int, queue) -> None:
    time.strftime = lambda fmt, *args: FIXED_STAMP  # every process in the same second (this process only)
    barrier.wait()
    ids = []
    for i in range(count):
        run = create_run(Path(root), {"worker": worker, "i": i}, "same-name")
        ids.append(run.id)
    queue.put((worker, ids))


def _upsert_worker(root: str, barrier, worker: int, count: int) -> None:
    index = RunIndex(Path(root))
    barrier.wait()
    for i in range(count):
        index.upsert({"run_id": f"run-{worker}-{i}", "worker": worker, "i": i, "payload": "x" * 200})


def _join_all(procs, timeout=120) -> None:
    deadline = time.time() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.time()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


# ---- run directories -------------------------------------------------------------------------------

def test_create_run_concurrent_ids_are_unique(tmp_path):
    workers, per_worker = 8, 5
    barrier = FORK.Barrier(workers)
    queue = FORK.Queue()
    procs = [FORK.Process(target=_create_runs_worker, args=(str(tmp_path), barrier, w, per_worker, queue))
             for w in range(workers)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    _join_all(procs)
    ids = [run_id for w in sorted(results) for run_id in results[w]]
    assert len(ids) == workers * per_worker
    assert len(set(ids)) == len(ids), "two processes got the same run id"
    assert all(run_id.startswith(f"{FIXED_STAMP}-same-name") for run_id in ids)
    dirs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert dirs == sorted(ids)
    # each directory holds the config of the process that allocated it
    for w, run_ids in results.items():
        for i, run_id in enumerate(run_ids):
            run = Run(tmp_path / run_id)
            assert run.config() == {"worker": w, "i": i}
            assert run.status()["state"] == "queued"
            assert run.status()["name"] == "same-name"


def test_create_run_writes_config_and_queued_status(tmp_path):
    run = create_run(tmp_path / "runs", {"preset": {"name": "a b/c"}}, "a b/c")
    assert run.path.parent == tmp_path / "runs"
    assert "/" not in run.id and " " not in run.id
    assert run.config() == {"preset": {"name": "a b/c"}}
    status = run.status()
    assert status["state"] == "queued" and status["run_id"] == run.id
    assert [r.id for r in list_runs(tmp_path / "runs")] == [run.id]


def test_run_index_concurrent_upserts_lose_nothing(tmp_path):
    workers, per_worker = 6, 10
    barrier = FORK.Barrier(workers)
    procs = [FORK.Process(target=_upsert_worker, args=(str(tmp_path), barrier, w, per_worker))
             for w in range(workers)]
    for p in procs:
        p.start()
    _join_all(procs)
    raw = json.loads((tmp_path / INDEX_FILE).read_text(encoding="utf-8"))  # valid JSON
    assert len(raw["_default"]) == workers * per_worker
    docs = RunIndex(tmp_path).all()
    assert sorted(d["run_id"] for d in docs) == sorted(f"run-{w}-{i}" for w in range(workers)
                                                        for i in range(per_worker))
    assert not list(tmp_path.glob(f"{INDEX_FILE}.damaged-*")), "the index was found damaged while writing"


def test_run_index_upsert_replaces(tmp_path):
    index = RunIndex(tmp_path)
    index.upsert({"run_id": "r1", "state": "running"})
    index.upsert({"run_id": "r1", "state": "finished"})
    index.upsert({"run_id": "r0", "state": "queued"})
    assert index.all() == [{"run_id": "r0", "state": "queued"}, {"run_id": "r1", "state": "finished"}]
    index.remove("r1")
    assert [d["run_id"] for d in index.all()] == ["r0"]


def _finished_run(root: Path, name: str, results: dict | None) -> Run:
    run = create_run(root, {"preset": {"name": name, "model": {"name": "tiny"}},
                            "plan": {"setting": "s", "targets": ["task-a"], "seeds": [13], "methods": ["pt"]}}, name)
    run.update_status(state="finished", finished=time.time())
    if results is not None:
        write_json_atomic(run.results_path, results)
    return run


def test_damaged_index_is_moved_aside_and_rebuilt(tmp_path):
    results = select_and_aggregate(synthetic_cells())
    runs = [_finished_run(tmp_path, f"run{i}", results) for i in range(3)]
    index = RunIndex(tmp_path)
    for run in runs:
        index.record(run)
    text = (tmp_path / INDEX_FILE).read_text(encoding="utf-8")
    damaged_text = text[: len(text) // 2]  # a write cut short
    (tmp_path / INDEX_FILE).write_text(damaged_text, encoding="utf-8")

    docs = RunIndex(tmp_path).all()
    assert [d["run_id"] for d in docs] == sorted(r.id for r in runs)
    assert all(d["state"] == "finished" and d["mean"] == results["mean"] for d in docs)
    kept = list(tmp_path.glob(f"{INDEX_FILE}.damaged-*"))
    assert len(kept) == 1 and kept[0].read_text(encoding="utf-8") == damaged_text
    json.loads((tmp_path / INDEX_FILE).read_text(encoding="utf-8"))  # the rebuilt index is valid
    assert len(RunIndex(tmp_path).all()) == 3  # and stays so


@pytest.mark.parametrize("how", ["deleted", "zero-bytes"])
def test_lost_index_is_rebuilt_from_run_directories(tmp_path, how):
    """engine/store.py's docstring: 'a lost or damaged index is moved aside and rebuilt from [run dirs]'."""
    runs = [_finished_run(tmp_path, f"run{i}", select_and_aggregate(synthetic_cells())) for i in range(2)]
    index = RunIndex(tmp_path)
    for run in runs:
        index.record(run)
    if how == "deleted":
        (tmp_path / INDEX_FILE).unlink()
    else:  # touched by TinyDB but never written (RunIndex.all() itself leaves this after a deletion)
        (tmp_path / INDEX_FILE).write_text("")
    assert [d["run_id"] for d in RunIndex(tmp_path).all()] == sorted(r.id for r in runs)


def test_rebuild_counts_runs(tmp_path):
    runs = [_finished_run(tmp_path, f"r{i}", None) for i in range(2)]
    (tmp_path / "not-a-run").mkdir()
    assert RunIndex(tmp_path).rebuild() == 2
    assert [d["run_id"] for d in RunIndex(tmp_path).all()] == sorted(r.id for r in runs)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_running_status_with_dead_pid_reads_crashed(tmp_path):
    run = create_run(tmp_path, {}, "crash")
    run.update_status(state="running", pid=_dead_pid(), host=socket.gethostname(), heartbeat=time.time())
    assert run.status()["state"] == "crashed"
    # the stored file still says running: crashed is derived, never stored
    assert json.loads(run.status_path.read_text())["state"] == "running"
    alive = create_run(tmp_path, {}, "alive")
    alive.update_status(state="running", pid=os.getpid(), host=socket.gethostname(), heartbeat=time.time())
    assert alive.status()["state"] == "running"
    stale = create_run(tmp_path, {}, "stale")
    stale.update_status(state="running", pid=os.getpid(), host=socket.gethostname(), heartbeat=time.time() - 3600)
    assert stale.status()["state"] == "crashed"
    assert summarize(run)["state"] == "crashed"


@pytest.mark.parametrize("content", ['{"state": "runn', "", "[1, 2]", '{"state": "exploded"}'])
def test_damaged_status_reads_damaged_and_is_isolated(tmp_path, content):
    bad = create_run(tmp_path, {}, "bad")
    good = create_run(tmp_path, {}, "good")
    good.update_status(state="finished", finished=1.0)
    bad.status_path.write_text(content)
    assert bad.status() == {"state": "damaged", "run_id": bad.id}
    assert good.status()["state"] == "finished"
    assert summarize(bad)["state"] == "damaged"
    assert summarize(good)["state"] == "finished"
    index = RunIndex(tmp_path)
    assert index.rebuild() == 2
    assert {d["run_id"]: d["state"] for d in index.all()} == {bad.id: "damaged", good.id: "finished"}


def test_torn_last_metrics_line_is_skipped(tmp_path):
    run = create_run(tmp_path, {}, "metrics")
    assert run.events() == []
    run.append_event({"step": 1, "loss": 2.5})
    run.append_event({"step": 2, "loss": float("nan")})
    with run.metrics_path.open("a", encoding="utf-8") as f:
        f.write('{"t": 1.0, "step": 3, "lo')  # killed mid-write
    events = run.events()
    assert [e["step"] for e in events] == [1, 2]
    assert events[0]["loss"] == 2.5 and math.isnan(events[1]["loss"])
    assert all("t" in e for e in events)


# ---- selection, aggregation and export --------------------------------------------------------------

def cell(method, task, seed, lr, dev, test, metric="accuracy", best_step=10):
    return {"method": method, "task": task, "seed": seed, "lr": lr, "dev": dev, "test": test,
            "metric": metric, "best_step": best_step}


def synthetic_cells() -> list[dict]:
    """Grid order (method, task, seed, lr) with learning rates [0.3, 0.1]."""
    return [
        # task-a: seed 13 picks lr 0.1; seed 42 ties and keeps 0.3 (listed first); seed 100 picks 0.3
        cell("pt", "task-a", 13, 0.3, 0.5, 0.6), cell("pt", "task-a", 13, 0.1, 0.7, 0.8),
        cell("pt", "task-a", 42, 0.3, 0.6, 0.7), cell("pt", "task-a", 42, 0.1, 0.6, 0.1),
        cell("pt", "task-a", 100, 0.3, 0.9, 0.9), cell("pt", "task-a", 100, 0.1, 0.2, 0.3),
        # task-b (f1): tests chosen .2, .4, .6
        cell("pt", "task-b", 13, 0.3, 0.4, 0.5, "f1"), cell("pt", "task-b", 13, 0.1, 0.45, 0.2, "f1"),
        cell("pt", "task-b", 42, 0.3, 0.3, 0.4, "f1"), cell("pt", "task-b", 42, 0.1, 0.1, 0.9, "f1"),
        cell("pt", "task-b", 100, 0.3, 0.5, 0.6, "f1"), cell("pt", "task-b", 100, 0.1, 0.5, 0.0, "f1"),
        # task-c: one split; a NaN dev score never wins
        cell("pt", "task-c", 13, 0.3, float("nan"), 0.1), cell("pt", "task-c", 13, 0.1, 0.2, 0.3),
        # a second method, kept apart from the first
        cell("mpt", "task-a", 13, 0.3, 0.1, 0.2), cell("mpt", "task-a", 13, 0.1, 0.0, 0.9),
    ]


EXPECTED_CHOICE = {  # (method, task, seed) -> (lr, test)
    ("pt", "task-a", 13): (0.1, 0.8), ("pt", "task-a", 42): (0.3, 0.7), ("pt", "task-a", 100): (0.3, 0.9),
    ("pt", "task-b", 13): (0.1, 0.2), ("pt", "task-b", 42): (0.3, 0.4), ("pt", "task-b", 100): (0.3, 0.6),
    ("pt", "task-c", 13): (0.1, 0.3), ("mpt", "task-a", 13): (0.3, 0.2),
}


def test_select_and_aggregate_picks_best_dev_per_split():
    results = select_and_aggregate(synthetic_cells())
    chosen = {(s["method"], s["task"], s["seed"]): (s["lr"], s["test"]) for s in results["splits"]}
    assert chosen == EXPECTED_CHOICE


def test_select_ties_keep_first_listed():
    a = cell("pt", "t", 13, 0.3, 0.5, 0.1)
    b = cell("pt", "t", 13, 0.1, 0.5, 0.9)
    assert select_and_aggregate([a, b])["splits"][0]["lr"] == 0.3
    assert select_and_aggregate([b, a])["splits"][0]["lr"] == 0.1


def test_select_all_nan_dev_keeps_a_split():
    results = select_and_aggregate([cell("pt", "t", 13, 0.3, float("nan"), 0.4),
                                    cell("pt", "t", 13, 0.1, float("nan"), 0.6)])
    assert len(results["splits"]) == 1 and results["splits"][0]["lr"] == 0.3


def test_aggregate_mean_population_std_and_task_mean():
    results = select_and_aggregate(synthetic_cells())
    pt = results["tasks"]["pt"]
    assert sorted(pt) == ["task-a", "task-b", "task-c"]
    assert pt["task-a"]["mean"] == pytest.approx(0.8)
    assert pt["task-a"]["std"] == pytest.approx(math.sqrt(((0.0) ** 2 + 0.1 ** 2 + 0.1 ** 2) / 3))
    assert pt["task-a"]["std"] == pytest.approx(statistics.pstdev([0.8, 0.7, 0.9]))
    assert pt["task-a"]["std"] != pytest.approx(statistics.stdev([0.8, 0.7, 0.9]))  # population, not sample
    assert (pt["task-a"]["n"], pt["task-a"]["metric"]) == (3, "accuracy")
    assert pt["task-b"]["mean"] == pytest.approx(0.4)
    assert pt["task-b"]["std"] == pytest.approx(math.sqrt(0.08 / 3))
    assert pt["task-b"]["metric"] == "f1"
    assert pt["task-c"] == {"mean": pytest.approx(0.3), "std": 0.0, "n": 1, "metric": "accuracy"}
    assert results["mean"]["pt"] == pytest.approx((0.8 + 0.4 + 0.3) / 3)
    assert results["tasks"]["mpt"] == {"task-a": {"mean": pytest.approx(0.2), "std": 0.0, "n": 1,
                                                  "metric": "accuracy"}}
    assert results["mean"]["mpt"] == pytest.approx(0.2)
    # results.json round trip (NaN dev scores survive as JSON NaN)
    assert json.loads(json.dumps(results, allow_nan=True))["mean"]["pt"] == pytest.approx(0.5)


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
    assert [(r["method"], r["task"]) for r in first] == [
        ("mpt", "task-a"), ("mpt", "MEAN"),
        ("pt", "task-a"), ("pt", "task-b"), ("pt", "task-c"), ("pt", "MEAN")]
    pt_mean = next(r for r in first if (r["method"], r["task"]) == ("pt", "MEAN"))
    assert pt_mean["mean"] == pytest.approx(0.5) and pt_mean["n"] == 3
    second = [r for r in rows if r["name"] == "second"]
    assert [(r["task"], round(r["mean"], 6)) for r in second] == [("task-b", 0.4), ("MEAN", 0.4)]
    assert not [r for r in rows if r["name"] == "third"]


SPLIT_HEADER = ["run_id", "name", "state", "model", "setting", "prompt_length", "optimizer", "steps", "batch_size",
                "method", "task", "metric", "seed", "learning_rate", "best_step", "dev", "test"]
TABLE_HEADER = ["run_id", "name", "model", "setting", "method", "task", "metric", "mean", "std", "n"]


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
