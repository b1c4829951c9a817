"""Prompt tuning of one soft prompt on one task split, and its evaluation.

The frozen backbone never sees an optimizer: the only trainable tensor is the
prompt. Dev evaluation runs every `eval_every` steps; the best dev prompt is
kept and scored on the test split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from engine.data import Example, TaskInfo
from engine.metrics import compute_metric, metric_for_task
from engine.stopping import RunCancelled


@dataclass
class TuningConfig:
    learning_rate: float
    steps: int
    batch_size: int = 8
    optimizer: str = "adafactor"
    eval_every: int = 50
    eval_batch_size: int = 64
    prediction: str = "auto"
    max_new_tokens: int = 32
    grad_clip: float = 1.0
    weight_decay: float = 1e-5
    placement: str = "before"


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
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self._queue: list[int] = []

    def next(self) -> list[int]:
        while len(self._queue) < self.batch_size:
            self._queue.extend(torch.randperm(self.n, generator=self.generator).tolist())
        batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size:]
        return batch

    def state(self) -> list[int]:
        return list(self._queue)


def predict(backbone, prompt: torch.Tensor, examples: list[Example], *, mode: str = "auto",
            placement: str = "before", batch_rows: int = 64, max_new_tokens: int = 32) -> list[str]:
    """Rank classification over the options where examples have them, generation otherwise."""
    use_rank = mode == "rank" or (mode == "auto" and all(e.options for e in examples))
    if use_rank:
        if not all(e.options for e in examples):
            raise ValueError("rank classification asked for, but some examples have no options")
        picks = backbone.rank_options(prompt, [e.input for e in examples], [list(e.options) for e in examples],
                                      placement=placement, batch_rows=batch_rows)
        return [e.options[i] for e, i in zip(examples, picks)]
    return backbone.generate(prompt, [e.input for e in examples], placement=placement,
                             max_new_tokens=max_new_tokens, batch_rows=batch_rows)


def evaluate(backbone, prompt: torch.Tensor, examples: list[Example], task: TaskInfo, cfg: TuningConfig) -> Evaluation:
    metric = metric_for_task(task.name, task.task_type)
    predictions = predict(backbone, prompt, examples, mode=cfg.prediction, placement=cfg.placement,
                          batch_rows=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens)
    score = compute_metric(metric, predictions, [e.references for e in examples])
    return Evaluation(metric, score, predictions)


OnStep = Callable[[int, float], None]
OnEval = Callable[[int, float], None]


def prompt_tune(backbone, init_prompt: torch.Tensor, train: list[Example], dev: list[Example], task: TaskInfo,
                cfg: TuningConfig, *, seed: int, on_step: OnStep | None = None,
                on_eval: OnEval | None = None, checkpoint: Path | None = None,
                should_stop: Callable[[], bool] | None = None) -> TuningResult:
    """Train one prompt; return the prompt with the best dev score (ties keep the earlier one).

    With `checkpoint`, training resumes from it when it exists, and when `should_stop()`
    turns true the state is saved there and `RunCancelled` raised.
    """
    prompt = init_prompt.detach().clone().float().to(backbone.device).requires_grad_(True)
    optimizer = make_optimizer(cfg.optimizer, [prompt], cfg.learning_rate, cfg.weight_decay)
    sampler = BatchSampler(len(train), cfg.batch_size, torch.Generator().manual_seed(seed))
    best = TuningResult(best_prompt=prompt.detach().cpu().clone(), best_step=0, best_dev=-math.inf)
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        start = _load_tuning_state(checkpoint, prompt, optimizer, sampler, best)
    for step in range(start + 1, cfg.steps + 1):
        batch = [train[i] for i in sampler.next()]
        loss = backbone.loss(prompt, [e.input for e in batch], [e.output for e in batch], cfg.placement)
        if not torch.isfinite(loss):
            best.stopped = f"non-finite loss at step {step}"
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([prompt], cfg.grad_clip)
        optimizer.step()
        best.final_loss = float(loss.detach())
        if on_step:
            on_step(step, best.final_loss)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            dev_score = evaluate(backbone, prompt.detach(), dev, task, cfg).score
            best.dev_history.append((step, dev_score))
            if on_eval:
                on_eval(step, dev_score)
            if dev_score > best.best_dev:  # NaN never wins
                best.best_dev, best.best_step = dev_score, step
                best.best_prompt = prompt.detach().cpu().clone()
        if should_stop is not None and should_stop() and step < cfg.steps:
            if checkpoint is not None:
                _save_tuning_state(checkpoint, prompt, optimizer, sampler, best, step)
            raise RunCancelled(f"stopped after step {step}")
    return best


def _save_tuning_state(path: Path, prompt, optimizer, sampler: BatchSampler, best: TuningResult, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": step, "prompt": prompt.detach().cpu(), "optimizer": optimizer.state_dict(),
                "generator": sampler.generator.get_state(), "queue": sampler.state(),
                "best": {"prompt": best.best_prompt, "step": best.best_step, "dev": best.best_dev,
                         "history": best.dev_history, "final_loss": best.final_loss}}, tmp)
    tmp.replace(path)


def _load_tuning_state(path: Path, prompt, optimizer, sampler: BatchSampler, best: TuningResult) -> int:
    state = torch.load(path, weights_only=False)
    with torch.no_grad():
        prompt.copy_(state["prompt"].to(prompt.device))
    optimizer.load_state_dict(state["optimizer"])
    sampler.generator.set_state(state["generator"])
    sampler._queue = list(state["queue"])
    b = state["best"]
    best.best_prompt, best.best_step, best.best_dev = b["prompt"], b["step"], b["dev"]
    best.dev_history, best.final_loss = [tuple(h) for h in b["history"]], b["final_loss"]
    return int(state["step"])
