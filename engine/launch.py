"""Starting and stopping runs in the background, apart from any terminal or app.

`launch` starts `python -m engine.worker RUN_DIR` in a new session (setsid), so a
closed app, a lost SSH connection or a crashed app never stops training; the
worker writes only to its run directory. `cancel` asks it to checkpoint and stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from engine.runs import Run, pid_alive


def worker_command(run: Run) -> list[str]:
    return [sys.executable, "-m", "engine.worker", str(run.path)]


def launch(run: Run) -> int:
    """Start (or resume) the run detached; return the worker's pid."""
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    with open(run.log_path, "ab") as log:
        proc = subprocess.Popen(worker_command(run), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True, env=env, cwd=str(run.path))
    run.update_status(state="queued", pid=proc.pid, launched=time.time(), heartbeat=time.time())
    return proc.pid


def cancel(run: Run) -> bool:
    """Ask the run's worker to checkpoint and stop (SIGTERM); False when no live worker was found."""
    status = run.status()
    pid = status.get("pid")
    if status.get("state") not in ("running", "queued") or not pid_alive(pid):
        return False
    try:
        os.kill(int(pid), signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True
