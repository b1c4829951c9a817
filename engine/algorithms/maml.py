"""MAML (Finn et al. 2017) over the soft prompt, second order, with `higher`.

Per task of the meta-batch: `inner_steps` SGD steps on support batches of its
train split, then the query loss on a dev batch at the adapted prompt; the
meta-gradient flows back through the inner loop into the initial prompt and is
averaged over the meta-batch.
"""

from __future__ import annotations

import higher
import torch

from engine.algorithms.base import Algorithm, MetaSampler, PromptHolder, batch_loss


class MAML(Algorithm):
    name = "maml"
    second_order = True

    def meta_gradient(self, backbone, prompt, sampler: MetaSampler):
        hp = self.hp
        tasks = sampler.meta_batch(hp.tasks_per_step)
        holder = PromptHolder(prompt.detach().clone())
        total_loss = 0.0
        grad = torch.zeros_like(prompt)
        for task in tasks:
            inner_opt = torch.optim.SGD(holder.parameters(), lr=hp.inner_lr)
            # copy_initial_weights=False: the patched module starts from holder.prompt itself,
            # so gradients reach it; track_higher_grads=False makes the loop first order.
            with higher.innerloop_ctx(holder, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=self.second_order) as (fmodel, diffopt):
                for _ in range(hp.inner_steps):
                    support = sampler.batch(task.train, hp.support_batch)
                    diffopt.step(batch_loss(backbone, fmodel.prompt, support, self.placement))
                query = sampler.batch(task.dev, hp.query_batch)
                query_loss = batch_loss(backbone, fmodel.prompt, query, self.placement)
                grad += self._task_gradient(query_loss, holder, fmodel) / len(tasks)
                total_loss += float(query_loss.detach()) / len(tasks)
        return grad, total_loss

    def _task_gradient(self, query_loss, holder, fmodel) -> torch.Tensor:
        (g,) = torch.autograd.grad(query_loss, holder.prompt)
        return g
