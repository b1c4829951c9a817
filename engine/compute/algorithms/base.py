"""What every upstream algorithm shares: meta-tasks, their seeded sampling, the prompt holder.

An algorithm turns one sampled meta-batch into a gradient for the initial
prompt (a true meta-gradient, or a pseudo-gradient such as Reptile's
theta - theta'); `engine.compute.upstream` owns the outer optimizer, logging and
checkpoints, so the algorithms hold no state between steps.

The inner-loop methods run the tasks of a meta-batch together: the holder's
parameter is a bank [T, n, d] of per-task copies of the prompt, every
forward/backward covers all T tasks (row t reading task t's examples), and the
inner step minimises the sum of the per-task losses, so with SGD each row
follows exactly its own task's gradient. With `batch_tasks=False` the same code
runs on chunks of one task (less memory, one pass per task).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import higher
import torch
from torch import nn

from engine.experiment.data import Example


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
    """The only module `higher` patches: it holds the prompt bank [T, n, d], never the frozen language model."""

    def __init__(self, bank: torch.Tensor):
        super().__init__()
        self.prompt = nn.Parameter(bank)

    def forward(self) -> torch.Tensor:
        return self.prompt


def batch_loss(backbone, prompt: torch.Tensor, examples: list[Example], placement: str) -> torch.Tensor:
    return backbone.loss(prompt, [e.input for e in examples], [e.output for e in examples], placement)


def task_losses(backbone, bank: torch.Tensor, batches: list[list[Example]], placement: str) -> torch.Tensor:
    """Each task's token-averaged loss [T], bank row t scoring batch t, all in one forward pass."""
    if len(batches) == 1:  # the plain path: a one-task chunk gives exactly an unbatched run's numbers
        return batch_loss(backbone, bank[0], batches[0], placement)[None]
    examples = [e for batch in batches for e in batch]
    owner = torch.repeat_interleave(torch.arange(len(batches)), torch.tensor([len(b) for b in batches]))
    totals = backbone.token_totals(bank, [e.input for e in examples], [e.output for e in examples], placement,
                                   owner=owner)
    owner = owner.to(totals.nll.device)
    nll = totals.nll.new_zeros(len(batches)).index_add(0, owner, totals.nll)
    tokens = totals.tokens.new_zeros(len(batches)).index_add(0, owner, totals.tokens)
    return nll / tokens.clamp(min=1)


@dataclass
class TaskBatches:
    """What one task of a meta-batch sees: a support batch per inner step, then (MAML) a query batch."""

    supports: list[list[Example]]
    query: list[Example] | None


def draw_batches(sampler: MetaSampler, tasks: list[MetaTask], hp, with_query: bool) -> list[TaskBatches]:
    """Every batch of the meta-batch, drawn up front in the order of the per-task loop
    (task by task: its support batches, then its query), so batching never changes the sample."""
    out = []
    for task in tasks:
        supports = [sampler.batch(task.train, hp.support_batch) for _ in range(hp.inner_steps)]
        query = sampler.batch(task.dev, hp.query_batch) if with_query else None
        out.append(TaskBatches(supports, query))
    return out


class Algorithm:
    """One upstream method; `meta_gradient` returns the gradient for the initial prompt and the loss to log."""

    second_order = False  # differentiates through the inner loop (the registry declares it too; a test checks)

    def __init__(self, hp, placement: str = "before", batch_tasks: bool = True):
        self.hp = hp
        self.placement = placement
        self.batch_tasks = batch_tasks

    def meta_gradient(self, backbone, prompt: torch.Tensor, sampler: MetaSampler) -> tuple[torch.Tensor, float]:
        raise NotImplementedError

    @classmethod
    def total_steps(cls, hp, steps: int, tasks: list[MetaTask]) -> int:
        """Outer updates the method makes with hyperparameters `hp` (the settings' own rule, torch-free)."""
        return hp.outer_steps(steps, [(len(t.train), len(t.dev)) for t in tasks])

    def combine(self, per_task: torch.Tensor, n_tasks: int) -> torch.Tensor:
        """The meta-batch's gradient from the sum of its tasks' gradients (`task_reduction`)."""
        return per_task if getattr(self.hp, "task_reduction", "mean") == "sum" else per_task / n_tasks

    def chunks(self, batches: list[TaskBatches]) -> list[list[TaskBatches]]:
        """All tasks in one chunk, or one task per chunk when `batch_tasks` is off."""
        return [batches] if self.batch_tasks else [[b] for b in batches]

    @contextmanager
    def adapted(self, backbone, prompt: torch.Tensor, chunk: list[TaskBatches], track_higher_grads: bool):
        """`inner_steps` SGD steps of every task in `chunk` on its own prompt row, with `higher`.

        Yields (holder, fmodel, support losses [inner_steps, T]): holder.prompt is the initial bank
        (copy_initial_weights=False keeps it in the graph, so second-order gradients reach it),
        fmodel.prompt the adapted one. track_higher_grads=False makes the loop first order.
        """
        holder = PromptHolder(prompt.detach().repeat(len(chunk), 1, 1))
        inner_opt = torch.optim.SGD(holder.parameters(), lr=self.hp.inner_lr)
        with higher.innerloop_ctx(holder, inner_opt, copy_initial_weights=False,
                                  track_higher_grads=track_higher_grads) as (fmodel, diffopt):
            losses = []
            for step in range(self.hp.inner_steps):
                loss = task_losses(backbone, fmodel.prompt, [b.supports[step] for b in chunk], self.placement)
                # a sum, not a mean: row t's gradient is then task t's own, as in a per-task loop
                diffopt.step(loss.sum())
                losses.append(loss.detach())
            yield holder, fmodel, torch.stack(losses)
