"""Checkpoints of work in progress: an upstream method's meta-training, or one grid cell's job.

A checkpoint is a torch file replaced atomically (temporary file, then rename) with
a small JSON beside it that holds the step it was saved after, so progress can be
counted without unpickling anything. Importing this module does not import torch.

The jobs of a multi-prompt group are saved together, one file each, as a *round*
(`save_round`): each file's JSON names the round and all its member files, and the
previous round's file is kept as `<name>.prev.pt`. A worker killed halfway through a
round leaves some members new and some old; `resume_path` then sends the new ones
back to their previous file, so a group always resumes from one consistent round
(its float rounding depends on all its members being at the same step). A member's file
and step file are copied to .prev (hard links) before the new ones replace them, so at
every instant of a save the member has a whole (file, step file) pair; and a file in
place that the member did not resume from (an unfinished round) never becomes .prev.
So a crash at any point, also a second one after resuming, resumes the whole group from
one finished round (tests/test_checkpoint.py tries every pair of points).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from engine.base import durable

from engine.base import faults


def _step_file(path: Path) -> Path:
    return path.with_suffix(".json")


def _prev(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded (damaged, not ours, or holding more than tensors and plain data)."""


def save_checkpoint(path: Path, state: dict, round_info: dict | None = None, keep_previous: bool = True) -> None:
    """`state` (tensors and plain data only: it is loaded with weights_only) must have a "step"; the .json
    beside it is written last, so it never runs ahead. In a round, the file in place becomes the .prev one
    when `keep_previous` (it is the round the member resumed from); otherwise .prev is kept as it is."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    durable.write_synced(tmp, lambda f: torch.save(state, f))
    faults.point("checkpoint.write")
    if round_info is not None:
        if keep_previous and path.is_file():  # keep the previous round to fall back on
            # Copied (hard links), not moved: the file stays in place with its step file until the .prev pair
            # is whole, so a crash at any point leaves the member on a round it can resume from.
            _link_over(path, _prev(path))
            if _step_file(path).is_file():
                _link_over(_step_file(path), _step_file(_prev(path)))
        _step_file(path).unlink(missing_ok=True)  # from here on the member's round is its .prev
    tmp.replace(path)
    step_tmp = path.with_name(path.name + ".json.tmp")
    info = json.dumps({"step": int(state["step"]), **(round_info or {})}).encode("utf-8")
    durable.write_synced(step_tmp, lambda f: f.write(info))
    durable.replace(step_tmp, _step_file(path))


def _link_over(source: Path, target: Path) -> None:
    """`target` becomes a copy of `source` in one rename: a hard link, or a byte copy where the file system
    has none (some network and FUSE mounts)."""
    tmp = target.with_name(target.name + ".link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
        durable.sync_file(tmp)
    os.replace(tmp, target)


def save_round(states: list[tuple[Path, dict]]) -> None:
    """Save the checkpoints of a group's jobs as one round (see the module docstring)."""
    info = {"round": uuid.uuid4().hex, "members": [str(path) for path, _ in states]}
    # A member's file in place is the previous round only if it is what the member resumes from: after a
    # crash the group may have resumed from .prev, and the file in place is then an unfinished round, which
    # must not replace the finished one in .prev (asked for every member before any is saved).
    resumed_from_file = [resume_path(path) == Path(path) for path, _ in states]
    for (path, state), keep in zip(states, resumed_from_file):
        save_checkpoint(path, state, info, keep_previous=keep)


def _round_of(path: Path) -> dict:
    try:
        return json.loads(_step_file(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def resume_path(path: Path) -> Path | None:
    """The checkpoint a job resumes from: its file, or the previous round's when its round is incomplete."""
    path = Path(path)
    if not path.is_file():
        return None
    info = _round_of(path)
    if not info:  # its step file never got written (the save failed after the rename): the file belongs
        return _prev(path) if _prev(path).is_file() else None  # to no finished round; none before it: start over
    members = [Path(m) for m in info.get("members", [])]
    # a round is whole when every member holds it, as its file or (having moved on) as its .prev
    if all(info["round"] in (_round_of(m).get("round"), _round_of(_prev(m)).get("round")) for m in members):
        return path
    return _prev(path) if _prev(path).is_file() else None  # the first round was cut: start over


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's state. Only tensors and plain data are read (`weights_only`): a tampered file in a
    shared runs directory cannot run code here; anything else is a CheckpointError naming the file."""
    import torch

    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # unpickling errors, truncation, a file that is not a torch file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({reason[:200]})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of this project (no step)")
    return state


def saved_step(path: Path) -> int:
    """The step a checkpoint was saved after; 0 without one."""
    path = Path(path)
    if not path.is_file():
        return 0
    try:
        return int(json.loads(_step_file(path).read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):  # a checkpoint from before the .json: read it
        try:
            return int(load_checkpoint(path)["step"])
        except CheckpointError:
            return 0  # unreadable: its job starts over


def resume_step(path: Path) -> int:
    """The step a job resumes after (0: from the start): its consistent round's step."""
    resume = resume_path(path)
    return saved_step(resume) if resume is not None else 0


def remove_checkpoint(path: Path) -> None:
    path = Path(path)
    for p in (path, _prev(path)):
        for file in (p, _step_file(p)):
            file.unlink(missing_ok=True)
            file.with_name(file.name + ".link.tmp").unlink(missing_ok=True)  # left by a crash mid-save
    for suffix in (".tmp", ".json.tmp"):  # likewise (save_checkpoint's temporary files)
        path.with_name(path.name + suffix).unlink(missing_ok=True)
