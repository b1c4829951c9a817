"""The upstream stage: learn a prompt initialisation on the source tasks with one algorithm.

The outer loop is the same for every algorithm: sample, ask the algorithm for a
(meta-)gradient, apply it with the outer optimizer, log, checkpoint. A
checkpoint holds the prompt, the optimizer state and the sampler's generator
state, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from engine.base import faults
from engine.compute.algorithms.base import MetaSampler, MetaTask
from engine.store.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.experiment.methods import METHODS
from engine.base.stopping import RunCancelled
from engine.compute.tuning import make_optimizer


class UpstreamError(ValueError):
    pass


def make_outer_optimizer(name: str, params, lr: float, weight_decay: float = 0.0):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    return make_optimizer(name, params, lr, weight_decay=weight_decay)


def make_algorithm(method: str, upstream_cfg, placement: str):
    """The registered method's algorithm with its [upstream.<method>] hyperparameters."""
    cls = METHODS[method].algorithm()
    return cls(upstream_cfg.hyperparameters[method], placement, batch_tasks=upstream_cfg.batch_tasks)


def second_order_context(backbone) -> contextlib.AbstractContextManager:
    """Double backward needs a differentiable attention and norm: eager attention, or SDPA's math
    backend, and the norms' composite formula (engine.compute.kernels.double_backward).

    PyTorch's fused SDPA kernels have no second derivative (CPU and CUDA), so
    MAML forces the math backend for its meta-updates; everything else keeps the
    fast kernels. Other implementations (flash-attention, ...) are refused.
    """
    from engine.compute import kernels

    impl = kernels.attention_implementation(backbone.model)
    if impl in ("eager", "sdpa", kernels.FUSED_SDPA):
        return kernels.double_backward()
    raise UpstreamError(f"second-order MAML needs eager or SDPA attention; model {backbone.name} uses "
                        f"'{impl}', which has no second derivative (use fomaml, or load it with eager attention)")


def check_second_order(backbone) -> None:
    second_order_context(backbone)  # raises before any training when MAML cannot run


@dataclass
class UpstreamResult:
    prompt: torch.Tensor
    steps: int
    last_loss: float


OnStep = Callable[[int, float], None]


def learn_initialisation(backbone, method: str, tasks: list[MetaTask], init_prompt: torch.Tensor, upstream_cfg,
                         *, placement: str, checkpoint: Path | None = None, on_step: OnStep | None = None,
                         should_stop: Callable[[], bool] | None = None,
                         on_message: Callable[[str], None] | None = None) -> UpstreamResult:
    """Run the method's outer updates (`upstream_cfg.steps`, or its own count) from `init_prompt`, resuming
    from `checkpoint`. With the backbone's dropout on, every pass of a meta-update (inner loop included)
    drops out, its masks drawn from a generator seeded with `upstream.seed` and checkpointed."""
    if method not in METHODS:
        raise UpstreamError(f"unknown algorithm '{method}' (known: {', '.join(METHODS)})")
    algorithm = make_algorithm(method, upstream_cfg, placement)
    sampler = MetaSampler(tasks, upstream_cfg.seed)
    prompt = init_prompt.detach().clone().float().to(backbone.device).requires_grad_(True)
    optimizer = make_outer_optimizer(upstream_cfg.outer_optimizer, [prompt], upstream_cfg.outer_lr,
                                     upstream_cfg.outer_weight_decay)
    dropout_rng = torch.Generator().manual_seed(upstream_cfg.seed)
    total = algorithm.total_steps(algorithm.hp, upstream_cfg.steps, tasks)
    start, loss = 0, float("nan")
    if checkpoint is not None and checkpoint.is_file():
        try:
            start, loss = _load_state(checkpoint, prompt, optimizer, sampler, dropout_rng)
        except CheckpointError as exc:  # this method starts over; nothing was changed yet
            if on_message:
                on_message(f"{exc}: upstream {method} restarts from meta-update 0")
    check_second_order(backbone) if algorithm.second_order else None
    for step in range(start + 1, total + 1):
        with second_order_context(backbone) if algorithm.second_order else contextlib.nullcontext(), \
                backbone.training(dropout_rng):
            grad, loss = algorithm.meta_gradient(backbone, prompt, sampler)
        optimizer.zero_grad(set_to_none=True)
        prompt.grad = grad.to(prompt.dtype)
        optimizer.step()
        if on_step:
            on_step(step, loss)
        faults.point("upstream.step")
        stop = should_stop is not None and should_stop() and step < total
        if checkpoint is not None and (step % upstream_cfg.checkpoint_every == 0 or step == total or stop):
            _save_state(checkpoint, prompt, optimizer, sampler, dropout_rng, step, loss)
        if stop:
            raise RunCancelled(f"stopped after meta-update {step}")
    return UpstreamResult(prompt.detach().cpu().clone(), total, loss)


def _load_state(path: Path, prompt, optimizer, sampler: MetaSampler, dropout_rng) -> tuple[int, float]:
    state = load_checkpoint(path)
    try:
        saved, step, loss = state["prompt"], int(state["step"]), float(state["loss"])
        if tuple(saved.shape) != tuple(prompt.shape):
            raise CheckpointError(f"checkpoint {path} holds a prompt of shape {tuple(saved.shape)}, this run's "
                                  f"is {tuple(prompt.shape)} (another model or prompt length)")
        optimizer_state, generator = state["optimizer"], state["generator"]
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint {path} lacks the upstream state ({type(exc).__name__}: {exc})") from None
    try:
        optimizer.load_state_dict(optimizer_state)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} holds another optimizer's state ({exc})") from None
    with torch.no_grad():
        prompt.copy_(saved.to(prompt.device))
    sampler.generator.set_state(generator)
    if "dropout_generator" in state:
        dropout_rng.set_state(state["dropout_generator"])
    return step, loss


def _save_state(path: Path, prompt, optimizer, sampler: MetaSampler, dropout_rng, step: int, loss: float) -> None:
    save_checkpoint(path, {"prompt": prompt.detach().cpu(), "optimizer": optimizer.state_dict(),
                           "generator": sampler.generator.get_state(), "dropout_generator": dropout_rng.get_state(),
                           "step": step, "loss": loss})
