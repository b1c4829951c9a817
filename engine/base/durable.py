"""Writes that survive a crash or a power loss: written to a temporary file, flushed to the disk
(fsync), renamed over the target, and the directory entry synced. Every record that matters goes
through here: cell records, results, status changes, prompts, checkpoints. Torch-free."""

from __future__ import annotations

import os
from pathlib import Path

from engine.base import faults


def write_synced(path: Path, write) -> None:
    """`write(file)` into `path` (binary), flushed to the disk before returning."""
    faults.point("write")
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def sync_file(path: Path) -> None:
    """Flush a file another library wrote (by name) to the disk."""
    faults.point("write")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: Path) -> None:
    """Make the renames in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(tmp: Path, path: Path) -> None:
    """Rename a flushed temporary file over `path` and sync the directory."""
    os.replace(tmp, path)
    sync_dir(Path(path).parent)


def write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_synced(tmp, lambda f: f.write(data))
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temporary file behind
        raise
    replace(tmp, path)
