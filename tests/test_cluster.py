"""Runs on a real local Ray cluster (engine.execution.cluster): one head node started here with 2 CPUs, two workers,
the tiny Llama, the demo data. Skipped with `-m "not ray"`; CI runs them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultlib import records

from engine.execution.analysis import analyse_runs
from engine.compute.backbone import Backbone
from engine.experiment.config import override, preset_from_dict
from engine.compute.executor import Executor
from engine.runner.launch import cancel, launch
from engine.runner.prepare import check_preset, prepare_run
from engine.store.run_dir import Run, pid_alive, read_json
from engine.runner.lifecycle import execute

from conftest import REPO, small_preset, small_run

ray_test = pytest.mark.ray

# upstream MTL (6 meta-updates), then 2 methods x 2 targets x 2 splits = 8 cells in 4 groups of 2; a group's
# 40 steps checkpointed every 4 last long enough to be interrupted in the middle
DOWNSTREAM = "steps = 40\neval_every = 10\ncheckpoint_every = 4\ngroup_size = 2"
UPSTREAM = 'methods = ["mtl"]\nsteps = 6\ncheckpoint_every = 2\nlog_every = 1'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    """A Ray head node with 2 CPUs (this machine's cores), shared by the module's runs; stopped at the end."""
    pytest.importorskip("ray")
    from ray._private.services import get_node_ip_address

    port, ip = _free_port(), get_node_ip_address()
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled"}  # a throwaway local cluster: no token to hand around
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "wb")
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
                             f"--port={port}", "--disable-usage-stats"],
                            env=env, stdout=log, stderr=log, start_new_session=True)
    address = f"{ip}:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection((ip, port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    time.sleep(1)  # the raylet registers after the GCS answers
    yield address
    head.send_signal(signal.SIGTERM)  # --block: it stops the processes it started
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        head.kill()
    log.close()


def _run(root: Path, model: Path, name: str, *sets: str):
    preset = small_preset(root.parent / f"{name}.toml", model, name=name, downstream=DOWNSTREAM, upstream=UPSTREAM)
    return prepare_run(root, check_preset(str(preset), list(sets)))


def _ray(address: str) -> list[str]:
    return [override("cluster.backend", "ray"), override("cluster.address", address)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama):
    """The same run on the local backend (one torch thread, like each Ray worker)."""
    run = _run(tmp_path_factory.mktemp("local") / "runs", tiny_llama, "cluster")
    execute(run)
    return run


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _busy_group(run, min_step: int):
    """(worker, cell ids) of a worker in the middle of a group: its cells have trained past `min_step` (a
    checkpoint exists) and none is finished."""
    cluster = run.status().get("cluster") or {}
    groups = read_json(run.groups_path) or []
    steps: dict[str, int] = {}
    for event in run.events():
        if event.get("stage") == "downstream" and "step" in event and "loss" in event:
            steps[event["cell"]] = max(steps.get(event["cell"], 0), event["step"])
    for worker in cluster.get("workers", []):
        if worker["unit"].startswith("group "):
            cells = groups[int(worker["unit"].split()[1].split("/")[0]) - 1]
            if all(steps.get(c, 0) >= min_step and not run.cell_path(c).exists() for c in cells):
                return worker, cells
    return None


class _Quiet:
    """GridEvents that keep nothing and never stop."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def should_stop(self):
        return False


def _launch(run) -> None:
    env_before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        launch(run)
    finally:
        if env_before is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = env_before


@ray_test
def test_two_workers_give_the_records_of_the_local_backend(ray_address, reference, tmp_path, tiny_llama):
    root = tmp_path / "runs"
    analysis = [override("analysis.similarity", ["prompt", "text"]), override("analysis.embedding_steps", 4)]
    run = _run(root, tiny_llama, "cluster", *_ray(ray_address), *analysis)
    execute(run)
    status = run.status()
    assert status["state"] == "finished"
    assert records(run) == records(reference)
    assert read_json(run.results_path)["mean"] == read_json(reference.results_path)["mean"]
    cluster = status["cluster"]
    assert set(cluster) == {"backend", "address", "gpus_total", "gpus_in_use", "workers"}  # the contract's keys
    assert all(set(w) == {"id", "node", "device", "pid", "unit"} for w in cluster["workers"])
    assert cluster["backend"] == "ray" and cluster["address"] and cluster["gpus_total"] == 0.0
    assert [w["id"] for w in cluster["workers"]] == ["w0", "w1"]
    assert len({w["pid"] for w in cluster["workers"]}) == 2 and {w["device"] for w in cluster["workers"]} == {"cpu"}
    assert all(w["unit"] == "idle" for w in cluster["workers"])
    # the driver wrote every worker's streamed losses, like a local run's
    events = [e for e in run.events() if "loss" in e]
    assert len(events) == len([e for e in reference.events() if "loss" in e])
    assert not (root / ".devices").exists()  # Ray owns the devices: no local device lock
    assert not (run.path / ".cluster-check").exists()
    # the [analysis] stage ran on the workers too, and is the analysis this process computes of the same run
    log = run.log_path.read_text()
    assert "ray unit embedding group 1/" in log and "ray unit text embeddings of" in log
    shutil.copytree(run.path, tmp_path / "again" / run.id, ignore=shutil.ignore_patterns("analysis*"))
    again = Run(tmp_path / "again" / run.id)
    preset = preset_from_dict(again.config()["preset"])
    backbone = Backbone.from_preset(preset.model, "cpu")
    local = analyse_runs([again], preset.analysis, Executor(backbone), _Quiet())
    assert read_json(run.path / "analysis.json")["kinds"] == json.loads(json.dumps(local["kinds"]))


@ray_test
def test_a_worker_killed_mid_group_is_replaced_and_the_group_resumes(ray_address, reference, tmp_path, tiny_llama):
    run = _run(tmp_path / "runs", tiny_llama, "cluster", *_ray(ray_address))
    _launch(run)
    worker, cells = _wait(lambda: _busy_group(run, min_step=5), 120, "a worker in the middle of a group")
    os.kill(worker["pid"], signal.SIGKILL)
    _wait(lambda: run.status()["state"] not in ("queued", "running") or None, 150, "the run to end")
    log = run.log_path.read_text()
    assert run.status()["state"] == "finished", log[-2000:]
    assert f"worker {worker['id']} lost while running group" in log
    resumed = [line for line in log.splitlines() if "group of 2 cells:" in line and cells[0] in line]
    assert len(resumed) == 2 and "resuming after step" in resumed[1]  # again, from its checkpoints
    assert "w2" in [w["id"] for w in run.status()["cluster"]["workers"]]  # the replacement
    assert records(run) == records(reference)


@ray_test
def test_driver_death_crashes_the_run_and_cancel_checkpoints_then_resume_finishes(ray_address, reference, tmp_path,
                                                                                  tiny_llama):
    # one worker: three drivers start here, and each worker's start (torch, the model) is most of their time
    run = _run(tmp_path / "runs", tiny_llama, "cluster", *_ray(ray_address), override("cluster.max_workers", 1))
    _launch(run)
    _wait(lambda: _busy_group(run, min_step=5), 120, "a worker in the middle of a group")
    workers = run.status()["cluster"]["workers"]
    os.kill(run.status()["pid"], signal.SIGKILL)  # the driver dies: its actors go with it
    _wait(lambda: run.status()["state"] == "crashed", 30, "the run to read crashed")
    _wait(lambda: not any(pid_alive(w["pid"]) for w in workers), 30, "the workers to end with their driver")
    finished = {p.name: p.stat().st_mtime_ns for p in run.cells_dir.glob("*.json")}

    _launch(run)  # resume, then cancel it mid-group
    worker, cells = _wait(lambda: _busy_group(run, min_step=9), 120, "a resumed worker in the middle of a group")
    assert cancel(run)
    _wait(lambda: run.status()["state"] not in ("queued", "running") or None, 60, "the run to stop")
    assert run.status()["state"] == "cancelled", run.log_path.read_text()[-2000:]
    assert all(run.cell_checkpoint(c).exists() for c in cells)  # checkpointed before the workers stopped
    log_before = len(run.log_path.read_text().splitlines())
    unfinished = [g for g in read_json(run.groups_path) if not all(run.cell_path(c).exists() for c in g)]
    learned = run.upstream_prompt("mtl").is_file()

    execute(run)  # resume in this process, to the end
    assert run.status()["state"] == "finished"
    assert records(run) == records(reference)
    assert finished == {n: run.cells_dir.joinpath(n).stat().st_mtime_ns for n in finished}  # never redone
    resumed = run.log_path.read_text().splitlines()[log_before:]
    # only the unfinished units were submitted: their groups, and the upstream method if it was not learned yet
    assert len([line for line in resumed if "INFO group of" in line and "cells:" in line]) == len(unfinished)
    assert any("upstream mtl: 4 meta-tasks" in line for line in resumed) == (not learned)
    assert all(any(f"{c} (resuming after step" in line for line in resumed) for c in cells)


@ray_test
def test_an_unreachable_address_is_one_line_and_exit_2_without_a_run_directory(tmp_path, tiny_llama):
    preset = small_preset(tmp_path / "p.toml", tiny_llama, downstream=DOWNSTREAM, upstream=UPSTREAM)
    root = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "mpt_tui.cli", "--preset", str(preset), "--runs-dir", str(root),
                           "--set", "cluster.backend=ray", "--set", f"cluster.address=127.0.0.1:{_free_port()}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cluster.address" in lines[0] and "no Ray cluster reachable" in lines[0]
    assert not root.exists() or not any(root.iterdir())


@ray_test
def test_check_preset_names_the_ray_extra_and_the_address(tmp_path, tiny_llama):
    from engine.experiment.config import PresetError

    preset = small_preset(tmp_path / "p.toml", tiny_llama)
    with pytest.raises(PresetError, match="cluster.address: 'nowhere' is not"):
        check_preset(str(preset), [override("cluster.backend", "ray"), override("cluster.address", "nowhere")])
    assert check_preset(str(preset), [override("cluster.backend", "ray")]).preset.cluster.backend == "ray"


@ray_test
def test_the_ray_missing_error_names_the_extra(tmp_path, tiny_llama):
    """Without the Ray package (hidden from this one interpreter), a Ray preset is refused before anything."""
    preset = small_preset(tmp_path / "p.toml", tiny_llama)
    code = ("import importlib.abc, sys\n"
            "class Hide(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'ray' or name.startswith('ray.'): raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Hide())\n"
            "from mpt_tui.cli import main\n"
            f"sys.exit(main(['--preset', {str(preset)!r}, '--runs-dir', {str(tmp_path / 'runs')!r}, "
            "'--set', 'cluster.backend=\"ray\"']))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "mpt-tui: error: cluster.backend: 'ray' needs the Ray package: " \
                                  "pip install 'mpt-tui[ray]'", proc.stderr


# ---- the schedule and the estimate, without Ray ---------------------------------------------

def test_the_schedule_starts_a_unit_when_what_it_needs_has_finished_and_a_retry_goes_first():
    from engine.execution.schedule import Schedule, Scheduled

    schedule, started = Schedule(), []
    for name, needs in [("upstream:maml", ()), ("group 1/3", ("upstream:maml",)), ("group 2/3", ()),
                        ("group 3/3", ())]:
        schedule.submit(Scheduled(name, None, frozenset(needs), on_start=lambda n=name: started.append(n)))
    first, second = schedule.take(), schedule.take()
    assert (first.name, second.name) == ("upstream:maml", "group 2/3")  # the PT group does not wait
    schedule.retry(second)  # its worker was lost
    assert schedule.take().name == "group 2/3"
    assert schedule.take().name == "group 3/3"
    assert schedule.take() is None  # group 1 waits for maml
    schedule.done(first, None)
    assert schedule.take().name == "group 1/3"
    assert started == ["upstream:maml", "group 2/3", "group 2/3", "group 3/3", "group 1/3"]
    with pytest.raises(ValueError, match="never submitted"):
        schedule.submit(Scheduled("group x", None, frozenset({"upstream:fomaml"})))


def test_parallel_time_places_units_on_free_workers_in_schedule_order():
    from engine.runner.estimate import parallel_time

    units = [(10.0, frozenset(), "maml"), (3.0, frozenset({"maml"}), ""), (2.0, frozenset(), ""),
             (2.0, frozenset(), "")]
    assert parallel_time(units, 1) == 17.0  # one after another
    assert parallel_time(units, 2) == 13.0  # the PT groups beside maml, its group after it
    assert parallel_time([(1.0, frozenset(), "")] * 8, 4) == 2.0


def test_balanced_groups_fill_the_last_round_without_more_rounds():
    from engine.execution.cluster import balanced_group_size

    def rounds(cells: int, size: int, workers: int) -> int:
        return -(-(-(-cells // size)) // workers)

    for cells, largest, workers in [(1400, 42, 8), (8, 8, 2), (3, 8, 2), (100, 7, 3)]:
        size = balanced_group_size(cells, largest, workers)
        assert size <= largest and rounds(cells, size, workers) == rounds(cells, largest, workers)
        assert size == 1 or rounds(cells, size - 1, workers) > rounds(cells, size, workers)  # the smallest such
    assert -(-1400 // balanced_group_size(1400, 42, 8)) == 40  # not 34 groups of 42: 5 full rounds of 8


def test_dry_run_of_a_ray_preset_counts_its_workers_in_parallel(tmp_path, tiny_llama):
    from engine.runner.estimate import dry_run, render

    preset = small_preset(tmp_path / "p.toml", tiny_llama, downstream=DOWNSTREAM, upstream=UPSTREAM)
    local = check_preset(str(preset))
    ray = check_preset(str(preset), [override("cluster.backend", "ray"), override("cluster.max_workers", 2)])
    one = dry_run(local.preset, local.plan, tmp_path / "runs")
    two = dry_run(ray.preset, ray.plan, tmp_path / "runs")
    assert (one.workers, two.workers) == (1, 2)
    assert two.estimate_s < two.serial_s
    assert "ray: 2 workers at once" in render(two) and "ray:" not in render(one)
    assert not (tmp_path / "runs").exists()


def test_the_headless_output_shows_each_worker_and_the_gpus_in_use():
    import io

    from mpt_tui.headless import LineReporter

    out = io.StringIO()
    LineReporter(out).workers({"backend": "ray", "address": "10.0.0.1:6379", "gpus_total": 8.0, "gpus_in_use": 1.5,
                               "workers": [{"id": "w0", "node": "gpu-a", "device": "cuda:0", "pid": 11,
                                            "unit": "upstream:maml"},
                                           {"id": "w1", "node": "gpu-b", "device": "cuda:0", "pid": 12,
                                            "unit": "group 3/12 (8 cells)"}]})
    line = out.getvalue()
    assert line.count("\n") == 1
    assert "GPUs 1.5/8 in use" in line
    assert "w0 gpu-a cuda:0: upstream:maml" in line and "w1 gpu-b cuda:0: group 3/12 (8 cells)" in line


def test_a_local_run_with_an_analysis_section_ends_with_its_analysis(tmp_path, tiny_llama):
    """The worker runs engine.execution.analysis.run_stage after the grid: `[analysis] similarity` in the preset is
    enough for analysis.json (text embeddings: nothing trained)."""
    run = small_run(tmp_path / "runs", tiny_llama, name="analysed", downstream="steps = 2\neval_every = 2")
    config = run.config()
    config["preset"]["analysis"]["similarity"] = ["text"]
    run.config_path.write_text(json.dumps(config), encoding="utf-8")
    execute(run)
    assert run.status()["state"] == "finished"
    analysis = read_json(run.path / "analysis.json")
    assert set(analysis["kinds"]) == {"text"} and set(analysis["targets"]) == set(config["plan"]["targets"])
