"""Adafactor or AdamW over a bank of prompts [R, n, d], one independent optimizer per row.

A group of prompt-tuning jobs steps all its prompts with a handful of tensor
operations instead of R optimizer objects: every row keeps its own step count,
learning rate, weight decay, gradient-clipping norm and moment estimates, and
the arithmetic is that of `transformers.optimization.Adafactor` (the paper's
setting: fixed learning rate, no relative step, no parameter scaling, no first
moment) and `torch.optim.AdamW` applied to each row alone. A row's state can be
taken out and put back, so a job's checkpoint does not depend on its group.
"""

from __future__ import annotations

import math

import torch

OPTIMIZERS = ("adafactor", "adamw")

# Adafactor's defaults in transformers (eps, clip_threshold, decay_rate) and AdamW's in torch
_ADAFACTOR_EPS, _ADAFACTOR_CLIP, _ADAFACTOR_DECAY = 1e-30, 1.0, -0.8
_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8


class BankOptimizer:
    def __init__(self, name: str, bank: torch.Tensor, lr: list[float], weight_decay: list[float],
                 grad_clip: list[float]):
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r} (known: {', '.join(OPTIMIZERS)})")
        rows, n, d = bank.shape
        kw = {"device": bank.device, "dtype": torch.float32}
        self.name = name
        self.lr = torch.tensor(lr, **kw)
        self.weight_decay = torch.tensor(weight_decay, **kw)
        self.grad_clip = torch.tensor(grad_clip, **kw)
        self.steps = torch.zeros(rows, dtype=torch.long, device=bank.device)
        if name == "adafactor":
            self.state = {"exp_avg_sq_row": torch.zeros(rows, n, **kw), "exp_avg_sq_col": torch.zeros(rows, d, **kw)}
        else:
            self.state = {"exp_avg": torch.zeros(rows, n, d, **kw), "exp_avg_sq": torch.zeros(rows, n, d, **kw)}

    @torch.no_grad()
    def step(self, bank: torch.Tensor, rows: list[int]) -> None:
        """Clip each listed row's gradient to its own norm, then update those rows of `bank` in place."""
        if not rows:
            return
        idx = torch.tensor(rows, device=bank.device)
        grad = bank.grad[idx].float()
        clip = self.grad_clip[idx]
        # torch.nn.utils.clip_grad_norm_, per row (a clip of 0 means none)
        norm = grad.flatten(1).norm(dim=1)
        coef = torch.where(clip > 0, (clip / (norm + 1e-6)).clamp(max=1.0), torch.ones_like(norm))
        grad = grad * coef[:, None, None]
        self.steps[idx] += 1
        param = bank[idx].float()
        lr, wd = self.lr[idx][:, None, None], self.weight_decay[idx][:, None, None]
        state = {k: v[idx] for k, v in self.state.items()}
        steps = self.steps[idx].to(torch.float32)[:, None]
        if self.name == "adafactor":
            param, state = _adafactor(param, grad, state, steps, lr, wd)
        else:
            param, state = _adamw(param, grad, state, steps, lr, wd)
        bank[idx] = param.to(bank.dtype)
        for k, v in state.items():
            self.state[k][idx] = v

    def row_state(self, row: int) -> dict:
        return {"step": int(self.steps[row]), **{k: v[row].cpu().clone() for k, v in self.state.items()}}

    def load_row_state(self, row: int, saved: dict) -> None:
        if set(saved) != {"step", *self.state}:
            raise ValueError(f"optimizer state is not {self.name}'s (keys {sorted(saved)})")
        self.steps[row] = saved["step"]
        for k, v in self.state.items():
            v[row] = saved[k].to(v.device)


def _adafactor(param, grad, state, steps, lr, wd):
    beta2t = (1.0 - steps.double().pow(_ADAFACTOR_DECAY)).float()  # [r, 1]; float64 as transformers' math.pow
    update = grad * grad + _ADAFACTOR_EPS
    row = state["exp_avg_sq_row"] * beta2t + update.mean(dim=-1) * (1.0 - beta2t)
    col = state["exp_avg_sq_col"] * beta2t + update.mean(dim=-2) * (1.0 - beta2t)
    r_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
    c_factor = col.unsqueeze(-2).rsqrt()
    update = r_factor * c_factor * grad
    rms = update.flatten(1).norm(dim=1) / math.sqrt(update[0].numel())
    update = update / (rms / _ADAFACTOR_CLIP).clamp(min=1.0)[:, None, None]
    param = param - param * (wd * lr) - update * lr
    return param, {"exp_avg_sq_row": row, "exp_avg_sq_col": col}


def _adamw(param, grad, state, steps, lr, wd):
    beta1, beta2 = _ADAM_BETAS
    param = param * (1 - lr * wd)
    exp_avg = state["exp_avg"].lerp(grad, 1 - beta1)
    exp_avg_sq = state["exp_avg_sq"] * beta2 + grad * grad * (1 - beta2)
    steps = steps[:, :, None].double()  # 1 - 0.999**t loses digits in float32, as torch avoids too
    bias1 = (1 - beta1 ** steps).float()
    bias2_sqrt = (1 - beta2 ** steps).sqrt().float()
    denom = exp_avg_sq.sqrt() / bias2_sqrt + _ADAM_EPS
    param = param - (lr / bias1) * exp_avg / denom
    return param, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
