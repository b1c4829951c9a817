"""Shared by the fault-injection suite (tests/test_faults.py) and the soak script (bench/soak.py): a small
run, a worker started with a planned fault (engine.base.faults), and the checks every fault ends with."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from conftest import REPO, small_run
from engine.store.run_dir import Run, read_json
from engine.store.index import RunIndex

RECORD_KEYS = ("method", "task", "seed", "lr", "metric", "dev", "test", "best_step", "dev_history", "final_loss",
               "stopped")
# upstream MTL (6 meta-updates, checkpointed every 2), then 2 x 2 x 2 cells of 12 steps in groups of 4,
# checkpointed every 3 steps
DOWNSTREAM = "steps = 12\neval_every = 4\ncheckpoint_every = 3\ngroup_size = 4"
UPSTREAM = 'methods = ["mtl"]\nsteps = 6\ncheckpoint_every = 2\nlog_every = 1'


def fault_run(root: Path, model: Path, name: str = "faults") -> Run:
    return small_run(root, model, name=name, downstream=DOWNSTREAM, upstream=UPSTREAM)


def records(run: Run) -> dict:
    return {p.stem: {k: read_json(p)[k] for k in RECORD_KEYS} for p in sorted(run.cells_dir.glob("*.json"))}


def run_worker(run: Run, fault: str | None, timeout: float = 300) -> int:
    """The worker as the app starts it (a new session), with the fault planned; its exit code."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.pop("MPT_TUI_FAULTS", None)
    if fault:
        env["MPT_TUI_FAULTS"] = fault
    proc = subprocess.run([sys.executable, "-m", "engine.runner.lifecycle", str(run.path)], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout,
                          start_new_session=True)
    return proc.returncode


EXPECTED_STATE = {"kill": {"crashed"}, "term": {"cancelled"}, "enospc": {"failed"}, "eio": {"failed"}}


def random_faults(seed: int, n: int) -> list[str]:
    """`n` faults at random points and counts (seeded): kills and cancels at every named point, disk
    errors on a write."""
    rng = random.Random(seed)
    ranges = {"upstream.step": 5, "tuning.step": 30, "grid.record": 7, "checkpoint.write": 8, "write": 40}
    faults = []
    for _ in range(n):
        action = rng.choice(["kill", "kill", "term", "enospc", "eio"])
        point = rng.choice(list(ranges)) if action in ("kill", "term") else "write"
        faults.append(f"{action}@{point}:{rng.randint(1, ranges[point])}")
    return faults


def check_after_fault(run: Run, fault: str) -> str:
    """The run tells the truth about the fault, and nothing of it is half-written; returns its state."""
    state = run.status()["state"]
    action = fault.split("@")[0]
    if state != "finished":  # a fault planned past the run's last point never fires
        # a disk that stays full may refuse the status write that would say 'failed': then 'crashed'
        expected = EXPECTED_STATE[action] | ({"crashed"} if fault.endswith("+") else set())
        if action == "kill" and not run.status().get("pid"):  # killed before its first status write: the run
            expected = {"queued"}  # reads 'queued' until the stale grace passes, then 'crashed' (test_run_dir)
        assert state in expected, (fault, state, run.status())
    if action in ("enospc", "eio") and state == "failed":
        assert ("No space left" if action == "enospc" else "Input/output error") in run.status()["error"]
    for path in run.cells_dir.glob("*.json") if run.cells_dir.is_dir() else []:
        json.loads(path.read_text(encoding="utf-8"))  # a record is whole or absent, never half-written
    assert not list(run.path.rglob("*.tmp")) or state != "finished"
    return state


def check_index(root: Path, expected_ids: set[str]) -> None:
    entries = {e["run_id"]: e for e in RunIndex(root).all()}
    assert set(entries) == expected_ids, (set(entries), expected_ids)
