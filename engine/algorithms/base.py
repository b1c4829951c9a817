"""What every upstream algorithm shares: meta-tasks, their seeded sampling, the prompt holder.

An algorithm turns one sampled meta-batch into a gradient for the initial
prompt (a true meta-gradient, or a pseudo-gradient such as Reptile's
theta - theta'); `engine.upstream` owns the outer optimizer, logging and
checkpoints, so the algorithms hold no state between steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.data import Example


@dataclass
class MetaTask:
    """A (source task, seed split) pair: support batches from train, query batches from dev."""

    task: str
    seed: int
    train: list[Example]
    dev: list[Example]

    @property
    def name(self) -> str:
        return f"{self.task}/s{self.seed}"


class MetaSampler:
    """All randomness of the upstream stage, from one seeded generator (its state is checkpointed)."""

    def __init__(self, tasks: list[MetaTask], seed: int):
        if not tasks:
            raise ValueError("no meta-tasks: the setting's source list is empty")
        self.tasks = tasks
        self.generator = torch.Generator().manual_seed(seed)

    def meta_batch(self, size: int) -> list[MetaTask]:
        """`size` distinct meta-tasks (fewer if there are fewer tasks)."""
        order = torch.randperm(len(self.tasks), generator=self.generator)[: min(size, len(self.tasks))]
        return [self.tasks[i] for i in order.tolist()]

    def batch(self, examples: list[Example], size: int) -> list[Example]:
        """`size` distinct examples (with replacement only if the split is smaller)."""
        if size <= len(examples):
            idx = torch.randperm(len(examples), generator=self.generator)[:size]
        else:
            idx = torch.randint(len(examples), (size,), generator=self.generator)
        return [examples[i] for i in idx.tolist()]


class PromptHolder(nn.Module):
    """The only module `higher` patches: it holds the prompt, never the frozen language model."""

    def __init__(self, prompt: torch.Tensor):
        super().__init__()
        self.prompt = nn.Parameter(prompt)

    def forward(self) -> torch.Tensor:
        return self.prompt


def batch_loss(backbone, prompt: torch.Tensor, examples: list[Example], placement: str) -> torch.Tensor:
    return backbone.loss(prompt, [e.input for e in examples], [e.output for e in examples], placement)


class Algorithm:
    """One upstream method; `meta_gradient` returns the gradient for the initial prompt and the loss to log."""

    name = ""
    second_order = False

    def __init__(self, hp, placement: str = "before"):
        self.hp = hp
        self.placement = placement

    def meta_gradient(self, backbone, prompt: torch.Tensor, sampler: MetaSampler) -> tuple[torch.Tensor, float]:
        raise NotImplementedError
