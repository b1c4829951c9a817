"""Checkpoints of work in progress: an upstream method's meta-training, or one grid cell's job.

A checkpoint is a torch file replaced atomically (temporary file, then rename) with
a small JSON beside it that holds the step it was saved after, so progress can be
counted without unpickling anything. Importing this module does not import torch.
"""

from __future__ import annotations

import json
from pathlib import Path


def _step_file(path: Path) -> Path:
    return path.with_suffix(".json")


def save_checkpoint(path: Path, state: dict) -> None:
    """`state` must have a "step"; the .json beside it is written last, so it never runs ahead."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    step_tmp = path.with_name(path.name + ".json.tmp")
    step_tmp.write_text(json.dumps({"step": int(state["step"])}), encoding="utf-8")
    step_tmp.replace(_step_file(path))


def load_checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=False)


def saved_step(path: Path) -> int:
    """The step a checkpoint was saved after; 0 without one."""
    path = Path(path)
    if not path.is_file():
        return 0
    try:
        return int(json.loads(_step_file(path).read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):  # a checkpoint from before the .json: read it
        return int(load_checkpoint(path)["step"])


def remove_checkpoint(path: Path) -> None:
    Path(path).unlink(missing_ok=True)
    _step_file(Path(path)).unlink(missing_ok=True)
