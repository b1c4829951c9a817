"""Named fault points, for the fault-injection suite (tests/faults/) and the soak script (bench/soak.py).

Off unless the environment variable MPT_TUI_FAULTS is set when the process starts, so production runs
pay one attribute test per point. Its value is `ACTION@POINT:N`: at the N-th time the process passes
POINT, do ACTION:

    kill    SIGKILL this process (no chance to clean up: a crash, a lost node, the OOM killer)
    term    SIGTERM this process (a cancel: the worker checkpoints and stops)
    enospc  raise OSError(ENOSPC) (a full disk); `enospc@write:N+` keeps failing from the N-th write on
    eio     raise OSError(EIO) (a failing disk), likewise

Points: `upstream.step` (after a meta-update), `tuning.step` (after a group's training pass),
`grid.record` (a cell tested, its record not yet stored), `checkpoint.write` (a checkpoint file written,
not yet renamed into place) and `write` (before any durable write: checkpoints, records, status, the index).
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "MPT_TUI_FAULTS"
ACTIONS = ("kill", "term", "enospc", "eio")


def _parse(spec: str | None):
    if not spec:
        return None
    action, _, rest = spec.partition("@")
    point, _, count = rest.partition(":")
    if action not in ACTIONS or not point or not count.rstrip("+").isdigit():
        raise ValueError(f"{ENV}={spec!r}: expected ACTION@POINT:N[+] with ACTION one of {', '.join(ACTIONS)}")
    return action, point, int(count.rstrip("+")), count.endswith("+")


_plan = _parse(os.environ.get(ENV))
_seen: dict[str, int] = {}


def point(name: str) -> None:
    """Pass fault point `name` (see the module docstring); nothing happens unless a fault is planned here."""
    if _plan is None or _plan[1] != name:
        return
    action, _, at, onwards = _plan
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] < at or (_seen[name] > at and not onwards):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    else:
        code = errno.ENOSPC if action == "enospc" else errno.EIO
        raise OSError(code, os.strerror(code) + f" (injected at {name} #{_seen[name]})")
