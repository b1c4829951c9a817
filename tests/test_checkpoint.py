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


class _Crash(BaseException):
    """The process dies here (SIGKILL): nothing after this point happens."""


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_a_crash_at_any_point_of_a_rounds_save_resumes_every_member_from_one_round(tmp_path, monkeypatch, rounds):
    """Every renaming, linking and unlinking of a round's save, in turn, is the last thing the process does:
    each member must then resume from the same round, and its file must hold that round's step. (A crash
    between moving a member's file to .prev and renaming the new one into place left the member without
    a file: it started over while its group-mates resumed.)"""
    import os

    paths = [tmp_path / f"job{j}.pt" for j in range(3)]
    real = {name: getattr(os, name) for name in ("replace", "link", "unlink", "rename")}
    ops = {"n": 0, "crash_at": None}

    def counted(name):
        def op(*args, **kwargs):
            ops["n"] += 1
            if ops["crash_at"] is not None and ops["n"] > ops["crash_at"]:
                raise _Crash(f"{name} #{ops['n']}")
            return real[name](*args, **kwargs)
        return op

    def save(step):
        checkpoint.save_round([(p, {"step": step, "prompt": torch.full((2,), float(step))}) for p in paths])

    for name in real:
        monkeypatch.setattr(os, name, counted(name))
    for step in range(1, rounds):  # the rounds saved before (the first round has no .prev to fall back on)
        save(3 * step)
    saved_before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    ops["n"] = 0
    save(3 * rounds)
    total = ops["n"]
    assert total >= 3 * 2
    for crash_at in range(total + 1):
        for p in tmp_path.iterdir():  # back to the state before the round
            if p.is_file():
                real["unlink"](p)
        for name, data in saved_before.items():
            (tmp_path / name).write_bytes(data)
        ops["n"], ops["crash_at"] = 0, crash_at
        try:
            save(3 * rounds)
        except _Crash:
            pass
        ops["crash_at"] = None
        steps = [checkpoint.resume_step(p) for p in paths]
        assert len(set(steps)) == 1 and steps[0] in (3 * (rounds - 1), 3 * rounds), (crash_at, steps)
        for p in paths:
            resume = checkpoint.resume_path(p)
            held = checkpoint.load_checkpoint(resume)["step"] if resume is not None else 0
            assert held == steps[0], (crash_at, p.name, held, steps)
