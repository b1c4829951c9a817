"""Run directories (engine.store.run_dir): race-free ids, derived states, metrics events and their readers."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.store.run_dir import Run, cell_curves, create_run, finished_cells, last_cell, list_runs, pid_alive, upstream_curves
from engine.store.index import RunIndex, summarize

from conftest import FORK, join_all

FIXED_STAMP = "20240101-000000"


def _create_runs_worker(root: str, barrier, worker: int, count: int, queue) -> None:
    time.strftime = lambda fmt, *args: FIXED_STAMP  # every process in the same second (this process only)
    barrier.wait()
    ids = []
    for i in range(count):
        run = create_run(Path(root), {"worker": worker, "i": i}, "same-name")
        ids.append(run.id)
    queue.put((worker, ids))


def test_create_run_concurrent_ids_are_unique(tmp_path):
    workers, per_worker = 8, 5
    barrier = FORK.Barrier(workers)
    queue = FORK.Queue()
    procs = [FORK.Process(target=_create_runs_worker, args=(str(tmp_path), barrier, w, per_worker, queue))
             for w in range(workers)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    join_all(procs)
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
    run.log_cell_loss("c", 1, 2.5)
    run.log_cell_loss("c", 2, float("nan"))
    with run.metrics_path.open("a", encoding="utf-8") as f:
        f.write('{"t": 1.0, "step": 3, "lo')  # killed mid-write
    events = run.events()
    assert [e["step"] for e in events] == [1, 2]
    assert events[0]["loss"] == 2.5 and math.isnan(events[1]["loss"])
    assert all("t" in e for e in events)


def test_event_writers_and_readers_agree_on_the_schema(tmp_path):
    run = create_run(tmp_path, {}, "events")
    run.log_upstream_loss("maml", 1, 3.0)
    run.log_upstream_loss("maml", 2, 2.0)
    run.log_upstream_loss("mtl", 1, 4.0)
    run.log_cell_loss("pt__a__s1__lr0.3", 1, 1.5)
    run.log_cell_dev("pt__a__s1__lr0.3", 1, 0.25)
    run.log_cell_loss("pt__a__s1__lr0.3", 2, 1.0)
    run.log_cell_loss("pt__a__s1__lr0.3", 1, 1.4)  # replayed after a resume from a checkpoint: the later wins
    run.log_cell_done("pt__a__s1__lr0.3", 0.25, 0.5)
    run.log_cell_loss("pt__b__s1__lr0.3", 1, 2.0)
    events = run.events()
    assert upstream_curves(events) == {"maml": ([1, 2], [3.0, 2.0]), "mtl": ([1], [4.0])}
    assert cell_curves(events, "pt__a__s1__lr0.3") == (([1, 2], [1.4, 1.0]), ([1], [0.25]))
    assert last_cell(events) == "pt__b__s1__lr0.3"
    assert finished_cells(events) == [{"cell": "pt__a__s1__lr0.3", "dev": 0.25, "test": 0.5}]


def test_run_owns_its_paths_and_cell_records(tmp_path):
    run = create_run(tmp_path, {}, "paths")
    assert run.cell_checkpoint("c") == run.checkpoints_dir / "c.pt"
    assert run.upstream_prompt("maml") == run.prompts_dir / "upstream-maml.safetensors"
    assert run.groups_path == run.path / "groups.json"
    run.save_cell_record("c", {"test": 0.5})
    run.cell_path("d").parent.mkdir(exist_ok=True)
    run.cell_path("d").write_text("{torn")  # killed mid-write: not done
    records = run.finished_cell_records(["c", "d", "e"])  # typed records (engine.experiment.records)
    assert {k: r.to_dict() for k, r in records.items()} == {"c": {"test": 0.5, "schema": 1}}
    assert run.is_active()  # a new run is queued
    run.update_status(state="finished")
    assert not run.is_active()


def test_a_dead_but_unreaped_worker_reads_as_dead(tmp_path):
    """A worker launched by this process (the app) that died is a zombie until reaped: not alive."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline and open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[-1].split()[0] != "Z":
        time.sleep(0.05)
    assert not pid_alive(proc.pid)
    proc.wait()
    assert pid_alive(os.getpid())


def test_a_run_no_worker_ever_started_reads_crashed_after_the_grace(tmp_path):
    """A worker killed before its first status write leaves 'queued' with no pid (found by bench/soak.py);
    after the stale-heartbeat grace it reads 'crashed', so it can be resumed instead of waiting forever."""
    import time

    from engine.store.run_dir import HEARTBEAT_STALE_S, create_run, write_json_atomic

    run = create_run(tmp_path / "runs", {"preset": {"name": "p"}, "plan": {}}, "p")
    assert run.status()["state"] == "queued"
    status = json.loads(run.status_path.read_text())
    status.pop("pid", None)
    status["updated"] = status["created"] = time.time() - HEARTBEAT_STALE_S - 1
    write_json_atomic(run.status_path, status)
    assert run.status()["state"] == "crashed"


def test_the_metrics_reader_tails_from_a_byte_offset(tmp_path):
    """One metrics.jsonl reader (engine.store.metrics_log) for the store's readers and the app's index:
    read from an offset, a torn line kept until its end, a shrunk file read again from the start."""
    from engine.store.metrics_log import EventIndex, MetricsTail

    run = create_run(tmp_path, {"x": 1}, "tail")
    run.log_upstream_loss("mtl", 1, 2.0)
    tail = MetricsTail(run.metrics_path)
    assert [e["loss"] for e in tail.read()[0]] == [2.0]
    offset = tail.offset
    run.log_cell_loss("pt__a__s1__lr0.3", 1, 1.5)
    with run.metrics_path.open("ab") as f:
        f.write(b'{"stage": "downstream", "cell": "pt__a__s1__lr0.3", "step": 1, "de')
    events, restarted = MetricsTail(run.metrics_path, offset).read()
    assert [e.get("loss") for e in events] == [1.5] and not restarted
    with run.metrics_path.open("ab") as f:
        f.write(b'v": 0.5}\n')
    index = EventIndex.of(run.events())
    assert index.cell_curves("pt__a__s1__lr0.3") == cell_curves(run.events(), "pt__a__s1__lr0.3") == (([1], [1.5]), ([1], [0.5]))
    run.metrics_path.write_text("")
    assert tail.read() == ([], True)


def test_config_and_records_carry_a_schema_and_a_newer_one_is_refused_naming_the_file(tmp_path):
    from engine.experiment.records import SCHEMA, CellRecord
    from engine.store.run_dir import RunsDirError

    run = create_run(tmp_path, {"x": 1}, "schema")
    assert json.loads(run.config_path.read_text())["schema"] == SCHEMA == run.schema()
    assert run.config() == {"x": 1}
    run.save_cell_record("c", CellRecord("pt", "t", 1, 0.3, "accuracy", 0.5, 0.25, extra={"new_key": 7}))
    stored = json.loads(run.cell_path("c").read_text())
    assert stored["schema"] == SCHEMA and stored["new_key"] == 7 and stored["dev"] == 0.5
    assert run.finished_cell_records(["c"])["c"] == CellRecord("pt", "t", 1, 0.3, "accuracy", 0.5, 0.25)
    old = {"method": "pt", "task": "t", "seed": 1, "lr": 0.3, "dev": 0.5, "test": 0.25}  # schema 0, fewer keys
    run.cell_path("old").write_text(json.dumps(old))
    record = run.finished_cell_records(["old"])["old"]
    assert record.best_step is None and record.to_dict() == {**old, "schema": SCHEMA}
    run.cell_path("new").write_text(json.dumps({**old, "schema": SCHEMA + 1}))
    with pytest.raises(RunsDirError, match="new.json: schema 2 is newer"):
        run.finished_cell_records(["new"])
    run.config_path.write_text(json.dumps({"x": 1, "schema": SCHEMA + 1}))
    with pytest.raises(RunsDirError, match="config.json: schema 2 is newer"):
        run.config()
