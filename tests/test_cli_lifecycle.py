"""A run's whole lifecycle from the shell (mpt_tui/cli.py, engine/results/overview.py, engine.store.run_dir.find_run), each
command through the real entry point: --preset --detach, show, resume, cancel, delete, logs, runs filters.

Two real runs on the tiny Llama share the assertions: A runs detached to the end (the reference); B is killed
with SIGKILL mid-grid, shown partly finished, resumed in the background, cancelled, and resumed in the
foreground to the same cell records as A. Bad input is tested on run directories written by hand.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import DEMO_DATA, SMALL_SEEDS, SMALL_TARGETS
from engine.store.run_dir import ACTIVE_STATES, Run, create_run, read_json, write_json_atomic
from engine.store.index import RunIndex

RECORD_KEYS = ("method", "task", "seed", "lr", "dev", "test", "best_step", "dev_history")
LEARNING_RATES = [0.3, 0.1]


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m mpt_tui.cli` with test_cli.run_cli's environment, one thread for the tiny model."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("MPT_TUI_DATA_DIR", None)
    env.pop("MPT_TUI_RUNS_DIR", None)
    env["MPT_TUI_CACHE"] = str(cwd / "cache")
    return subprocess.run([sys.executable, "-m", "mpt_tui.cli", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def refused(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def wait_for(predicate, timeout: float = 120.0, what: str = ""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def records(run: Run) -> dict[str, dict]:
    """The cell records' content that must not depend on interruptions (not the prompt file's path)."""
    cells = sorted(run.cells_dir.glob("*.json"))
    return {p.stem: {k: json.loads(p.read_text())[k] for k in RECORD_KEYS} for p in cells}


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


# ---- two real runs ----------------------------------------------------------------------

# In the serial group (`detach` must return within 5 s), which also keeps them on one worker, in turn: they
# share the module's two runs, and the last one deletes one.

@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_llama):
    tmp = tmp_path_factory.mktemp("lifecycle")
    preset = tmp / "lc.toml"
    # 8 cells (PT x 2 targets x 2 splits x 2 learning rates) in groups of 3: the first group ends mid-split
    preset.write_text(f"""
name = "lc"
[data]
dir = "{DEMO_DATA}"
targets = {json.dumps(SMALL_TARGETS)}
seeds = {SMALL_SEEDS}
[model]
name = "{tiny_llama}"
device = "cpu"
max_input_length = 40
[prompt]
length = 4
[downstream]
learning_rates = {LEARNING_RATES}
batch_size = 4
max_test_examples = 20
log_every = 1
steps = 60
eval_every = 10
group_size = 3
checkpoint_every = 5
""")
    return SimpleNamespace(tmp=tmp, preset=preset, root=tmp / "runs")


def detach(lab) -> tuple[Run, float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    result = cli("--preset", str(lab.preset), "--detach", "--runs-dir", str(lab.root), cwd=lab.tmp)
    took = time.monotonic() - t0
    assert result.returncode == 0, result.stderr
    run_id = re.search(r"^run (\S+) started in the background", result.stdout, re.M).group(1)
    run = Run(lab.root / run_id)
    assert f"log: {run.log_path}" in result.stdout
    return run, took, result


@pytest.fixture(scope="module")
def run_a(lab):
    """Detached to the end; while it runs, delete and resume are refused; `logs -f` follows it to its end."""
    run, took, _ = detach(lab)
    state_after_detach = run.status()["state"]
    delete = cli("delete", run.id, "--yes", "--runs-dir", str(lab.root), cwd=lab.tmp)
    resume = cli("--runs-dir", str(lab.root), "resume", run.id, cwd=lab.tmp)
    t0 = time.monotonic()
    logs = cli("logs", run.id, "-f", "--runs-dir", str(lab.root), cwd=lab.tmp, timeout=240)
    return SimpleNamespace(run=run, took=took, state_after_detach=state_after_detach, delete=delete, resume=resume,
                           logs=logs, followed_s=time.monotonic() - t0, state_after_logs=run.status()["state"])


@pytest.mark.serial
def test_detach_returns_at_once_and_logs_follow_ends_with_the_run(run_a):
    assert run_a.state_after_detach in ACTIVE_STATES  # it returned before the run even started training
    assert run_a.took < 5.0 and run_a.followed_s > 2 * run_a.took, (run_a.took, run_a.followed_s)
    assert run_a.logs.returncode == 0, run_a.logs.stderr
    assert run_a.state_after_logs == "finished"
    assert run_a.logs.stdout.rstrip().endswith("INFO finished")  # the whole log, to its last line
    assert "running on cpu" in run_a.logs.stdout
    assert len(records(run_a.run)) == 8


@pytest.mark.serial
def test_a_running_run_is_neither_deleted_nor_resumed(run_a):
    refused(run_a.delete, run_a.run.id, "cancel it first")
    refused(run_a.resume, run_a.run.id)
    assert run_a.run.path.is_dir() and read_json(run_a.run.results_path)  # it finished all the same


@pytest.fixture(scope="module")
def run_b(lab, run_a):
    """Killed with SIGKILL after its first group; shown; resumed detached; cancelled; resumed in the foreground."""
    run, _, _ = detach(lab)
    wait_for(lambda: len(list(run.cells_dir.glob("*.json"))) >= 3 if run.cells_dir.is_dir() else False,
             what="the first group of cells")
    os.kill(int(read_json(run.status_path)["pid"]), signal.SIGKILL)
    wait_for(lambda: run.status()["state"] == "crashed", what="crashed")
    done_at_kill = sorted(p.stem for p in run.cells_dir.glob("*.json"))
    show = cli("show", run.id[:-1], "--json", "--runs-dir", str(lab.root), cwd=lab.tmp)  # a unique prefix
    show_text = cli("show", run.id, "--runs-dir", str(lab.root), cwd=lab.tmp)
    resumed = cli("resume", run.id, "--detach", "--runs-dir", str(lab.root), cwd=lab.tmp)
    wait_for(lambda: run.status()["state"] == "running", what="running again")
    cancel = cli("cancel", run.id, "--wait", "--timeout", "120", "--runs-dir", str(lab.root), cwd=lab.tmp, timeout=180)
    state_after_cancel = run.status()["state"]
    cancel_again = cli("cancel", run.id, "--runs-dir", str(lab.root), cwd=lab.tmp)
    final = cli("resume", run.id, "--runs-dir", str(lab.root), cwd=lab.tmp, timeout=240)
    return SimpleNamespace(run=run, done_at_kill=done_at_kill, show=show, show_text=show_text, resumed=resumed,
                           cancel=cancel, state_after_cancel=state_after_cancel, cancel_again=cancel_again,
                           final=final)


@pytest.mark.serial
def test_show_json_of_a_partly_finished_run_counts_complete_splits_only(run_b):
    assert run_b.show.returncode == 0, run_b.show.stderr
    view = json.loads(run_b.show.stdout)
    assert view["run_id"] == run_b.run.id and view["state"] == "crashed" and view["device"] == "cpu"
    assert view["device_name"] == f"cpu ({os.cpu_count()} cores)" and view["precision"] == "fp32"
    assert view["preset"]["learning_rates"] == LEARNING_RATES and view["preset"]["steps"] == 60
    assert view["preset"]["methods"] == ["pt"] and view["preset"]["batch_size"] == 4
    res = view["results"]
    assert res["complete"] is False and res["cells"] == {"done": len(run_b.done_at_kill), "total": 8}
    # the rule, worked out here from the cell files: a split counts once both its learning rates are done
    lrs_done: dict[tuple, int] = {}
    for cell_id in run_b.done_at_kill:
        method, task, seed, _ = cell_id.split("__")
        lrs_done[(method, task, int(seed[1:]))] = lrs_done.get((method, task, int(seed[1:])), 0) + 1
    assert any(n < len(LEARNING_RATES) for n in lrs_done.values()), run_b.done_at_kill  # a half-done split
    complete = {key for key, n in lrs_done.items() if n == len(LEARNING_RATES)}
    assert {(s["method"], s["task"], s["seed"]) for s in res["splits"]} == complete
    for task in SMALL_TARGETS:
        n = sum(1 for (_, t, _) in complete if t == task)
        assert res["splits_done"]["pt"][task] == n and res["splits_total"] == 2
        assert res["tasks"].get("pt", {}).get(task, {}).get("n", 0) == n
    assert res["note"].startswith(f"{len(complete)} of 4 splits complete")
    assert len(view["log_tail"]) == 10
    text = run_b.show_text.stdout
    assert run_b.show_text.returncode == 0 and "complete splits only" in text and "crashed" in text
    assert f"device     cpu ({os.cpu_count()} cores), fp32 (pid " in text  # what it is, not just an index


@pytest.mark.serial
def test_killed_cancelled_and_resumed_run_ends_with_the_uninterrupted_records(run_a, run_b):
    assert run_b.resumed.returncode == 0 and "resumed in the background" in run_b.resumed.stdout
    assert run_b.cancel.returncode == 0, run_b.cancel.stderr
    assert run_b.state_after_cancel == "cancelled" and f"run {run_b.run.id} cancelled" in run_b.cancel.stdout
    refused(run_b.cancel_again, "cancelled", "nothing to cancel")
    assert run_b.final.returncode == 0, run_b.final.stderr
    assert "test scores x100" in run_b.final.stdout and "demo-emotion" in run_b.final.stdout
    assert run_b.run.status()["state"] == "finished"
    assert records(run_b.run) == records(run_a.run)


@pytest.mark.serial
def test_ambiguous_prefix_lists_the_matches_and_delete_removes_a_finished_run(lab, run_a, run_b):
    common = os.path.commonprefix([run_a.run.id, run_b.run.id])
    line = refused(cli("show", common, "--runs-dir", str(lab.root), cwd=lab.tmp), "matches 2 runs")
    assert run_a.run.id in line and run_b.run.id in line
    before = snapshot(lab.root)
    refused(cli("delete", run_a.run.id, "--runs-dir", str(lab.root), cwd=lab.tmp), "--yes")  # no terminal
    refused(cli("delete", common, "--yes", "--runs-dir", str(lab.root), cwd=lab.tmp), "matches 2 runs")
    assert snapshot(lab.root) == before
    deleted = cli("delete", run_a.run.id, "--yes", "--runs-dir", str(lab.root), cwd=lab.tmp)
    assert deleted.returncode == 0, deleted.stderr
    assert not run_a.run.path.exists()
    assert [s["run_id"] for s in RunIndex(lab.root).all()] == [run_b.run.id]
    listed = json.loads(cli("runs", "--json", "--runs-dir", str(lab.root), cwd=lab.tmp).stdout)
    assert [r["run_id"] for r in listed] == [run_b.run.id]


# ---- run directories written by hand: filters and bad input, nothing trains -------------------------

@pytest.fixture
def fake_runs(tmp_path):
    root = tmp_path / "runs"
    runs = {}
    for name, state in (("alpha", "finished"), ("alpha", "cancelled"), ("beta", "failed"), ("beta", "running")):
        plan = {"data_dir": str(DEMO_DATA), "config_dir": None, "setting": "", "sources": [], "targets": ["t"],
                "seeds": [1], "methods": ["pt"]}
        preset = {"name": name, "downstream": {"learning_rates": [0.1]}, "model": {"name": "m"}}
        run = create_run(root, {"preset": preset, "plan": plan, "preset_file": f"/somewhere/{name}.toml"}, name)
        fields = {"state": state}
        if state == "running":  # owned by a live process (this one), with a fresh heartbeat
            fields.update(pid=os.getpid(), host=socket.gethostname(), heartbeat=time.time())
        run.update_status(**fields)
        if state == "finished":
            cell = {"method": "pt", "task": "t", "seed": 1, "lr": 0.1, "dev": 0.5, "test": 0.25, "metric": "acc",
                    "best_step": 1}
            run.save_cell_record("pt__t__s1__lr0.1", cell)
            write_json_atomic(run.results_path, {"splits": [cell], "tasks": {"pt": {"t": {
                "mean": 0.25, "std": 0.0, "n": 1, "metric": "acc"}}}, "mean": {"pt": 0.25}})
        RunIndex(root).record(run)
        runs[state] = run
    return root, runs


def test_runs_filters_by_state_and_preset_and_prints_json(tmp_path, fake_runs):
    root, runs = fake_runs

    def listed(*args):
        result = cli("runs", *args, "--json", "--runs-dir", str(root), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return sorted(r["state"] for r in json.loads(result.stdout))

    assert listed() == sorted(runs)
    assert listed("--state", "cancelled") == ["cancelled"]
    assert listed("--state", "finished,failed") == ["failed", "finished"]
    assert listed("--state", "running", "--state", "failed") == ["failed", "running"]
    assert listed("--preset", "alpha") == ["cancelled", "finished"]
    assert listed("--preset", "beta", "--state", "running,cancelled") == ["running"]
    assert listed("--preset", "gamma") == []
    text = cli("--runs-dir", str(root), "runs", "--state", "finished", cwd=tmp_path)
    assert text.stdout.splitlines() == [line for line in text.stdout.splitlines() if "finished" in line]
    assert runs["finished"].id in text.stdout and "PT 25.0" in text.stdout
    refused(cli("runs", "--state", "bogus", "--runs-dir", str(root), cwd=tmp_path), "--state", "bogus")


def test_bad_input_is_one_line_exit_2_and_changes_nothing(tmp_path, fake_runs):
    root, runs = fake_runs
    before = snapshot(root)
    r = ["--runs-dir", str(root)]
    refused(cli("show", "no-such-run", *r, cwd=tmp_path), "no run 'no-such-run'")
    refused(cli("logs", "2", *r, cwd=tmp_path), "matches 4 runs")
    refused(cli("resume", runs["running"].id, *r, cwd=tmp_path), "running")
    refused(cli("delete", runs["running"].id, "--yes", *r, cwd=tmp_path), "running", "cancel it first")
    refused(cli("resume", runs["finished"].id, *r, cwd=tmp_path), "finished", "nothing to resume")
    refused(cli("cancel", runs["failed"].id, *r, cwd=tmp_path), "failed", "nothing to cancel")
    refused(cli("show", "../runs", *r, cwd=tmp_path), "not a run id")
    refused(cli("show", "x", "--runs-dir", str(tmp_path / "none"), cwd=tmp_path), "does not exist")
    refused(cli("--detach", "runs", *r, cwd=tmp_path), "--detach")
    assert snapshot(root) == before
    # a run that is not running: logs print the log and end at once, show reads it whole
    runs["failed"].log_path.write_text("one\ntwo\n")
    logs = cli("logs", runs["failed"].id, "-f", *r, cwd=tmp_path, timeout=30)
    assert logs.returncode == 0 and logs.stdout == "one\ntwo\n"
    view = json.loads(cli("show", runs["finished"].id, "--json", *r, cwd=tmp_path).stdout)
    assert view["results"]["complete"] is True and view["results"]["tasks"]["pt"]["t"]["mean"] == 0.25


def test_the_progress_module_is_torch_free():
    code = "import engine.results.overview, sys; print(any(m.split('.')[0] in ('torch', 'transformers') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
