"""Prompt tuning: many independent jobs in one loop over the shared frozen backbone.

The frozen backbone never sees an optimizer: the only trainable tensors are the
prompts. A group of jobs (grid cells: task x split x learning rate x method)
trains as one bank [R, n, d]; each forward/backward pass carries the batches of
all active jobs, every example reading its own job's prompt. Each job keeps
everything of its own: data order (its seeded sampler), optimizer state (one
row of a vectorised optimizer), learning rate, dev evaluations, best-dev
checkpoint, and its end (a non-finite loss stops that job alone). The loss is
the sum of the jobs' own token-averaged losses, so each prompt gets exactly its
job's gradient: R jobs together end where the same jobs run one by one end.
`prompt_tune` is the group of one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from engine.base import faults
from engine.experiment.config import TuningConfig
from engine.compute.bank_optim import BankOptimizer
from engine.store.checkpoint import CheckpointError, load_checkpoint, resume_path, save_round
from engine.experiment.data import Example, TaskInfo
from engine.experiment.metrics import compute_metric, metric_for_task
from engine.base.stopping import RunCancelled


@dataclass
class Evaluation:
    metric: str
    score: float
    predictions: list[str]


@dataclass
class TuningResult:
    best_prompt: torch.Tensor
    best_step: int
    best_dev: float
    dev_history: list[tuple[int, float]] = field(default_factory=list)
    final_loss: float = math.nan
    stopped: str = ""  # why training ended early ("nan loss"), empty when it ran all steps
    last_prompt: torch.Tensor | None = None  # the prompt after the last step taken


def make_optimizer(name: str, params: list[torch.Tensor], lr: float, weight_decay: float):
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # The paper's setting: a fixed learning rate, no relative step, no parameter scaling.
        return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False,
                         warmup_init=False, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (known: adafactor, adamw)")


class BatchSampler:
    """Endless seeded batches: a fresh permutation each epoch, batches may cross epochs."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        if n < 1:
            raise ValueError("no training examples to draw batches from")
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self._queue: list[int] = []

    def next(self) -> list[int]:
        while len(self._queue) < self.batch_size:
            self._queue.extend(torch.randperm(self.n, generator=self.generator).tolist())
        batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size:]
        return batch

    def state(self) -> list[int]:
        return list(self._queue)


OnStep = Callable[[int, float], None]
OnEval = Callable[[int, float], None]


@dataclass
class EvalItem:
    """One prompt to score on one list of examples (a dev or test split)."""

    prompt: torch.Tensor
    examples: list[Example]
    task: TaskInfo
    cfg: TuningConfig


def _prediction_mode(examples: list[Example], mode: str) -> str:
    if mode == "rank" or (mode == "auto" and all(e.options for e in examples)):
        if not all(e.options for e in examples):
            raise ValueError("rank classification asked for, but some examples have no options")
        return "rank"
    return "generate"


def evaluate_many(backbone, items: list[EvalItem]) -> list[Evaluation]:
    """Score many (prompt, examples) pairs; all items of one prediction mode share batched passes.

    Rank classification scores every option of every example of every item in
    passes of `eval_batch_size` rows over a bank of the items' prompts; free-form
    tasks generate the same way, capped at `max_new_tokens`.
    """
    predictions: list[list[str]] = [[] for _ in items]
    by_mode: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_mode.setdefault(_prediction_mode(item.examples, item.cfg.prediction), []).append(i)
    for mode, chosen in by_mode.items():
        cfg = items[chosen[0]].cfg
        if len({items[i].cfg.placement for i in chosen}) != 1:
            raise ValueError("items evaluated together must place the prompt the same way")
        bank = torch.stack([items[i].prompt.detach().float().to(backbone.device) for i in chosen])
        examples = [(row, e) for row, i in enumerate(chosen) for e in items[i].examples]
        owner = torch.tensor([row for row, _ in examples], dtype=torch.long)
        inputs = [e.input for _, e in examples]
        if mode == "rank":
            picks = backbone.rank_options(bank, inputs, [list(e.options) for _, e in examples],
                                          placement=cfg.placement, batch_rows=cfg.eval_batch_size, owner=owner)
            flat = [e.options[p] for (_, e), p in zip(examples, picks)]
        else:
            flat = backbone.generate(bank, inputs, placement=cfg.placement, max_new_tokens=cfg.max_new_tokens,
                                     batch_rows=cfg.eval_batch_size, owner=owner, num_beams=cfg.num_beams,
                                     repetition_penalty=cfg.repetition_penalty, early_stopping=cfg.early_stopping)
        for (row, _), text in zip(examples, flat):
            predictions[chosen[row]].append(text)
    results = []
    for item, preds in zip(items, predictions):
        metric = metric_for_task(item.task.name, item.task.task_type)
        score = compute_metric(metric, preds, [e.references for e in item.examples])
        results.append(Evaluation(metric, score, preds))
    return results


def evaluate(backbone, prompt: torch.Tensor, examples: list[Example], task: TaskInfo, cfg: TuningConfig) -> Evaluation:
    return evaluate_many(backbone, [EvalItem(prompt, examples, task, cfg)])[0]


@dataclass
class Job:
    """One prompt-tuning job; with `checkpoint`, it resumes from there and is saved there when stopped."""

    init_prompt: torch.Tensor
    train: list[Example]
    dev: list[Example]
    task: TaskInfo
    cfg: TuningConfig
    seed: int
    checkpoint: Path | None = None


OnJobStep = Callable[[int, int, float], None]  # (job index, step, loss)
OnJobEval = Callable[[int, int, float], None]  # (job index, step, dev score)


def prompt_tune_group(backbone, jobs: list[Job], *, on_step: OnJobStep | None = None,
                      on_eval: OnJobEval | None = None, should_stop: Callable[[], bool] | None = None,
                      dropout_seed: int = 0, on_message: Callable[[str], None] | None = None) -> list[TuningResult]:
    """Train all jobs; return each one's prompt with the best dev score (ties keep the earlier one).

    Jobs with a checkpoint resume from it, each at its own step, and save their state
    there every `cfg.checkpoint_every` steps; a job whose checkpoint cannot be loaded starts
    over alone (said through `on_message`). When `should_stop()` turns true, every
    job with a checkpoint path saves its state there (finished ones too: trained but
    not yet tested) and `RunCancelled` is raised.

    With the backbone's dropout on, the group's masks come from one generator seeded with
    `dropout_seed` and saved in the checkpoints: a group's masks depend on its padded width,
    so dropout results are reproducible for the same grouping, not equal to one-by-one runs.
    """
    if len({job.cfg.placement for job in jobs}) != 1:
        raise ValueError("all jobs of a group must place the prompt the same way")
    if len({tuple(job.init_prompt.shape) for job in jobs}) != 1:
        raise ValueError("all jobs of a group must have prompts of the same shape")
    placement = jobs[0].cfg.placement
    bank = torch.stack([job.init_prompt.detach().float() for job in jobs]).to(backbone.device).requires_grad_(True)
    # one vectorised optimizer per kind in use; each steps only its own jobs' rows
    optimizers = {name: BankOptimizer(name, bank, [job.cfg.learning_rate for job in jobs],
                                      [job.cfg.weight_decay for job in jobs], [job.cfg.grad_clip for job in jobs])
                  for name in dict.fromkeys(job.cfg.optimizer for job in jobs)}
    samplers = [BatchSampler(len(job.train), job.cfg.batch_size, torch.Generator().manual_seed(job.seed))
                for job in jobs]
    results = [TuningResult(best_prompt=bank[j].detach().cpu().clone(), best_step=0, best_dev=-math.inf)
               for j in range(len(jobs))]
    steps = [0] * len(jobs)
    dropout_rng = torch.Generator().manual_seed(dropout_seed)
    for j, job in enumerate(jobs):
        resume = resume_path(job.checkpoint) if job.checkpoint is not None else None
        if resume is not None:
            try:
                steps[j] = _load_job_state(resume, j, bank, optimizers[job.cfg.optimizer], samplers[j], results[j],
                                           dropout_rng)
            except CheckpointError as exc:  # this job alone starts over; the rest of the group resumes
                if on_message:
                    on_message(f"{exc}: that job restarts from step 0")
    active = [j for j, job in enumerate(jobs) if steps[j] < job.cfg.steps and not results[j].stopped]
    while active:
        inputs, targets, owner_rows = [], [], []
        for j in active:
            batch = [jobs[j].train[i] for i in samplers[j].next()]
            inputs += [e.input for e in batch]
            targets += [e.output for e in batch]
            owner_rows += [j] * len(batch)
        owner = torch.tensor(owner_rows, device=backbone.device)
        with backbone.training(dropout_rng):
            totals = backbone.token_totals(bank, inputs, targets, placement, owner=owner)
        zeros = torch.zeros(len(jobs), device=backbone.device, dtype=totals.nll.dtype)
        nll = zeros.index_add(0, owner, totals.nll)
        tokens = zeros.index_add(0, owner, totals.tokens.to(totals.nll.dtype))
        losses = nll / tokens.clamp(min=1)  # each job's token-averaged loss, as in a one-job loop
        finite = torch.isfinite(losses.detach()).tolist()
        stepping = [j for j in active if finite[j]]
        for j in active:
            if not finite[j]:
                results[j].stopped = f"non-finite loss at step {steps[j] + 1}"  # this job stops alone
        bank.grad = None
        if stepping:
            losses[stepping].sum().backward()
        for name, optimizer in optimizers.items():
            optimizer.step(bank, [j for j in stepping if jobs[j].cfg.optimizer == name])
        step_losses = losses.detach()[stepping].tolist() if stepping else []
        due = []
        for j, loss in zip(stepping, step_losses):
            steps[j] += 1
            results[j].final_loss = loss
            if on_step:
                on_step(j, steps[j], loss)
            if steps[j] % jobs[j].cfg.eval_every == 0 or steps[j] == jobs[j].cfg.steps:
                due.append(j)
        if due:  # the dev sets of all jobs due now, in shared passes
            scores = evaluate_many(backbone, [EvalItem(bank[j].detach(), jobs[j].dev, jobs[j].task, jobs[j].cfg)
                                              for j in due])
            for j, evaluation in zip(due, scores):
                result, score = results[j], evaluation.score
                result.dev_history.append((steps[j], score))
                if on_eval:
                    on_eval(j, steps[j], score)
                if score > result.best_dev:  # NaN never wins
                    result.best_dev, result.best_step = score, steps[j]
                    result.best_prompt = bank[j].detach().cpu().clone()
        active = [j for j in stepping if steps[j] < jobs[j].cfg.steps]
        faults.point("tuning.step")
        # periodic checkpoints, one round for the group: a killed worker loses at most checkpoint_every steps
        due = [j for j in active if jobs[j].checkpoint is not None and jobs[j].cfg.checkpoint_every
               and steps[j] % jobs[j].cfg.checkpoint_every == 0]
        if due:
            save_round([_job_state(jobs[j], j, bank, optimizers, samplers[j], results[j], steps[j], dropout_rng)
                        for j in due])
        if active and should_stop is not None and should_stop():
            save_round([_job_state(job, j, bank, optimizers, samplers[j], results[j], steps[j], dropout_rng)
                        for j, job in enumerate(jobs) if job.checkpoint is not None])
            raise RunCancelled(f"stopped with {len(active)} of {len(jobs)} jobs in progress")
    for j, result in enumerate(results):
        result.last_prompt = bank[j].detach().cpu().clone()
    return results


def measure_group_memory(backbone, examples: list[Example], batch_size: int, prompt: torch.Tensor,
                         placement: str) -> tuple[int, int]:
    """(fixed, per-job) GPU bytes of a group's training pass, from probes of one and two jobs, each with
    a full batch of the longest (in tokens) of `examples`, forward and backward (fixed: what does not
    grow with the group)."""
    device = backbone.device
    size = lambda e: len(backbone._ids(e.input, "input")) + len(backbone._ids(e.output, "target"))  # noqa: E731
    pool = sorted(examples, key=size, reverse=True)[:batch_size]
    longest = [pool[i % len(pool)] for i in range(batch_size)]  # a small train split repeats, as the sampler does
    peaks = []
    for copies in (1, 2):
        bank = prompt.detach().float().to(device).expand(copies, -1, -1).clone().requires_grad_(True)
        owner = torch.arange(copies).repeat_interleave(len(longest))
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with backbone.training():  # dropout keeps its masks for the backward
            totals = backbone.token_totals(bank, [e.input for e in longest] * copies,
                                           [e.output for e in longest] * copies, placement, owner=owner)
        totals.mean_loss().backward()
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - before)
        del bank, totals
    per_job = max(peaks[1] - peaks[0], 1)
    return max(peaks[0] - per_job, 0), per_job


def group_size_that_fits(backbone, examples: list[Example], batch_size: int, prompt: torch.Tensor, placement: str,
                         memory_fraction: float) -> tuple[int, dict]:
    """How many jobs one group can hold within `memory_fraction` of the free GPU memory, and the probe's numbers."""
    fixed, per_job = measure_group_memory(backbone, examples, batch_size, prompt, placement)
    free, _ = torch.cuda.mem_get_info(backbone.device)
    # memory the caching allocator holds but does not use is free for the group too
    free += torch.cuda.memory_reserved(backbone.device) - torch.cuda.memory_allocated(backbone.device)
    size = max(1, int((free * memory_fraction - fixed) // per_job))
    return size, {"per_job_mib": per_job / 2**20, "fixed_mib": fixed / 2**20, "free_mib": free / 2**20}


def prompt_tune(backbone, init_prompt: torch.Tensor, train: list[Example], dev: list[Example], task: TaskInfo,
                cfg: TuningConfig, *, seed: int, on_step: OnStep | None = None,
                on_eval: OnEval | None = None, checkpoint: Path | None = None,
                should_stop: Callable[[], bool] | None = None) -> TuningResult:
    """Train one prompt (a group of one); see `prompt_tune_group`."""
    job = Job(init_prompt, train, dev, task, cfg, seed, checkpoint)
    return prompt_tune_group(backbone, [job], on_step=on_step and (lambda _, step, loss: on_step(step, loss)),
                             on_eval=on_eval and (lambda _, step, score: on_eval(step, score)),
                             should_stop=should_stop)[0]


def _job_state(job: Job, row: int, bank, optimizers: dict[str, BankOptimizer], sampler: BatchSampler,
               result: TuningResult, step: int, dropout_rng: torch.Generator) -> tuple[Path, dict]:
    """(checkpoint path, state) of one job of the group: enough to continue it exactly."""
    optimizer = optimizers[job.cfg.optimizer]
    return job.checkpoint, {
        "step": step, "prompt": bank[row].detach().cpu(), "optimizer": optimizer.row_state(row),
        "generator": sampler.generator.get_state(), "queue": sampler.state(),
        "dropout_generator": dropout_rng.get_state(),  # the group's, the same in every member of a round
        "best": {"prompt": result.best_prompt, "step": result.best_step, "dev": result.best_dev,
                 "history": list(result.dev_history), "final_loss": result.final_loss, "stopped": result.stopped}}


def _load_job_state(path: Path, row: int, bank, optimizer: BankOptimizer, sampler: BatchSampler,
                    result: TuningResult, dropout_rng: torch.Generator) -> int:
    """Put a job's saved state back into its row; a checkpoint that does not fit this job (damaged, another
    model's prompt size, another optimizer) is a CheckpointError, raised before anything is changed."""
    state = load_checkpoint(path)
    try:
        if "param_groups" in state["optimizer"]:  # a checkpoint from before per-row optimizers: start over
            return 0
        prompt, saved = state["prompt"], state["optimizer"]
        if tuple(prompt.shape) != tuple(bank[row].shape):
            raise CheckpointError(f"checkpoint {path} holds a prompt of shape {tuple(prompt.shape)}, this job's "
                                  f"is {tuple(bank[row].shape)} (another model or prompt length)")
        if set(saved) != {"step", *optimizer.state}:
            raise CheckpointError(f"checkpoint {path} holds another optimizer's state ({sorted(saved)})")
        b = state["best"]
        best = (b["prompt"], b["step"], b["dev"], [tuple(h) for h in b["history"]], b["final_loss"],
                b.get("stopped", ""))
        generator, queue, step = state["generator"], list(state["queue"]), int(state["step"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {path} lacks a job's state ({type(exc).__name__}: {exc})") from None
    if "dropout_generator" in state:
        dropout_rng.set_state(state["dropout_generator"])
    with torch.no_grad():
        bank[row] = prompt.to(bank.device)
    optimizer.load_row_state(row, saved)
    sampler.generator.set_state(generator)
    sampler._queue = queue
    (result.best_prompt, result.best_step, result.best_dev, result.dev_history, result.final_loss,
     result.stopped) = best
    return step
