"""Multi-task learning (MTL): one prompt trained on the union of the source tasks.

Each step draws a batch from the pooled train examples of all (task, seed)
meta-tasks; the gradient is the plain loss gradient.
"""

from __future__ import annotations

import torch

from engine.algorithms.base import Algorithm, MetaSampler, batch_loss


class MTL(Algorithm):
    def meta_gradient(self, backbone, prompt, sampler: MetaSampler):
        pool = [e for task in sampler.tasks for e in task.train]  # rebuilt each step: algorithms hold no state
        examples = sampler.batch(pool, self.hp.batch_size)
        p = prompt.detach().clone().requires_grad_(True)
        loss = batch_loss(backbone, p, examples, self.placement)
        (g,) = torch.autograd.grad(loss, p)
        return g, float(loss.detach())
