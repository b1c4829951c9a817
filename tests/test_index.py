"""The run index (engine.store.index): concurrent writers, damage and loss rebuilt from run directories."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from engine.experiment.plan import select_and_aggregate
from engine.store.run_dir import Run, create_run, write_json_atomic
from engine.store.index import INDEX_FILE, RunIndex

from conftest import FORK, join_all, synthetic_cells


def _upsert_worker(root: str, barrier, worker: int, count: int) -> None:
    index = RunIndex(Path(root))
    barrier.wait()
    for i in range(count):
        index.upsert({"run_id": f"run-{worker}-{i}", "worker": worker, "i": i, "payload": "x" * 200})


def test_run_index_concurrent_upserts_lose_nothing(tmp_path):
    workers, per_worker = 6, 10
    barrier = FORK.Barrier(workers)
    procs = [FORK.Process(target=_upsert_worker, args=(str(tmp_path), barrier, w, per_worker))
             for w in range(workers)]
    for p in procs:
        p.start()
    join_all(procs)
    raw = json.loads((tmp_path / INDEX_FILE).read_text(encoding="utf-8"))  # valid JSON
    assert len(raw["_default"]) == workers * per_worker
    docs = RunIndex(tmp_path).all()
    assert sorted(d["run_id"] for d in docs) == sorted(f"run-{w}-{i}" for w in range(workers)
                                                        for i in range(per_worker))
    assert not list(tmp_path.glob(f"{INDEX_FILE}.damaged-*")), "the index was found damaged while writing"


def test_run_index_upsert_replaces(tmp_path):
    index = RunIndex(tmp_path)
    index.upsert({"run_id": "r1", "state": "running"})
    index.upsert({"run_id": "r1", "state": "finished"})
    index.upsert({"run_id": "r0", "state": "queued"})
    assert index.all() == [{"run_id": "r0", "state": "queued"}, {"run_id": "r1", "state": "finished"}]
    index.remove("r1")
    assert [d["run_id"] for d in index.all()] == ["r0"]


def _finished_run(root: Path, name: str, results: dict | None) -> Run:
    run = create_run(root, {"preset": {"name": name, "model": {"name": "tiny"}},
                            "plan": {"setting": "s", "targets": ["task-a"], "seeds": [13], "methods": ["pt"]}}, name)
    run.update_status(state="finished", finished=time.time())
    if results is not None:
        write_json_atomic(run.results_path, results)
    return run


def test_damaged_index_is_moved_aside_and_rebuilt(tmp_path):
    results = select_and_aggregate(synthetic_cells())
    runs = [_finished_run(tmp_path, f"run{i}", results) for i in range(3)]
    index = RunIndex(tmp_path)
    for run in runs:
        index.record(run)
    text = (tmp_path / INDEX_FILE).read_text(encoding="utf-8")
    damaged_text = text[: len(text) // 2]  # a write cut short
    (tmp_path / INDEX_FILE).write_text(damaged_text, encoding="utf-8")

    docs = RunIndex(tmp_path).all()
    assert [d["run_id"] for d in docs] == sorted(r.id for r in runs)
    assert all(d["state"] == "finished" and d["mean"] == results["mean"] for d in docs)
    kept = list(tmp_path.glob(f"{INDEX_FILE}.damaged-*"))
    assert len(kept) == 1 and kept[0].read_text(encoding="utf-8") == damaged_text
    json.loads((tmp_path / INDEX_FILE).read_text(encoding="utf-8"))  # the rebuilt index is valid
    assert len(RunIndex(tmp_path).all()) == 3  # and stays so


@pytest.mark.parametrize("how", ["deleted", "zero-bytes"])
def test_lost_index_is_rebuilt_from_run_directories(tmp_path, how):
    """engine/store/index.py's docstring: 'a lost or damaged index is moved aside and rebuilt from [run dirs]'."""
    runs = [_finished_run(tmp_path, f"run{i}", select_and_aggregate(synthetic_cells())) for i in range(2)]
    index = RunIndex(tmp_path)
    for run in runs:
        index.record(run)
    if how == "deleted":
        (tmp_path / INDEX_FILE).unlink()
    else:  # touched by TinyDB but never written (RunIndex.all() itself leaves this after a deletion)
        (tmp_path / INDEX_FILE).write_text("")
    assert [d["run_id"] for d in RunIndex(tmp_path).all()] == sorted(r.id for r in runs)


def test_rebuild_counts_runs(tmp_path):
    runs = [_finished_run(tmp_path, f"r{i}", None) for i in range(2)]
    (tmp_path / "not-a-run").mkdir()
    assert RunIndex(tmp_path).rebuild() == 2
    assert [d["run_id"] for d in RunIndex(tmp_path).all()] == sorted(r.id for r in runs)
