"""The vectorised per-row optimizer (engine.compute.bank_optim) equals one library optimizer per row."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("name", ["adafactor", "adamw"])
def test_bank_optimizer_steps_each_row_as_its_own_optimizer(name):
    """Rows with their own lr, weight decay and clipping, stepping at different times, match the library optimizers."""
    from engine.compute.bank_optim import BankOptimizer
    from engine.compute.tuning import make_optimizer

    gen = torch.Generator().manual_seed(0)
    init = torch.randn(3, 4, 6, generator=gen)
    lrs, decays, clips = [0.3, 0.1, 0.01], [1e-5, 0.0, 0.1], [1.0, 0.0, 0.5]
    bank = init.clone().requires_grad_(True)
    bank_opt = BankOptimizer(name, bank, lrs, decays, clips)
    alone = [init[r].clone().requires_grad_(True) for r in range(3)]
    opts = [make_optimizer(name, [p], lrs[r], decays[r]) for r, p in enumerate(alone)]
    for t in range(6):
        grad = torch.randn(3, 4, 6, generator=gen) * 3
        rows = [0, 2] if t % 2 else [0, 1, 2]  # row 1 sits out every other step
        bank.grad = grad.clone()
        bank_opt.step(bank, rows)
        for r in rows:
            alone[r].grad = grad[r].clone()
            if clips[r] > 0:
                torch.nn.utils.clip_grad_norm_([alone[r]], clips[r])
            opts[r].step()
    for r in range(3):
        torch.testing.assert_close(bank[r].detach(), alone[r].detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(bank[1].detach(), bank[0].detach())
