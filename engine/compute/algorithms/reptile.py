"""Reptile (Nichol et al. 2018): move the initial prompt towards the task-adapted one.

Per task: `inner_steps` SGD steps, each on a fresh support batch of its train
split; the pseudo-gradient (theta - theta') / inner_lr, averaged over the
meta-batch, is handed to the outer optimizer: the authors' formula
(run_reptile_ddp_prompt.py), which under SGD is the sum of the inner gradients.
With `pseudo_gradient = "difference"` it is theta - theta' (plain SGD then moves
the prompt by lr_outer * (theta' - theta)). Adafactor, scale-invariant, takes the
same step from either. The tasks adapt together, one row of a prompt bank
each (see `engine.compute.algorithms.base`); the loss logged is the mean support loss.
"""

from __future__ import annotations

import torch

from engine.compute.algorithms.base import Algorithm, MetaSampler, draw_batches


class Reptile(Algorithm):
    def meta_gradient(self, backbone, prompt, sampler: MetaSampler):
        tasks = sampler.meta_batch(self.hp.tasks_per_step)
        batches = draw_batches(sampler, tasks, self.hp, with_query=False)
        theta = prompt.detach()
        pseudo_grad = torch.zeros_like(theta)
        total_loss = 0.0
        for chunk in self.chunks(batches):
            with self.adapted(backbone, theta, chunk, track_higher_grads=False) as (_, fmodel, losses):
                adapted = fmodel.prompt.detach()
            pseudo_grad += self.combine((theta - adapted).sum(dim=0), len(tasks))
            for loss in losses.t().flatten().tolist():  # task by task, as the per-task loop summed them
                total_loss += loss / (len(tasks) * self.hp.inner_steps)
        if self.hp.pseudo_gradient == "scaled":
            pseudo_grad = pseudo_grad / self.hp.inner_lr
        return pseudo_grad, total_loss
