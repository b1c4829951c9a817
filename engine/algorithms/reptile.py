"""Reptile (Nichol et al. 2018): move the initial prompt towards the task-adapted one.

Per task: `inner_steps` SGD steps, each on a fresh support batch of its train
split; the pseudo-gradient theta - theta' (averaged over the meta-batch) is
handed to the outer optimizer, so plain SGD moves the prompt by
lr_outer * (theta' - theta).
"""

from __future__ import annotations

import higher
import torch

from engine.algorithms.base import Algorithm, MetaSampler, PromptHolder, batch_loss


class Reptile(Algorithm):
    name = "reptile"

    def meta_gradient(self, backbone, prompt, sampler: MetaSampler):
        hp = self.hp
        tasks = sampler.meta_batch(hp.tasks_per_step)
        theta = prompt.detach()
        holder = PromptHolder(theta.clone())
        pseudo_grad = torch.zeros_like(theta)
        total_loss = 0.0
        for task in tasks:
            inner_opt = torch.optim.SGD(holder.parameters(), lr=hp.inner_lr)
            with higher.innerloop_ctx(holder, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=False) as (fmodel, diffopt):
                for _ in range(hp.inner_steps):
                    support = sampler.batch(task.train, hp.support_batch)
                    loss = batch_loss(backbone, fmodel.prompt, support, self.placement)
                    diffopt.step(loss)
                    total_loss += float(loss.detach()) / (len(tasks) * hp.inner_steps)
                adapted = fmodel.prompt.detach()
            pseudo_grad += (theta - adapted) / len(tasks)
        return pseudo_grad, total_loss
