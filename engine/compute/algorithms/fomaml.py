"""First-order MAML: MAML's loop without differentiating through the inner steps.

With track_higher_grads=False, higher leaves the initial prompt out of the
graph (its .grad stays empty), so the gradient used is the query gradient taken
at each task's adapted prompt (its row of the adapted bank), applied to the
initial prompt.
"""

from __future__ import annotations

import torch

from engine.compute.algorithms.maml import MAML


class FoMAML(MAML):
    second_order = False

    def _bank_gradient(self, query_loss, holder, fmodel) -> torch.Tensor:
        (g,) = torch.autograd.grad(query_loss, fmodel.prompt)  # at the adapted bank
        return g
