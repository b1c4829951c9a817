"""The fault-injection suite: a worker killed, cancelled or failing its disk at named points of the code
(engine.base.faults, enabled by an environment variable only), damaged files, concurrent workers. Every fault
ends with the same check: the run says truthfully what happened, nothing is half-written, resuming it
finishes with records identical to an undisturbed run, and the index and the other runs are intact."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO, small_run
from engine.runner.launch import launch
from engine.store.run_dir import read_json
from engine.store.index import RunIndex
from engine.runner.lifecycle import execute
from faultlib import check_after_fault, check_index, fault_run, random_faults, records, run_worker

SEED = 20261127
FAULTS = ["kill@upstream.step:3", "term@upstream.step:2", "kill@tuning.step:7", "term@tuning.step:11",
          "kill@grid.record:3", "kill@checkpoint.write:4", "enospc@write:2", "enospc@write:25", "eio@write:12", "enospc@write:30+",
          *random_faults(SEED, 3)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama):
    """The undisturbed run every fault is compared with, and a finished bystander run directory."""
    root = tmp_path_factory.mktemp("reference")
    run = fault_run(root / "runs", tiny_llama)
    execute(run)
    return run


@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_leaves_a_truthful_run_that_resumes_to_identical_records(fault, reference, tmp_path, tiny_llama):
    root = tmp_path / "runs"
    bystander = root / reference.path.name
    shutil.copytree(reference.path, bystander)
    RunIndex(root).rebuild()
    before = {p: p.read_bytes() for p in bystander.rglob("*") if p.is_file()}
    run = fault_run(root, tiny_llama)

    run_worker(run, fault)
    state = check_after_fault(run, fault)
    if fault.endswith("+"):  # the disk stays full: the status may not have been written, the log says why
        assert "No space left on device" in run.log_path.read_text()
    if state != "finished":
        execute(run)  # resume, the disk repaired
    assert run.status()["state"] == "finished"
    assert records(run) == records(reference)
    results, expected = read_json(run.results_path), read_json(reference.results_path)
    assert (results["tasks"], results["mean"]) == (expected["tasks"], expected["mean"])
    assert {p: p.read_bytes() for p in bystander.rglob("*") if p.is_file()} == before
    check_index(root, {run.id, reference.path.name})


# ---------------------------------------------------------------- damaged files


def _damage(run, what: str) -> None:
    if what == "status":
        run.status_path.write_text("{not json")
    elif what == "metrics":
        text = run.metrics_path.read_text()
        run.metrics_path.write_text(text[: len(text) - 20])  # a torn last line
    elif what == "cell_record":
        next(iter(sorted(run.cells_dir.glob("*.json")))).write_text("")
    elif what == "groups":
        run.groups_path.write_text("[[")
    elif what == "index":
        (run.path.parent / "index.json").write_text("garbage{")


@pytest.mark.parametrize("what", ["status", "metrics", "cell_record", "groups", "index"])
def test_a_damaged_file_is_survived(what, reference, tmp_path, tiny_llama):
    """A run killed after part of its grid, one of its files damaged, then resumed: it finishes with the
    records of the undisturbed run."""
    root = tmp_path / "runs"
    run = fault_run(root, tiny_llama)
    run_worker(run, "kill@grid.record:5")  # four cells stored, then killed
    assert len(list(run.cells_dir.glob("*.json"))) == 4
    _damage(run, what)
    if what == "status":
        assert run.status()["state"] == "damaged"
    if what == "index":
        assert {e["run_id"] for e in RunIndex(root).all()} == {run.id}  # rebuilt from the run directories
    execute(run)
    assert run.status()["state"] == "finished"
    assert records(run) == records(reference)
    check_index(root, {run.id})


# ---------------------------------------------------------------- concurrency


def test_eight_runs_launched_at_once_queue_on_one_device_and_all_finish(tmp_path, tiny_llama):
    root = tmp_path / "runs"
    runs = [small_run(root, tiny_llama, name=f"q{i}", downstream="steps = 2\neval_every = 2\nmax_test_examples = 4")
            for i in range(8)]
    for run in runs:
        launch(run)
    deadline = time.time() + 240
    while time.time() < deadline and any(r.status()["state"] in ("queued", "running") for r in runs):
        time.sleep(0.2)
    assert [r.status()["state"] for r in runs] == ["finished"] * 8
    starts = sorted((r.status()["started"], r.status()["finished"]) for r in runs)
    assert all(a[1] <= b[0] + 0.5 for a, b in zip(starts, starts[1:])), "two runs held the CPU at once"
    check_index(root, {r.id for r in runs})


def test_the_fault_points_cost_nothing_when_off():
    """Without MPT_TUI_FAULTS no plan exists: a point is one attribute test."""
    out = subprocess.run([sys.executable, "-c", "import engine.base.faults as f; print(f._plan)"], cwd=REPO,
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "None"
