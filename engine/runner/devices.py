"""The run queue: one run per device at a time, by file locks in the runs root.

Each device (`cpu`, `cuda:0`, `cuda:1`, ...) has a lock file under
`<runs>/.devices/`. A worker takes the first free device among those it may use
and holds the lock until it exits; the operating system releases the lock of a
process that dies, so a crashed run never blocks the queue. Runs waiting for a
device stay `queued`, with a heartbeat, in the order the locks are granted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from engine.base.hardware import visible_gpus


def candidate_devices(requested: str, ask_torch: bool = True) -> list[str]:
    """`auto`: every visible GPU, else the CPU; anything else names one device (or a comma-separated list).
    `ask_torch=False`: GPUs as nvidia-smi sees them, without loading torch (engine.base.hardware)."""
    if requested != "auto":
        return [d.strip() for d in requested.split(",") if d.strip()]
    return [f"cuda:{i}" for i in range(len(visible_gpus(ask_torch)))] or ["cpu"]


def device_lock_path(runs_root: Path, device: str) -> Path:
    return Path(runs_root) / ".devices" / f"{device.replace(':', '-')}.lock"


def lock_held(path: Path) -> bool:
    """Whether a live process holds the file lock at `path`: checked without waiting, without keeping it,
    and without creating the file."""
    if not Path(path).exists():
        return False
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def acquire_device(runs_root: Path, candidates: list[str], on_wait: Callable[[], None] | None = None,
                   poll_s: float = 2.0) -> tuple[str, FileLock]:
    """Block until one of `candidates` is free; return it with its held lock."""
    (Path(runs_root) / ".devices").mkdir(exist_ok=True)
    locks = [(device, FileLock(str(device_lock_path(runs_root, device)))) for device in candidates]
    while True:
        for device, lock in locks:
            try:
                lock.acquire(timeout=0)
                return device, lock
            except Timeout:
                continue
        if on_wait:
            on_wait()
        time.sleep(poll_s)
