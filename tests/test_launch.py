"""Runs in the background: detached workers, cancel with checkpoint, crash detection, resume, the queue."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from conftest import small_run
from engine.runner.launch import cancel, launch
from engine.store.run_dir import Run, read_json
from engine.runner.lifecycle import execute


def _make_run(root, tiny_llama, tmp_path) -> Run:
    return small_run(root, tiny_llama, name="bg", downstream="steps = 60\neval_every = 20",
                     upstream='methods = ["fomaml"]\nsteps = 40\ncheckpoint_every = 10\nlog_every = 1')


def _wait(predicate, timeout=240.0, what=""):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _scores(run: Run) -> list[tuple]:
    results = read_json(run.results_path)
    return sorted((c["method"], c["task"], c["seed"], c["dev"], c["test"], c["best_step"])
                  for c in results["splits"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama):
    """The same run, uninterrupted, in this process."""
    tmp = tmp_path_factory.mktemp("reference")
    run = _make_run(tmp / "runs", tiny_llama, tmp)
    execute(run)
    return _scores(run)


def _downstream_steps(run: Run) -> int:
    return sum(1 for e in run.events() if e.get("stage") == "downstream" and "loss" in e)


def test_cancel_checkpoints_and_resume_finishes_with_the_same_scores(tmp_path, tiny_llama, reference):
    run = _make_run(tmp_path / "runs", tiny_llama, tmp_path)
    launch(run)
    _wait(lambda: _downstream_steps(run) >= 30, what="downstream progress")
    assert cancel(run)
    _wait(lambda: run.status()["state"] == "cancelled", what="cancelled state")
    assert list((run.path / "checkpoints").glob("*.pt"))  # the work in progress was saved
    assert not run.results_path.exists()
    launch(run)  # resume
    _wait(lambda: run.status()["state"] == "finished", what="finished after resume")
    assert _scores(run) == reference
    log = run.log_path.read_text()
    assert "resuming after step" in log


def test_killed_run_shows_crashed_and_resumes_to_the_same_scores(tmp_path, tiny_llama, reference):
    run = _make_run(tmp_path / "runs", tiny_llama, tmp_path)
    pid = launch(run)
    _wait(lambda: any(e.get("stage") == "upstream" and e["step"] >= 15 for e in run.events()),
          what="upstream progress")
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: run.status()["state"] == "crashed", what="crashed state")
    launch(run)
    _wait(lambda: run.status()["state"] == "finished", what="finished after crash")
    assert _scores(run) == reference


def test_the_queue_runs_one_run_per_device_at_a_time(tmp_path, tiny_llama):
    root = tmp_path / "runs"
    first = _make_run(root, tiny_llama, tmp_path)
    second = _make_run(root, tiny_llama, tmp_path)
    launch(first)
    _wait(lambda: first.status()["state"] == "running", what="first running")
    launch(second)
    _wait(lambda: second.status().get("stage") == "waiting for a device", what="second queued")
    assert second.status()["state"] == "queued"
    _wait(lambda: second.status()["state"] == "finished", timeout=400, what="both finished")
    a, b = read_json(first.status_path), read_json(second.status_path)
    assert a["state"] == "finished"
    assert b["started"] >= a["finished"] - 1.0  # the second started only when the first let go of the CPU
    assert json.loads(second.config_path.read_text())["preset"]["model"]["device"] == "cpu"


def test_a_cancel_right_after_the_launch_is_a_clean_cancel(tmp_path, tiny_llama):
    """The worker holds SIGTERM until its handler is installed, so cancelling a run that has only just been
    launched ends it as cancelled (resumable), not as a killed, crashed worker."""
    run = _make_run(tmp_path / "runs", tiny_llama, tmp_path)
    launch(run)
    assert cancel(run)  # at once: the worker is still starting its interpreter
    _wait(lambda: run.status()["state"] in ("cancelled", "crashed", "failed", "finished"), what="the worker's end")
    assert run.status()["state"] == "cancelled", run.log_path.read_text()
    assert not run.results_path.exists()
