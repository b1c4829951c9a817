"""Prompt tuning (engine.compute.tuning): R jobs trained together end where the same jobs trained one by one end;
per-job checkpoints, batched evaluation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from engine.compute.backbone import Backbone
from engine.experiment.data import TaskData
from engine.compute.prompt import initial_prompt
from engine.compute.tuning import Job, TuningConfig, prompt_tune, prompt_tune_group

from conftest import REPO

DEMO = TaskData(REPO / "presets" / "demo-data")


def _jobs(backbone) -> list[Job]:
    specs = [("demo-emotion", 1, 0.3, "adafactor", 6), ("demo-formality", 2, 0.1, "adamw", 4),
             ("demo-product_sentiment", 1, 0.5, "adafactor", 5)]
    jobs = []
    for task, seed, lr, optimizer, steps in specs:
        split = DEMO.load_split(task, 16, seed)
        cfg = TuningConfig(learning_rate=lr, steps=steps, batch_size=4, optimizer=optimizer, eval_every=2,
                           eval_batch_size=32)
        init = initial_prompt(backbone, length=4, method="vocab", seed=seed)
        jobs.append(Job(init, split.train, split.dev, DEMO.task_info(task), cfg, seed))
    return jobs


def test_group_equals_one_by_one(tiny_model):
    backbone = Backbone.load(str(tiny_model))
    jobs = _jobs(backbone)
    together = prompt_tune_group(backbone, jobs)
    for job, group_result in zip(jobs, together):
        alone = prompt_tune(backbone, job.init_prompt, job.train, job.dev, job.task, job.cfg, seed=job.seed)
        assert group_result.best_step == alone.best_step
        assert [s for s, _ in group_result.dev_history] == [s for s, _ in alone.dev_history]
        assert [v for _, v in group_result.dev_history] == pytest.approx([v for _, v in alone.dev_history])
        assert group_result.final_loss == pytest.approx(alone.final_loss, rel=1e-4)
        torch.testing.assert_close(group_result.best_prompt, alone.best_prompt, rtol=1e-4, atol=1e-5)
        assert not torch.equal(group_result.best_prompt, job.init_prompt)  # it trained


def test_a_failing_job_stops_alone(tiny_llama):
    backbone = Backbone.load(str(tiny_llama))
    jobs = _jobs(backbone)
    jobs[1].init_prompt = torch.full_like(jobs[1].init_prompt, math.nan)
    together = prompt_tune_group(backbone, jobs)
    assert together[1].stopped.startswith("non-finite loss at step 1")
    for j in (0, 2):
        alone = prompt_tune(backbone, jobs[j].init_prompt, jobs[j].train, jobs[j].dev, jobs[j].task, jobs[j].cfg,
                            seed=jobs[j].seed)
        assert not together[j].stopped
        torch.testing.assert_close(together[j].best_prompt, alone.best_prompt, rtol=1e-4, atol=1e-5)


def test_a_stopped_group_resumes_in_another_grouping_to_the_same_end(tiny_llama, tmp_path):
    """Each job checkpoints alone, so a group stopped mid-way can resume as single jobs (or any other group)."""
    from engine.base.stopping import RunCancelled
    from engine.compute.tuning import Job

    backbone = Backbone.load(str(tiny_llama))
    reference = prompt_tune_group(backbone, _jobs(backbone))
    jobs = _jobs(backbone)
    for j, job in enumerate(jobs):
        job.checkpoint = tmp_path / f"job{j}.pt"
    calls = []
    with pytest.raises(RunCancelled):
        prompt_tune_group(backbone, jobs, should_stop=lambda: calls.append(1) or len(calls) >= 3)
    assert all(job.checkpoint.is_file() for job in jobs)
    for j, job in enumerate(jobs):  # resume one by one
        resumed = prompt_tune_group(backbone, [Job(job.init_prompt, job.train, job.dev, job.task, job.cfg, job.seed,
                                                   job.checkpoint)])[0]
        assert [s for s, _ in resumed.dev_history] == [s for s, _ in reference[j].dev_history]
        assert [v for _, v in resumed.dev_history] == pytest.approx([v for _, v in reference[j].dev_history])
        assert resumed.best_step == reference[j].best_step
        torch.testing.assert_close(resumed.best_prompt, reference[j].best_prompt, rtol=1e-4, atol=1e-5)


def test_evaluating_many_prompts_together_equals_one_at_a_time(tiny_llama):
    """Rank classification and generation over a bank give each item what it gets alone."""
    from engine.compute.tuning import EvalItem, evaluate, evaluate_many

    backbone = Backbone.load(str(tiny_llama))
    jobs = _jobs(backbone)
    items = [EvalItem(initial_prompt(backbone, length=4, method="vocab", seed=10 + j), job.dev, job.task, job.cfg)
             for j, job in enumerate(jobs)]
    free_form = dataclasses.replace(jobs[0].cfg, prediction="generate", max_new_tokens=4)
    items.append(EvalItem(items[0].prompt, jobs[0].dev[:6], jobs[0].task, free_form))
    together = evaluate_many(backbone, items)
    for item, got in zip(items, together):
        alone = evaluate(backbone, item.prompt, item.examples, item.task, item.cfg)
        assert got.predictions == alone.predictions
        assert got.score == alone.score
    assert len({tuple(e.predictions) for e in together[:3]}) > 1  # the items did differ


def test_a_checkpoint_from_before_per_row_optimizers_restarts_its_job(tiny_llama, tmp_path):
    """Session-1 cell checkpoints held a whole optimizer's state_dict; such a job starts over instead of failing."""
    from engine.compute.tuning import make_optimizer

    backbone = Backbone.load(str(tiny_llama))
    job = _jobs(backbone)[0]
    fresh = prompt_tune(backbone, job.init_prompt, job.train, job.dev, job.task, job.cfg, seed=job.seed)
    old = tmp_path / "cell.pt"
    prompt = torch.zeros_like(job.init_prompt).requires_grad_(True)
    torch.save({"step": 3, "prompt": prompt.detach(), "optimizer": make_optimizer("adafactor", [prompt], 0.3, 0.0)
                .state_dict(), "generator": torch.Generator().get_state(), "queue": [],
                "best": {"prompt": prompt.detach(), "step": 2, "dev": 0.0, "history": [], "final_loss": 0.0}}, old)
    resumed = prompt_tune(backbone, job.init_prompt, job.train, job.dev, job.task, job.cfg, seed=job.seed,
                          checkpoint=old)
    assert resumed.dev_history == fresh.dev_history
    torch.testing.assert_close(resumed.best_prompt, fresh.best_prompt)


class _Killed(BaseException):
    """A SIGKILL stand-in: nothing after it runs (no cancel save)."""


def test_a_kill_in_the_middle_of_a_checkpoint_round_resumes_from_the_last_whole_round(tiny_llama, tmp_path,
                                                                                      monkeypatch):
    """Periodic checkpoints of a group are one round: a worker killed after saving some jobs of a round
    resumes every job from the previous round, so the group ends exactly (bit for bit) as if never killed."""
    from engine.store import checkpoint

    backbone = Backbone.load(str(tiny_llama))

    def jobs_with_checkpoints():
        jobs = _jobs(backbone)
        for j, job in enumerate(jobs):
            job.cfg = dataclasses.replace(job.cfg, steps=6, checkpoint_every=2)
            job.checkpoint = tmp_path / f"job{j}.pt"
        return jobs

    reference = prompt_tune_group(backbone, [dataclasses.replace(j, checkpoint=None) for j in _jobs(backbone)
                                             for j in [dataclasses.replace(j, cfg=dataclasses.replace(
                                                 j.cfg, steps=6, checkpoint_every=2))]])
    real_save, saves = checkpoint.save_checkpoint, []

    def save_then_die(path, state, round_info=None, **keys):
        saves.append((path.name, state["step"]))
        real_save(path, state, round_info, **keys)
        if len(saves) == 4:  # round 1 (step 2) is whole; round 2 (step 4) has one member saved
            raise _Killed

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        prompt_tune_group(backbone, jobs_with_checkpoints())
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    assert saves == [("job0.pt", 2), ("job1.pt", 2), ("job2.pt", 2), ("job0.pt", 4)]
    assert [checkpoint.saved_step(tmp_path / f"job{j}.pt") for j in range(3)] == [4, 2, 2]  # torn round
    assert [checkpoint.resume_step(tmp_path / f"job{j}.pt") for j in range(3)] == [2, 2, 2]

    resumed = prompt_tune_group(backbone, jobs_with_checkpoints())
    for got, want in zip(resumed, reference):
        assert got.dev_history == want.dev_history and got.best_step == want.best_step
        assert got.final_loss == want.final_loss
        assert torch.equal(got.best_prompt, want.best_prompt)


# ---------------------------------------------------------------- the authors' procedure: dropout, epoch cap, tested prompt


def _with_checkpoints(jobs, root):
    return [dataclasses.replace(job, checkpoint=root / f"job{j}.pt") for j, job in enumerate(jobs)]


def test_a_dropout_group_is_reproducible_and_resumes_to_the_same_end(tiny_t5, tmp_path):
    """With dropout on (a tiny T5: Llama and SmolLM2 have none), one generator per group, seeded by the caller
    and saved in each checkpoint round: the same seed gives the same group, another seed another one, and a
    group stopped mid-way resumes to exactly the uninterrupted end."""
    from engine.base.stopping import RunCancelled

    backbone = Backbone.load(str(tiny_t5), dropout=True)
    jobs = _jobs(backbone)
    first = prompt_tune_group(backbone, jobs, dropout_seed=5)
    again = prompt_tune_group(backbone, jobs, dropout_seed=5)
    other = prompt_tune_group(backbone, jobs, dropout_seed=6)
    without = prompt_tune_group(Backbone.load(str(tiny_t5)), jobs)
    for a, b, c, d in zip(first, again, other, without):
        assert torch.equal(a.last_prompt, b.last_prompt) and a.dev_history == b.dev_history
        assert not torch.allclose(a.last_prompt, c.last_prompt)
        assert not torch.allclose(a.last_prompt, d.last_prompt)

    stopped = _with_checkpoints(jobs, tmp_path)
    calls = []
    with pytest.raises(RunCancelled):
        prompt_tune_group(backbone, stopped, dropout_seed=5, should_stop=lambda: calls.append(1) or len(calls) >= 2)
    resumed = prompt_tune_group(backbone, stopped, dropout_seed=5)
    for a, r in zip(first, resumed):
        assert torch.equal(a.last_prompt, r.last_prompt) and a.dev_history == r.dev_history


def test_the_epoch_cap_ends_a_job_after_that_many_passes_over_its_train_split():
    from engine.experiment.config import job_steps

    # the authors: total_steps 3000, 1000 epochs, 16 examples per step: 32 examples -> 2000 steps
    assert job_steps(3000, 1000, 32, 16) == 2000
    assert job_steps(3000, 1000, 16, 16) == 1000  # this data's 16-example splits
    assert job_steps(3000, 1000, 48, 16) == 3000
    assert job_steps(3000, 0, 16, 16) == 3000  # no cap
    assert job_steps(10, 3, 17, 16) == 6  # a partial last batch is a step


def test_last_prompt_is_the_prompt_after_the_last_step(tiny_llama):
    """What the authors' code tests (its 'best' state aliases the live prompt): the prompt after the last
    step, which generally is not the best-dev one."""
    backbone = Backbone.load(str(tiny_llama))
    jobs = _jobs(backbone)
    results = prompt_tune_group(backbone, jobs)
    for job, result in zip(jobs, results):
        longer = dataclasses.replace(job, cfg=dataclasses.replace(job.cfg, steps=job.cfg.steps + 1))
        one_more = prompt_tune_group(backbone, [longer])[0]
        assert result.best_step < job.cfg.steps or torch.equal(result.best_prompt, result.last_prompt)
        assert not torch.equal(result.last_prompt, one_more.last_prompt)  # it is the end, not a saved state
    shorter = [dataclasses.replace(job, cfg=dataclasses.replace(job.cfg, steps=job.cfg.steps - 1)) for job in jobs]
    for result, short in zip(results, prompt_tune_group(backbone, shorter)):
        assert not torch.equal(result.last_prompt, short.last_prompt)


# ---------------------------------------------------------------- checkpoints hold data, not code


class _Payload:
    """Unpickling this would create a file: what a tampered checkpoint in a shared runs directory could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("damage", ["code", "garbage", "other_model"])
def test_a_checkpoint_that_cannot_be_loaded_restarts_its_job_alone(tiny_llama, tmp_path, damage):
    """Checkpoints load with weights_only: a pickled object is refused before it runs; a damaged file or one
    from another model size is reported with its path, and only that job starts over."""
    from engine.store.checkpoint import save_checkpoint

    backbone = Backbone.load(str(tiny_llama))
    reference = prompt_tune_group(backbone, _jobs(backbone))
    jobs = _with_checkpoints(_jobs(backbone), tmp_path)
    bad = jobs[1].checkpoint
    marker = tmp_path / "pwned"
    # a finished save (the file and its step file), then the file damaged or replaced: a file with no step
    # file never finished its save, and its job starts over without reading it (engine.store.checkpoint.resume_path)
    save_checkpoint(bad, {"step": 2, "prompt": torch.zeros(4, backbone.hidden_size), "optimizer": {},
                          "generator": torch.Generator().get_state(), "queue": [], "best": {}})
    if damage == "code":
        torch.save({"step": 2, "payload": _Payload(marker)}, bad)
    elif damage == "garbage":
        bad.write_bytes(b"not a torch file")
    else:  # a valid checkpoint, for a wider prompt
        save_checkpoint(bad, {"step": 2, "prompt": torch.zeros(4, backbone.hidden_size * 2), "optimizer": {},
                              "generator": torch.Generator().get_state(), "queue": [], "best": {}})
    messages = []
    results = prompt_tune_group(backbone, jobs, on_message=messages.append)
    assert not marker.exists(), "the checkpoint ran code while loading"
    assert len(messages) == 1 and str(bad) in messages[0] and "restarts from step 0" in messages[0]
    for result, ref in zip(results, reference):  # the bad job trained from scratch, the others never noticed
        assert result.dev_history == ref.dev_history
        torch.testing.assert_close(result.best_prompt, ref.best_prompt)
