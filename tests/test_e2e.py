"""End to end: a PT grid on real tasks of ../shared/data, headless, through the real CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, require_shared_data
from engine.runs import list_runs, read_json
from engine.store import RunIndex

TARGETS = ["superglue-cb", "tweet_eval-hate", "ethos-race"]
SEEDS = [100, 13, 21, 42, 87]
LRS = [0.3, 0.1]


def _cli(*args, env_extra=None, check_rc=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "mpt_tui.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, tiny_llama):
    data = require_shared_data()
    tmp = tmp_path_factory.mktemp("e2e")
    preset = tmp / "grid.toml"
    preset.write_text(f"""
name = "e2e-grid"
[data]
dir = "{data}"
targets = {json.dumps(TARGETS)}
seeds = {SEEDS}
[model]
name = "{tiny_llama}"
max_input_length = 48
[prompt]
length = 4
init = "task_name"
[downstream]
learning_rates = {LRS}
steps = 4
batch_size = 4
eval_every = 2
max_test_examples = 40
""")
    runs = tmp / "runs"
    proc = _cli("--preset", str(preset), "--runs-dir", str(runs), check_rc=0)
    (run,) = list_runs(runs)
    return {"proc": proc, "run": run, "runs": runs, "preset": preset}


def test_grid_runs_headless_and_prints_the_table(grid_run):
    out = grid_run["proc"].stdout
    for task in TARGETS:
        assert task in out
    assert "mean" in out
    assert grid_run["run"].status()["state"] == "finished"


def test_every_cell_is_stored_and_selection_uses_dev(grid_run):
    run = grid_run["run"]
    cells = [read_json(p) for p in sorted(run.cells_dir.glob("*.json"))]
    assert len(cells) == len(TARGETS) * len(SEEDS) * len(LRS)
    results = read_json(run.results_path)
    assert len(results["splits"]) == len(TARGETS) * len(SEEDS)
    for chosen in results["splits"]:
        rivals = [c for c in cells if (c["task"], c["seed"]) == (chosen["task"], chosen["seed"])]
        assert chosen["dev"] == max(c["dev"] for c in rivals)
        assert 0.0 <= chosen["test"] <= 1.0
        assert (run.path / chosen["prompt"]).is_file()
    for task in TARGETS:
        scores = [c["test"] for c in results["splits"] if c["task"] == task]
        assert results["tasks"]["pt"][task]["mean"] == pytest.approx(sum(scores) / len(scores))
    assert results["mean"]["pt"] == pytest.approx(sum(results["tasks"]["pt"][t]["mean"] for t in TARGETS) / 3)
    events = run.events()
    assert any("loss" in e for e in events) and any(e.get("event") == "cell_done" for e in events)


def test_index_and_csv_export_match_the_run(grid_run, tmp_path):
    run, runs = grid_run["run"], grid_run["runs"]
    (summary,) = RunIndex(runs).all()
    assert summary["run_id"] == run.id and summary["state"] == "finished"
    assert summary["targets"] == TARGETS
    out = tmp_path / "rows.csv"
    _cli("export", "--format", "csv", "--out", str(out), "--runs-dir", str(runs), check_rc=0)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(TARGETS) * len(SEEDS)
    assert {(r["task"], int(r["seed"])) for r in rows} == {(t, s) for t in TARGETS for s in SEEDS}
    by_key = {(c["task"], c["seed"]): c for c in read_json(run.results_path)["splits"]}
    for r in rows:
        chosen = by_key[(r["task"], int(r["seed"]))]
        assert float(r["test"]) == pytest.approx(chosen["test"])
        assert float(r["learning_rate"]) == chosen["lr"]
        assert r["model"] and r["method"] == "pt"


def test_resume_recomputes_only_missing_cells_with_the_same_scores(grid_run):
    run = grid_run["run"]
    paths = sorted(run.cells_dir.glob("*.json"))
    removed = {p: read_json(p) for p in paths[:2]}
    kept = {p: p.stat().st_mtime_ns for p in paths[2:]}
    for p in removed:
        p.unlink()
    before = read_json(run.results_path)
    proc = subprocess.run([sys.executable, "-m", "engine.worker", str(run.path)], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""  # the worker writes only to its run directory
    for p, mtime in kept.items():
        assert p.stat().st_mtime_ns == mtime, f"{p.name} was recomputed"
    for p, old in removed.items():
        new = read_json(p)
        for key in ("dev", "test", "best_step", "dev_history"):
            assert new[key] == old[key], key  # same seed on CPU: the same result
    after = read_json(run.results_path)
    assert after["tasks"] == before["tasks"] and after["mean"] == before["mean"]
    # how long a cell took and how many cells trained beside it describe the execution, not the result
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "group_size")} for r in rows]  # noqa: E731
    assert strip(after["splits"]) == strip(before["splits"])


def test_a_resumed_run_keeps_the_grouping_it_started_with(grid_run):
    """groups.json fixes which cells train together, so a resume cannot regroup (and re-round) them."""
    run = grid_run["run"]
    groups = read_json(run.path / "groups.json")
    cell_ids = sorted(p.stem for p in run.cells_dir.glob("*.json"))
    assert sorted(i for g in groups for i in g) == cell_ids and max(len(g) for g in groups) > 1
    # pretend the run started with singleton groups, then lose two cells: they must rerun alone
    (run.path / "groups.json").write_text(json.dumps([[i] for i in cell_ids]))
    lost = [run.cells_dir / f"{i}.json" for i in cell_ids[:2]]
    for p in lost:
        p.unlink()
    proc = subprocess.run([sys.executable, "-m", "engine.worker", str(run.path)], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    (run.path / "groups.json").write_text(json.dumps(groups))
    assert proc.returncode == 0, proc.stderr
    assert [read_json(p)["group_size"] for p in lost] == [1, 1]


def test_cells_trained_in_groups_score_as_cells_trained_one_by_one(grid_run, tmp_path):
    """The grid runner packs cells into multi-prompt groups; one cell per group gives the same records."""
    runs = tmp_path / "runs"
    _cli("--preset", str(grid_run["preset"]), "--runs-dir", str(runs), "--set", "downstream.group_size=1",
         check_rc=0)
    (single,) = list_runs(runs)
    grouped = {p.name: read_json(p) for p in grid_run["run"].cells_dir.glob("*.json")}
    alone = {p.name: read_json(p) for p in single.cells_dir.glob("*.json")}
    assert alone.keys() == grouped.keys()
    assert {r["group_size"] for r in alone.values()} == {1}
    assert max(r["group_size"] for r in grouped.values()) > 1
    for name, record in grouped.items():
        assert alone[name]["best_step"] == record["best_step"], name
        assert [s for s, _ in alone[name]["dev_history"]] == [s for s, _ in record["dev_history"]], name
        assert [v for _, v in alone[name]["dev_history"]] == pytest.approx([v for _, v in record["dev_history"]])
        assert alone[name]["test"] == pytest.approx(record["test"]), name
        assert alone[name]["final_loss"] == pytest.approx(record["final_loss"], rel=1e-4), name


def test_pip_install_ships_the_presets(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("mpt_tui-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "engine/presets/demo.toml" in names
    assert "engine/presets/class_to_class.toml" in names
    assert "engine/presets/demo-data/config/demo.json" in names
    assert any(n.startswith("engine/presets/demo-data/tasks/demo-emotion/") for n in names)
    assert "engine/worker.py" in names and "mpt_tui/cli.py" in names
    assert "mpt_tui/app.tcss" in names and "mpt_tui/screens/runs.py" in names
