"""Headless runs through the real CLI (`mpt-tui --preset`, mpt_tui/cli.py and headless.py): a PT grid on
real tasks of ../shared/data, and the full source-to-target comparison (upstream methods, then the grid)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from engine.experiment.data import PAPER_SEEDS
from engine.experiment.methods import METHODS as REGISTERED
from engine.compute.prompt import load_prompt, save_prompt
from engine.results.report import build_report, p_text
from engine.store.run_dir import list_runs, read_json
from engine.store.index import RunIndex

from conftest import DEMO_DATA, REPO, require_shared_data

TARGETS = ["superglue-cb", "tweet_eval-hate", "ethos-race"]
SEEDS = list(PAPER_SEEDS)
LRS = [0.3, 0.1]


def _cli(*args, env_extra=None, check_rc=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "mpt_tui.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


# The tests of the module's grid run go to one xdist worker, in turn: it is made once (the longest fixture
# of the suite), and the resume tests change it.
grid_group = pytest.mark.xdist_group("headless-grid")


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


@grid_group
def test_grid_runs_headless_and_prints_the_table(grid_run):
    out = grid_run["proc"].stdout
    for task in TARGETS:
        assert task in out
    assert "mean" in out
    assert grid_run["run"].status()["state"] == "finished"


@grid_group
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


@grid_group
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


@grid_group
def test_resume_recomputes_only_missing_cells_with_the_same_scores(grid_run):
    run = grid_run["run"]
    paths = sorted(run.cells_dir.glob("*.json"))
    removed = {p: read_json(p) for p in paths[:2]}
    kept = {p: p.stat().st_mtime_ns for p in paths[2:]}
    for p in removed:
        p.unlink()
    before = read_json(run.results_path)
    proc = subprocess.run([sys.executable, "-m", "engine.runner.lifecycle", str(run.path)], capture_output=True, text=True,
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


@grid_group
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
    proc = subprocess.run([sys.executable, "-m", "engine.runner.lifecycle", str(run.path)], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    (run.path / "groups.json").write_text(json.dumps(groups))
    assert proc.returncode == 0, proc.stderr
    assert [read_json(p)["group_size"] for p in lost] == [1, 1]


@grid_group
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


METHODS = list(REGISTERED)  # every upstream method


def _preset(tmp_path, model, maml_extra: str = "", methods=METHODS) -> str:
    path = tmp_path / "cmp.toml"
    path.write_text(f"""
name = "cmp"
[data]
dir = "{DEMO_DATA}"
sources = ["demo-movie_sentiment", "demo-spam", "demo-news_topic"]
targets = ["demo-emotion", "demo-formality"]
seeds = [1, 2]
[model]
name = "{model}"
max_input_length = 40
[prompt]
length = 4
[downstream]
learning_rates = [0.3]
steps = 3
batch_size = 4
eval_every = 3
max_test_examples = 20
[upstream]
methods = {json.dumps(methods)}
steps = 3
checkpoint_every = 1
[upstream.maml]
inner_lr = 0.5
{maml_extra}
[upstream.reptile]
inner_steps = 2
""")
    return str(path)


def _run(*args):
    return _cli(*args)


def test_comparison_table_has_every_method(tmp_path, tiny_llama):
    runs = tmp_path / "runs"
    proc = _run("--preset", _preset(tmp_path, tiny_llama), "--runs-dir", str(runs))
    assert proc.returncode == 0, proc.stderr
    for label in ("PT", "MTL", "MAML", "FoMAML", "Reptile", "gain over PT", "Δ vs PT", "[95% CI]", "p (pairs)"):
        assert label in proc.stdout
    (run,) = list_runs(runs)
    results = read_json(run.results_path)
    report = build_report([{"run_id": run.id, **results}])  # the paired comparison, from the chosen splits
    for column in report.compared():
        assert p_text(report.paired(column)) in proc.stdout
        assert report.paired(column).n == 2 * 2  # targets x seeds
    assert sorted(results["tasks"]) == sorted(["pt"] + METHODS)
    for method in METHODS:
        prompt, meta = load_prompt(run.prompts_dir / f"upstream-{method}.safetensors")
        assert meta["method"] == method and prompt.shape[0] == 4
        assert read_json(run.cells_dir / f"{method}__demo-emotion__s1__lr0.3.json")["method"] == method
    learned = [load_prompt(run.prompts_dir / f"upstream-{m}.safetensors")[0] for m in METHODS]
    assert all(not torch.equal(learned[0], other) for other in learned[1:])  # each method learned its own
    events = run.events()
    assert {e["method"] for e in events if e.get("stage") == "upstream"} == set(METHODS)


def test_downstream_reuses_a_given_upstream_prompt(tmp_path, tiny_llama):
    from engine.compute.backbone import Backbone

    hidden = Backbone.load(str(tiny_llama)).hidden_size
    given = torch.randn(4, hidden)
    save_prompt(tmp_path / "given.safetensors", given, model=str(tiny_llama))
    runs = tmp_path / "runs"
    preset = _preset(tmp_path, tiny_llama, maml_extra=f'prompt_file = "{tmp_path / "given.safetensors"}"',
                     methods=["maml"])
    # learning rate 1e-30 (0 is refused: rates must be above zero): each update is below float32 rounding,
    # so the tuned prompt stays exactly at its initialisation, which must be the given one
    proc = _run("--preset", preset, "--runs-dir", str(runs), "--set", "downstream.learning_rates=[1e-30]")
    assert proc.returncode == 0, proc.stderr
    (run,) = list_runs(runs)
    assert not (run.path / "checkpoints" / "upstream-maml.pt").exists()  # nothing was retrained
    assert not any(e.get("stage") == "upstream" for e in run.events())
    for seed in (1, 2):
        cell = read_json(run.cells_dir / f"maml__demo-emotion__s{seed}__lr1e-30.json")
        assert torch.equal(load_prompt(run.path / cell["prompt"])[0], given)
        pt_cell = read_json(run.cells_dir / f"pt__demo-emotion__s{seed}__lr1e-30.json")
        assert not torch.equal(load_prompt(run.path / pt_cell["prompt"])[0], given)


@pytest.mark.parametrize("assignment, key", [
    ('upstream.methods=["magic"]', "upstream.methods"),
    ("upstream.steps=many", "upstream.steps"),
    ("upstream.maml.inner_lr=fast", "upstream.maml.inner_lr"),
    ("upstream.reptile.inner_steps=0", "upstream.reptile.inner_steps"),
])
def test_bad_upstream_settings_are_refused_before_anything_runs(tmp_path, tiny_llama, assignment, key):
    runs = tmp_path / "runs"
    proc = _run("--preset", _preset(tmp_path, tiny_llama), "--runs-dir", str(runs), "--set", assignment)
    assert proc.returncode == 2
    assert key in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not list_runs(runs)


def test_empty_source_list_is_refused(tmp_path, tiny_llama):
    setting = tmp_path / "nosource.json"
    setting.write_text(json.dumps({"train": [], "test": ["demo-emotion"]}))
    preset = _preset(tmp_path, tiny_llama)
    preset_path = tmp_path / "p.toml"
    preset_path.write_text(open(preset).read().replace('sources = ["demo-movie_sentiment", "demo-spam", "demo-news_topic"]\n', "")
                           .replace('targets = ["demo-emotion", "demo-formality"]',
                                    f'setting = "{setting}"'))
    proc = _run("--preset", str(preset_path), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "data.sources" in proc.stderr and "empty" in proc.stderr


def test_overlapping_sources_and_targets_warn(tmp_path, tiny_llama):
    path = tmp_path / "cmp.toml"
    _preset(tmp_path, tiny_llama, methods=["mtl"])
    path.write_text(path.read_text().replace('sources = ["demo-movie_sentiment", "demo-spam", "demo-news_topic"]',
                                             'sources = ["demo-spam", "demo-emotion"]'))
    proc = _run("--preset", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    assert "warning: source and target tasks overlap: demo-emotion" in proc.stderr
