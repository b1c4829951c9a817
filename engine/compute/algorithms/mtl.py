"""Multi-task learning (MTL): one prompt trained on the union of the source tasks.

Each step draws a batch from the pooled train examples (and dev examples, with
`use_dev`, as the authors' MTL) of all (task, seed) meta-tasks; the gradient is
the plain loss gradient. With `epochs`, the number of steps is that many passes
over the pool (batches are still drawn at random, not as epoch permutations).
"""

from __future__ import annotations

import torch

from engine.compute.algorithms.base import Algorithm, MetaSampler, MetaTask, batch_loss
from engine.experiment.data import Example


class MTL(Algorithm):
    @staticmethod
    def pool(hp, tasks: list[MetaTask]) -> list[Example]:
        return [e for task in tasks for e in task.train + (task.dev if hp.use_dev else [])]

    @classmethod
    def total_steps(cls, hp, steps: int, tasks: list[MetaTask]) -> int:
        return hp.outer_steps(steps, [(len(t.train), len(t.dev)) for t in tasks])

    def meta_gradient(self, backbone, prompt, sampler: MetaSampler):
        pool = self.pool(self.hp, sampler.tasks)  # rebuilt each step: algorithms hold no state
        examples = sampler.batch(pool, self.hp.batch_size)
        p = prompt.detach().clone().requires_grad_(True)
        loss = batch_loss(backbone, p, examples, self.placement)
        (g,) = torch.autograd.grad(loss, p)
        return g, float(loss.detach())
