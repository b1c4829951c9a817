"""MAML (Finn et al. 2017) over the soft prompt, second order, with `higher`.

Per task of the meta-batch: `inner_steps` SGD steps on support batches of its
train split, then the query loss on a dev batch at the adapted prompt; the
meta-gradient flows back through the inner loop into the initial prompt and is
summed over the meta-batch (the authors' dev_loss.backward() per task) or averaged
(`task_reduction`). The tasks run together on a prompt bank (one row
per task, see `engine.compute.algorithms.base`); since the initial bank is the prompt
repeated, the meta-gradient is the sum of its rows' gradients.
"""

from __future__ import annotations

import torch

from engine.compute.algorithms.base import Algorithm, MetaSampler, draw_batches, task_losses


class MAML(Algorithm):
    second_order = True

    def meta_gradient(self, backbone, prompt, sampler: MetaSampler):
        tasks = sampler.meta_batch(self.hp.tasks_per_step)
        batches = draw_batches(sampler, tasks, self.hp, with_query=True)
        grad = torch.zeros_like(prompt)
        total_loss = 0.0
        for chunk in self.chunks(batches):
            with self.adapted(backbone, prompt, chunk, track_higher_grads=self.second_order) as (holder, fmodel, _):
                query_losses = task_losses(backbone, fmodel.prompt, [b.query for b in chunk], self.placement)
                # the sum: each row's gradient is its own task's; summing rows gives the prompt's
                grad += self.combine(self._bank_gradient(query_losses.sum(), holder, fmodel).sum(dim=0), len(tasks))
            for loss in query_losses.detach().tolist():
                total_loss += loss / len(tasks)
        return grad, total_loss

    def _bank_gradient(self, query_loss, holder, fmodel) -> torch.Tensor:
        (g,) = torch.autograd.grad(query_loss, holder.prompt)  # through the inner loop to the initial bank
        return g
