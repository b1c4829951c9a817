"""The dry run (engine.runner.estimate): what a preset will train, counted as the real run counts it, and its time
from stored timings of earlier runs or a short probe; nothing is written."""

from __future__ import annotations

import json

import pytest
from filelock import FileLock

from engine.runner.estimate import dry_run, render
from engine.runner.prepare import check_preset, prepare_run
from engine.store.run_dir import read_json
from engine.runner.lifecycle import execute

from conftest import small_preset


@pytest.fixture
def preset_file(tmp_path, tiny_llama):
    return small_preset(tmp_path / "dry.toml", tiny_llama, name="dry",
                        downstream="learning_rates = [0.3, 0.1]\nsteps = 6\nmax_epochs = 1\neval_every = 2\n"
                                   "max_test_examples = 8\ngroup_size = 3",
                        upstream='methods = ["mtl"]\nsteps = 1000\nlog_every = 1\n[upstream.mtl]\nepochs = 1\n'
                                 'batch_size = 16')


def test_the_dry_run_counts_what_the_run_trains_and_writes_nothing(tmp_path, preset_file):
    root = tmp_path / "runs"
    prepared = check_preset(str(preset_file))
    planned = dry_run(prepared.preset, prepared.plan, root)
    assert not root.exists(), "a dry run writes nothing"
    assert planned.estimate_s is not None and planned.estimate_s > 0 and "probe" in planned.estimate_from
    text = render(planned)
    assert "grid cells" in text and "estimated time" in text and "nothing was written" in text

    run = prepare_run(root, prepared)
    execute(run)
    records = [read_json(p) for p in run.cells_dir.glob("*.json")]
    assert planned.cells == len(records) == 2 * 2 * 2 * 2  # PT, MTL x 2 targets x 2 splits x 2 lrs
    assert planned.cell_steps == sum(r["steps"] for r in records) == planned.cells * 4  # 16 examples / 4: 1 epoch
    logged = [e["step"] for e in run.events() if e.get("stage") == "upstream"]
    assert planned.upstream_steps == {"mtl": len(logged)} and len(logged) == 4  # 4 splits x 16 / 16, not 1000
    assert planned.groups == len(read_json(run.groups_path)) and planned.group_size == 3

    again = dry_run(prepared.preset, prepared.plan, root)  # now the runs root has matching timings
    assert again.estimate_from.startswith("stored timings of 1 earlier run")
    assert again.estimate_s > 0 and again.timings["update_s"]["mtl"] > 0


def test_a_busy_device_is_not_waited_for(tmp_path, preset_file):
    root = tmp_path / "runs"
    (root / ".devices").mkdir(parents=True)
    prepared = check_preset(str(preset_file))
    with FileLock(str(root / ".devices" / "cpu.lock")):  # another run holds the CPU
        planned = dry_run(prepared.preset, prepared.plan, root)
    assert planned.estimate_s is None and "busy" in planned.estimate_from
    assert planned.cells == 16  # the counts need no device
    off = dry_run(prepared.preset, prepared.plan, root, probe=False)
    assert off.estimate_s is None and "probe is off" in off.estimate_from


def test_the_dry_run_command_prints_the_plan_and_writes_nothing(tmp_path, preset_file):
    import subprocess
    import sys

    from conftest import REPO

    root = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "mpt_tui.cli", "--preset", str(preset_file), "--dry-run",
                             "--json", "--runs-dir", str(root)], capture_output=True, text=True, cwd=REPO,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["cells"] == 16 and plan["upstream_steps"] == {"mtl": 4} and plan["estimate_s"] > 0
    assert not root.exists()


def test_a_probe_whose_difference_vanishes_in_noise_falls_back_to_the_mean():
    """Per-step time is the difference between a longer and a one-step run (set-up cancels); when a loaded
    machine makes the longer run no slower, the estimate is the longer run's mean, never zero."""
    from engine.runner.estimate import _per_step

    assert _per_step(10.0, 9.0, 2) == 0.5
    assert _per_step(9.0, 10.0, 2) == 3.0


def test_the_dry_run_counts_the_analysis_stage_as_the_run_runs_it(tmp_path, tiny_llama):
    """`[analysis]`: an embedding job per task and split in groups of the grid's size, a text embedding per
    split; its time comes after the grid's in the estimate."""
    import dataclasses

    from engine.execution.analysis import work_dir
    from engine.experiment.config import override

    preset_file = small_preset(tmp_path / "an.toml", tiny_llama, name="an",
                               downstream="steps = 2\neval_every = 2\ngroup_size = 3\nmax_test_examples = 4")
    analysis = [override("analysis.similarity", ["prompt", "text"]), override("analysis.embedding_steps", 3)]
    prepared = check_preset(str(preset_file), analysis)
    root = tmp_path / "runs"
    run = prepare_run(root, prepared)
    execute(run)
    assert run.status()["state"] == "finished"
    planned = dry_run(prepared.preset, prepared.plan, root)  # stored timings: the finished run's
    a, settings = planned.analysis, prepared.preset.analysis
    embedded = list((work_dir(run, settings) / "embeddings").glob("*.json"))
    tasks = prepared.plan.sources + prepared.plan.targets
    assert a["embedding_jobs"] == len(embedded) == len(tasks) * len(prepared.plan.seeds)
    assert a["embedding_groups"] == len(read_json(work_dir(run, settings) / "groups.json"))
    assert a["embedding_passes"] == a["embedding_groups"] * 3 and a["text_splits"] == len(embedded)
    without = dataclasses.replace(prepared.preset, analysis=dataclasses.replace(settings, similarity=[]))
    grid_only = dry_run(without, prepared.plan, root)
    assert grid_only.analysis == {} and "analysis" not in render(grid_only)
    pass_s = planned.timings["pass_s"]
    assert a["seconds"] == pytest.approx((a["embedding_passes"] + a["text_splits"]) * pass_s)  # one worker
    assert planned.estimate_s == pytest.approx(grid_only.estimate_s + a["seconds"])
    assert f"{len(embedded)} prompt-embedding jobs in {a['embedding_groups']} groups" in render(planned)
