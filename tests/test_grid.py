"""The grid runner (engine.execution.grid): units of work, the executor, periodic checkpoints, group splits."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, small_run
from engine.store.checkpoint import resume_step
from engine.experiment.config import preset_from_dict
from engine.experiment.units import CellWork, LearnInit, PromptInit, TrainCells, unit_from_dict
from engine.compute.executor import Executor
from engine.execution.grid import cells_unit, upstream_unit
from engine.experiment.units import unit_to_dict
from engine.experiment.data import TaskData
from engine.experiment.plan import Cell, Plan, grid_cells
from engine.store.run_dir import read_json
from engine.runner.lifecycle import execute

RECORD_KEYS = ("method", "task", "seed", "lr", "metric", "dev", "test", "best_step", "dev_history", "final_loss",
               "stopped")


class Recorder:
    """UnitEvents that keep everything (and never stop)."""

    def __init__(self):
        self.steps, self.devs, self.messages = [], [], []

    def upstream_step(self, method, step, loss):
        self.steps.append((method, step, loss))

    def cell_step(self, cell_id, step, loss):
        self.steps.append((cell_id, step, loss))

    def cell_dev(self, cell_id, step, score):
        self.devs.append((cell_id, step, score))

    def message(self, text):
        self.messages.append(text)

    def should_stop(self):
        return False


def _run_parts(run):
    config = run.config()
    return preset_from_dict(config["preset"]), Plan(**config["plan"])


def test_units_are_plain_data_that_survive_json_and_pickle(tmp_path):
    learn = LearnInit("maml", {"name": "x"}, "/data", None, [("glue-sst2", 13), ("trec", 42)],
                      PromptInit("vocab", seed=3), "/runs/r/checkpoints/upstream-maml.pt", "/runs/r/prompts/m.st")
    train = TrainCells({"name": "x"}, "/data", "/cfg", [
        CellWork(Cell("pt", "poem_sentiment", 13, 0.3), PromptInit("task_name", task_names=["poem_sentiment"], seed=13),
                 "/runs/r/checkpoints/a.pt", "/runs/r/prompts/a.st"),
        CellWork(Cell("maml", "poem_sentiment", 13, 0.3), PromptInit("file", file="/runs/r/prompts/m.st"),
                 "/runs/r/checkpoints/b.pt", "/runs/r/prompts/b.st")])
    for unit in (learn, train):
        text = json.dumps(unit_to_dict(unit))  # JSON types only
        assert unit_from_dict(json.loads(text)) == unit
        assert pickle.loads(pickle.dumps(unit)) == unit
    with pytest.raises(ValueError, match="unknown unit kind"):
        unit_from_dict({"kind": "bake_cake"})


def test_a_unit_from_json_runs_in_a_fresh_executor_to_the_same_records(tmp_path, tiny_llama):
    """Nothing in a unit depends on the process that made it: sent through JSON to another executor
    (another backbone load), it trains and tests to the same records."""
    from engine.compute.backbone import Backbone

    run = small_run(tmp_path / "runs", tiny_llama, name="units", downstream="steps = 3\neval_every = 3")
    preset, plan = _run_parts(run)
    cells = grid_cells(plan, preset.downstream.learning_rates)[:2]
    unit = cells_unit(run, preset, plan, cells)
    assert isinstance(upstream_unit(run, preset, plan, "maml"), LearnInit)

    def fresh_executor():
        return Executor(Backbone.load(str(tiny_llama), device="cpu", max_input_length=40))

    first_events = Recorder()
    first = fresh_executor().run(unit, first_events)
    copy = unit_from_dict(json.loads(json.dumps(unit_to_dict(unit))))
    for work in copy.cells:  # its own outputs, so nothing of the first run is reused
        work.output = work.output.replace(".safetensors", "-copy.safetensors")
    second = fresh_executor().run(copy, Recorder())
    assert [{k: getattr(r, k) for k in RECORD_KEYS} for r in first] == [{k: getattr(r, k) for k in RECORD_KEYS} for r in second]
    assert {c for c, _, _ in first_events.steps} == {c.id for c in cells}  # events name the cells
    assert all(os.path.isfile(w.output) for w in unit.cells + copy.cells)


def _checkpointed_run(root, tiny_llama):
    return small_run(root, tiny_llama, name="ckpt",
                     downstream="steps = 240\neval_every = 40\ncheckpoint_every = 30\ngroup_size = 4")


def _records(run) -> dict:
    return {p.stem: {k: read_json(p)[k] for k in RECORD_KEYS} for p in run.cells_dir.glob("*.json")}


def test_a_worker_killed_between_periodic_checkpoints_resumes_to_identical_records(tmp_path, tiny_llama):
    """downstream.checkpoint_every: each job of a group saves its state every N steps, so a worker killed
    with SIGKILL (no chance to checkpoint) loses at most N steps, and the resumed group ends exactly where
    an uninterrupted run ends."""
    reference = _checkpointed_run(tmp_path / "reference", tiny_llama)
    execute(reference)

    run = _checkpointed_run(tmp_path / "runs", tiny_llama)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "engine.runner.lifecycle", str(run.path)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = [run.cell_checkpoint(c) for c in read_json(reference.groups_path)[0]]
    deadline = time.time() + 120
    # a whole round every member resumes from (saved_step alone can read a member's new file before its
    # step file is written: a round not finished, so not the one resume takes)
    while time.time() < deadline and not all(resume_step(p) >= 30 for p in checkpoints):
        time.sleep(0.01)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    resume = {resume_step(p) for p in checkpoints}  # one whole round, even if the kill tore the next one
    assert len(resume) == 1 and 0 < min(resume) < 240 and min(resume) % 30 == 0, resume
    assert not list(run.cells_dir.glob("*.json"))  # no cell had finished: the kill lost unsaved steps

    execute(run)  # resume
    assert f"resuming after step {min(resume)}" in run.log_path.read_text()
    assert _records(run) == _records(reference)
    assert not list(run.checkpoints_dir.glob("*"))  # finished cells leave no checkpoint (nor .prev) behind


def test_a_group_out_of_gpu_memory_is_split_and_the_split_is_kept(tmp_path, tiny_llama, monkeypatch):
    """A CUDA out-of-memory error in a group halves that group (and groups.json), and the run goes on."""
    import torch

    run = small_run(tmp_path / "runs", tiny_llama, name="oom", downstream="steps = 2\neval_every = 2\ngroup_size = 4")
    real_train_cells = Executor.train_cells
    sizes, progresses = [], []

    def train_cells_with_little_memory(self, unit, events):
        sizes.append(len(unit.cells))
        progresses.append(events)
        if len(unit.cells) > 1:
            events.cell_step(unit.cells[0].cell.id, 1, 1.0)  # a step of the attempt that runs out of memory
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_train_cells(self, unit, events)

    monkeypatch.setattr(Executor, "train_cells", train_cells_with_little_memory)
    execute(run)
    assert sizes[:3] == [4, 2, 1]  # halved until it fits
    cells = [read_json(p) for p in run.cells_dir.glob("*.json")]
    assert len(cells) == 4 and {c["group_size"] for c in cells} == {1}
    assert [len(g) for g in read_json(run.groups_path)] == [1, 1, 1, 1]
    assert "out of GPU memory with 4 cells" in run.log_path.read_text()
    assert progresses[-1].done == progresses[-1].total  # failed attempts' steps are not counted twice


# ---------------------------------------------------------------- the authors' procedure through a whole run


def _cell_records(run) -> dict:
    return {p.stem: read_json(p) for p in run.cells_dir.glob("*.json")}


def test_test_prompt_last_tests_the_prompt_after_the_last_step(tmp_path, tiny_llama):
    """downstream.test_prompt = "last" (what the authors' code tests): the same training as "best_dev", but
    the tested and saved prompt is the one after the last step wherever the best dev score came earlier."""
    keys = "steps = 4\neval_every = 1"
    best = small_run(tmp_path / "best", tiny_llama, name="best", downstream=keys)
    last = small_run(tmp_path / "last", tiny_llama, name="last", downstream=keys + '\ntest_prompt = "last"')
    execute(best)
    execute(last)
    from engine.compute.prompt import load_prompt

    earlier = 0
    for cell, b in _cell_records(best).items():
        lr = _cell_records(last)[cell]
        assert (b["tested"], lr["tested"]) == ("best_dev", "last")
        assert b["dev_history"] == lr["dev_history"] and b["best_step"] == lr["best_step"]  # same training
        same = (load_prompt(best.path / b["prompt"])[0] == load_prompt(last.path / lr["prompt"])[0]).all()
        assert bool(same) == (b["best_step"] == 4)
        earlier += b["best_step"] < 4
    assert earlier, "no cell had its best dev score before the last step: the test shows nothing"


def test_a_run_with_the_authors_procedure_trains_and_tests_as_configured(tmp_path, tiny_t5):
    """Every paper key at once on a tiny T5 (which has dropout): CrossFit inputs, the prompt after </s>,
    task-name initialisation (upstream: the source names), dropout, batch 16 without clipping, the epoch
    cap, beam search, the last prompt tested, MTL on train + dev files for its epochs."""
    from engine.execution.grid import meta_task_keys, upstream_unit

    run = small_run(tmp_path / "runs", tiny_t5, name="paper", data='input_format = "crossfit"',
                    model_keys='dropout = "config"', prompt='placement = "after_eos"\ninit = "task_name"',
                    downstream='steps = 50\nmax_epochs = 2\neval_every = 1\nbatch_size = 16\ngrad_clip = 0.0\n'
                               'prediction = "generate"\nnum_beams = 2\nrepetition_penalty = 2.5\n'
                               'early_stopping = true\nmax_new_tokens = 4\ntest_prompt = "last"\nmax_test_examples = 6',
                    upstream='methods = ["mtl"]\nsteps = 1000\nlog_every = 1\n[upstream.mtl]\nuse_dev = true\nepochs = 1\n'
                             'batch_size = 16')
    preset, plan = _run_parts(run)
    unit = upstream_unit(run, preset, plan, "mtl")
    assert (unit.init.method, unit.init.task_names) == ("task_name", plan.sources)
    execute(run)
    status = run.status()
    assert status["state"] == "finished" and status["progress"] == 1.0
    records = _cell_records(run)
    assert len(records) == 2 * len(plan.targets) * len(plan.seeds)  # PT and MTL
    for record in records.values():
        assert record["steps"] == 2  # 16 training examples, 16 per step, 2 epochs
        assert [s for s, _ in record["dev_history"]] == [1, 2] and record["tested"] == "last"
    splits = meta_task_keys(plan, TaskData(plan.data_dir, plan.config_dir), preset.data.k)
    mtl_steps = [e["step"] for e in run.events() if e.get("stage") == "upstream"]
    assert mtl_steps == list(range(1, len(splits) * (16 + 16) // 16 + 1))  # one epoch of train + dev, not 1000
