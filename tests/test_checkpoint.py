"""Checkpoint rounds (engine.store.checkpoint) when a save fails part-way."""

from __future__ import annotations

import errno

import pytest
import torch

from engine.store import checkpoint

from engine.base import durable


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


class _Disk:
    """A group's checkpoint files, where every rename, link and unlink of a save can be the process's last act
    (each one done is on the disk: fsync is skipped, which changes nothing in a test that never loses power)."""

    def __init__(self, tmp_path, monkeypatch, members: int = 3):
        import os

        self.dir = tmp_path
        self.paths = [tmp_path / f"job{j}.pt" for j in range(members)]
        self.real = {name: getattr(os, name) for name in ("replace", "link", "unlink", "rename")}
        self.n, self.crash_at = 0, None
        for name in self.real:
            monkeypatch.setattr(os, name, self._counted(name))
        monkeypatch.setattr(os, "fsync", lambda fd: None)

    def _counted(self, name):
        def op(*args, **kwargs):
            self.n += 1
            if self.crash_at is not None and self.n > self.crash_at:
                raise _Crash(f"{name} #{self.n}")
            return self.real[name](*args, **kwargs)
        return op

    def save(self, step: int, crash_at: int | None = None) -> int:
        """Save a round at `step`, dying after `crash_at` operations; the operations a whole save takes."""
        self.n, self.crash_at = 0, crash_at
        try:
            checkpoint.save_round([(p, {"step": step, "prompt": torch.full((2,), float(step))}) for p in self.paths])
        except _Crash:
            pass
        finally:
            self.crash_at = None
        return self.n

    def snapshot(self) -> dict:
        return {p.name: p.read_bytes() for p in self.dir.iterdir() if p.is_file()}

    def restore(self, files: dict) -> None:
        for p in self.dir.iterdir():
            if p.is_file():
                self.real["unlink"](p)
        for name, data in files.items():
            (self.dir / name).write_bytes(data)

    def resumed_step(self, allowed: tuple[int, ...], where) -> int:
        """The one step every member resumes after, each from a file that holds it."""
        steps = [checkpoint.resume_step(p) for p in self.paths]
        assert len(set(steps)) == 1 and steps[0] in allowed, (where, steps)
        for p in self.paths:
            resume = checkpoint.resume_path(p)
            held = checkpoint.load_checkpoint(resume)["step"] if resume is not None else 0
            assert held == steps[0], (where, p.name, held, steps)
        return steps[0]


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_a_crash_at_any_point_of_a_save_and_another_after_resuming_keep_the_group_on_one_round(
        tmp_path, monkeypatch, rounds):
    """Every rename, link and unlink of a round's save, in turn, is the process's last act; the group resumes
    (from the round the members agree on) and saves its next round, and every point of that save is its last
    act too. After each crash all members must resume from the same finished round, from files holding that
    round's step. (Found so: a crash between moving a member's file to .prev and renaming the new one into
    place left the member without a file, so it started over while its group resumed; and after a resume from
    .prev, the next save moved the unfinished file in place over the finished .prev.)"""
    disk = _Disk(tmp_path, monkeypatch)
    for step in range(1, rounds):  # the rounds saved before (the first round has no .prev to fall back on)
        disk.save(3 * step)
    before, last = disk.snapshot(), 3 * (rounds - 1)
    total = disk.save(3 * rounds)
    assert total >= 3 * 2
    for first in range(total + 1):
        disk.restore(before)
        disk.save(3 * rounds, crash_at=first)
        resumed = disk.resumed_step((last, 3 * rounds), ("first crash", first))
        after_first = disk.snapshot()
        second_total = disk.save(resumed + 3)
        for second in range(second_total + 1):
            disk.restore(after_first)
            disk.save(resumed + 3, crash_at=second)
            disk.resumed_step((last, resumed, resumed + 3), ("crashes", first, second))


def test_without_hard_links_the_previous_round_is_copied(tmp_path, monkeypatch):
    """Some network and FUSE file systems have no hard links: the file in place is then copied to .prev."""
    import errno
    import os

    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    paths = [tmp_path / f"job{j}.pt" for j in range(2)]
    checkpoint.save_round([(p, {"step": 3, "prompt": torch.zeros(2)}) for p in paths])
    monkeypatch.setattr(os, "link", no_links)
    checkpoint.save_round([(p, {"step": 6, "prompt": torch.ones(2)}) for p in paths])
    for p in paths:
        assert checkpoint.load_checkpoint(p)["step"] == 6 and checkpoint.saved_step(p) == 6
        previous = tmp_path / (p.stem + ".prev.pt")
        assert checkpoint.load_checkpoint(previous)["step"] == 3 and checkpoint.saved_step(previous) == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_removing_a_checkpoint_leaves_no_file_of_a_crashed_save_behind(tmp_path):
    path = tmp_path / "job0.pt"
    checkpoint.save_round([(path, {"step": 3, "prompt": torch.zeros(2)})])
    checkpoint.save_round([(path, {"step": 6, "prompt": torch.zeros(2)})])
    for leftover in ("job0.pt.tmp", "job0.pt.json.tmp", "job0.prev.pt.link.tmp", "job0.prev.json.link.tmp"):
        (tmp_path / leftover).write_bytes(b"partial")
    checkpoint.remove_checkpoint(path)
    assert list(tmp_path.iterdir()) == []
