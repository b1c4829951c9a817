"""Many prompt-tuning jobs in one loop over the shared frozen backbone.

Each job keeps everything of its own: prompt, data order (its seeded sampler),
optimizer state, learning rate, dev evaluations, best checkpoint, and its end
(a job that reaches its steps or hits a non-finite loss leaves the group). Each
forward/backward pass carries the batches of all active jobs at once, every
example reading its own job's prompt from the bank; the loss is the sum of the
jobs' own losses, so each prompt gets exactly its job's gradient and the group
ends where the same jobs run one by one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from engine.data import Example, TaskInfo
from engine.tuning import BatchSampler, TuningConfig, TuningResult, evaluate, make_optimizer


@dataclass
class Job:
    init_prompt: torch.Tensor
    train: list[Example]
    dev: list[Example]
    task: TaskInfo
    cfg: TuningConfig
    seed: int


OnJobStep = Callable[[int, int, float], None]  # (job index, step, loss)
OnJobEval = Callable[[int, int, float], None]  # (job index, step, dev score)


def prompt_tune_group(backbone, jobs: list[Job], *, on_step: OnJobStep | None = None,
                      on_eval: OnJobEval | None = None) -> list[TuningResult]:
    placements = {job.cfg.placement for job in jobs}
    if len(placements) != 1:
        raise ValueError("all jobs of a group must place the prompt the same way")
    placement = placements.pop()
    prompts = [job.init_prompt.detach().clone().float().to(backbone.device).requires_grad_(True) for job in jobs]
    optimizers = [make_optimizer(job.cfg.optimizer, [p], job.cfg.learning_rate, job.cfg.weight_decay)
                  for job, p in zip(jobs, prompts)]
    samplers = [BatchSampler(len(job.train), job.cfg.batch_size, torch.Generator().manual_seed(job.seed))
                for job in jobs]
    results = [TuningResult(best_prompt=p.detach().cpu().clone(), best_step=0, best_dev=-math.inf) for p in prompts]
    active = [j for j, job in enumerate(jobs) if job.cfg.steps > 0]
    step = 0
    while active:
        step += 1
        inputs, targets, owner_rows = [], [], []
        for row, j in enumerate(active):
            batch = [jobs[j].train[i] for i in samplers[j].next()]
            inputs += [e.input for e in batch]
            targets += [e.output for e in batch]
            owner_rows += [row] * len(batch)
        bank = torch.stack([prompts[j] for j in active])
        owner = torch.tensor(owner_rows, device=backbone.device)
        totals = backbone.token_totals(bank, inputs, targets, placement, owner=owner)
        nll = torch.zeros(len(active), device=backbone.device, dtype=totals.nll.dtype).index_add(0, owner, totals.nll)
        tokens = torch.zeros(len(active), device=backbone.device, dtype=totals.nll.dtype).index_add(
            0, owner, totals.tokens.to(totals.nll.dtype))
        losses = nll / tokens.clamp(min=1)  # each job's token-averaged loss, as in the single-job loop
        finite = torch.isfinite(losses.detach())
        for row, j in enumerate(active):
            if not finite[row]:
                results[j].stopped = f"non-finite loss at step {step}"
        for j in active:
            prompts[j].grad = None
        if finite.any():
            losses[finite].sum().backward()
        still = []
        for row, j in enumerate(active):
            job, result = jobs[j], results[j]
            if not finite[row]:
                continue  # this job stops alone; the others go on
            if job.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([prompts[j]], job.cfg.grad_clip)
            optimizers[j].step()
            result.final_loss = float(losses[row].detach())
            if on_step:
                on_step(j, step, result.final_loss)
            if step % job.cfg.eval_every == 0 or step == job.cfg.steps:
                score = evaluate(backbone, prompts[j].detach(), job.dev, job.task, job.cfg).score
                result.dev_history.append((step, score))
                if on_eval:
                    on_eval(j, step, score)
                if score > result.best_dev:  # NaN never wins
                    result.best_dev, result.best_step = score, step
                    result.best_prompt = prompts[j].detach().cpu().clone()
            if step < job.cfg.steps:
                still.append(j)
        active = still
    return results
