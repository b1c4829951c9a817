"""R prompt-tuning jobs trained together end where the same jobs trained one by one end."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import REPO
from engine.backbone import Backbone
from engine.data import TaskData
from engine.multiprompt import Job, prompt_tune_group
from engine.prompt import initial_prompt
from engine.tuning import TuningConfig, prompt_tune

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
