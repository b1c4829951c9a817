"""Checkpoint rounds (engine.checkpoint) when a save fails part-way."""

from __future__ import annotations

import errno

import pytest
import torch

from engine import checkpoint, durable


def test_a_save_that_fails_after_the_rename_leaves_the_member_on_its_previous_round(tmp_path, monkeypatch):
    """Found by bench/soak.py: ENOSPC on a member's step file, after its new .pt was renamed into place,
    left a file of no finished round that resume took as current: that job resumed 3 steps ahead of its
    group. It must resume from its previous round, like the members the failed round never reached."""
    paths = [tmp_path / f"job{j}.pt" for j in range(3)]
    checkpoint.save_round([(p, {"step": 3, "prompt": torch.zeros(2)}) for p in paths])
    real = durable.write_synced

    def full_disk_on_step_files(path, write):
        if str(path).endswith(".json.tmp") and "job0" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(durable, "write_synced", full_disk_on_step_files)
    with pytest.raises(OSError):
        checkpoint.save_round([(p, {"step": 6, "prompt": torch.ones(2)}) for p in paths])
    assert checkpoint.load_checkpoint(paths[0])["step"] == 6  # the new file is in place, its step file is not
    assert [checkpoint.resume_step(p) for p in paths] == [3, 3, 3]
    assert checkpoint.resume_path(paths[0]) == tmp_path / "job0.prev.pt"
