"""Controlling runs from outside: start in the background, resume, cancel, delete.

`launch` starts `python -m engine.runner.lifecycle RUN_DIR` in a new session (setsid), so a
closed app, a lost SSH connection or a crashed app never stops training; the
worker writes only to its run directory; launching a crashed, cancelled or failed
run resumes it (`resume_refusal` says why another run cannot be). `cancel` asks it
to checkpoint and stop. `delete_run` removes a run that no worker owns, and its
index entry. The `mpt-tui` commands (resume, cancel, delete) and the app's Runs
screen go through these.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from engine.store.run_dir import ACTIVE_STATES, Run, RunsDirError, pid_alive
from engine.store.index import RunIndex


def worker_command(run: Run) -> list[str]:
    return [sys.executable, "-m", "engine.runner.lifecycle", str(run.path)]


def launch(run: Run) -> int:
    """Start (or resume) the run detached; return the worker's pid."""
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    # The worker starts with SIGTERM blocked (a signal mask survives fork and exec) and unblocks it once its
    # handler is installed: a cancel right after the launch is then a clean cancel, not a killed worker.
    # pthread_sigmask touches this thread only, so the app's other threads are unaffected.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        with open(run.log_path, "ab") as log:
            proc = subprocess.Popen(worker_command(run), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True, env=env, cwd=str(run.path))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    run.update_status(state="queued", pid=proc.pid, launched=time.time(), heartbeat=time.time())
    return proc.pid


def resume_refusal(run: Run) -> str | None:
    """Why the run cannot be resumed now (None: it can: crashed, cancelled or failed)."""
    from engine.runner.lifecycle import run_locked

    state = run.status()["state"]
    if run_locked(run):  # a live worker holds it, whatever its status file says
        return f"run {run.id} is being run by a worker (pid {run.status().get('pid', '?')}): it cannot be resumed"
    if state in ACTIVE_STATES:
        return f"run {run.id} is {state}: only a crashed, cancelled or failed run is resumed"
    if state == "finished":
        return f"run {run.id} is finished: nothing to resume"
    if state == "damaged":
        return f"run {run.id}: {run.status_path} is missing or damaged"
    return None


def cancel(run: Run) -> bool:
    """Ask the run's worker to checkpoint and stop (SIGTERM); False when no live worker was found."""
    status = run.status()
    pid = status.get("pid")
    if status.get("state") not in ACTIVE_STATES or not pid_alive(pid):
        return False
    try:
        os.kill(int(pid), signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def delete_run(run: Run) -> None:
    """Remove the run directory and its index entry; a run a worker still owns is refused (cancel it first)."""
    state = run.status()["state"]
    if state in ACTIVE_STATES:
        raise RunsDirError(f"run {run.id} is {state}: cancel it first")
    RunIndex(run.path.parent).remove(run.id)  # first: an index entry without a directory would mislead
    shutil.rmtree(run.path)
