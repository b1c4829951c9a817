"""The worker's own guarantees (engine.runner.lifecycle): one worker per run directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, small_run
from engine.store.run_dir import read_json
from engine.runner.lifecycle import RunLocked, execute, run_locked


def test_a_second_worker_on_a_running_run_exits_and_leaves_it_alone(tmp_path, tiny_llama):
    """Two resumes at once (the app's and a shell's) used to both write the run's cells and checkpoints."""
    run = small_run(tmp_path / "runs", tiny_llama, name="locked", downstream="steps = 150\neval_every = 50")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([sys.executable, "-m", "engine.runner.lifecycle", str(run.path)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and run.status().get("state") != "running":
            time.sleep(0.05)
        assert run.status()["state"] == "running" and run_locked(run)
        status_before = read_json(run.status_path)
        second = subprocess.run([sys.executable, "-m", "engine.runner.lifecycle", str(run.path)], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert f"run {run.id} is being run by another worker (pid {first.pid})" in run.log_path.read_text()
        with pytest.raises(RunLocked, match="another worker"):
            execute(run)
        assert read_json(run.status_path)["pid"] == status_before["pid"] == first.pid  # untouched
        assert run.status()["state"] == "running"
    finally:
        first.kill()  # SIGKILL: no chance to release anything itself
        first.wait()
    assert not run_locked(run), "the OS releases a dead worker's lock"
    assert run.status()["state"] == "crashed"  # and the run can be resumed
