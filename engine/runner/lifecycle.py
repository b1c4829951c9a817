"""The one entry point that runs (or resumes) whatever a run directory describes.

    python -m engine.runner.lifecycle <run-dir>

This module is a run's lifecycle: status and heartbeat, the device lock, signals,
the log, the index record. A preset with `[cluster] backend = "ray"` takes no
device lock here: this process becomes the Ray driver (engine.execution.cluster), its
units run on the cluster's workers, and it alone writes the run directory. The
work itself (units, the executor, the order of a run) is `engine.execution.grid`,
imported with torch only once a device is held, so importing this module
stays torch-free. The headless CLI calls `execute()`
in-process with a progress reporter; the app and any queue start this module as
a detached process. Either way the run's progress reaches readers only through
its directory (status.json, metrics.jsonl), and a finished grid cell is never
recomputed.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Protocol

from engine.experiment.config import preset_from_dict
from engine.runner.devices import acquire_device, candidate_devices, lock_held
from engine.experiment.methods import needs_second_order
from engine.experiment.plan import Plan
from engine.store.run_dir import Run, read_json
from engine.base.stopping import RunCancelled, StopFlag
from engine.store.index import RunIndex

HEARTBEAT_EVERY_S = 10.0
STATUS_EVERY_S = 2.0


class Reporter(Protocol):
    def start(self, total_steps: int, done_steps: int) -> None: ...
    def advance(self, done_steps: int, text: str) -> None: ...
    def message(self, text: str) -> None: ...
    def workers(self, cluster: dict) -> None: ...  # a Ray run: what each worker runs now (status.json's `cluster`)


class _Silent:
    def start(self, total_steps, done_steps): pass
    def advance(self, done_steps, text): pass
    def message(self, text): pass
    def workers(self, cluster): pass


class StatusWriter:
    """Owns status.json for the running process; a heartbeat thread keeps it fresh."""

    def __init__(self, run: Run):
        self.run = run
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")

    def set(self, force: bool = True, **fields) -> None:
        with self._lock:
            now = time.time()
            if not force and now - self._last_write < STATUS_EVERY_S:
                return
            self._last_write = now
            self.run.update_status(heartbeat=now, **fields)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY_S):
            self.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def _logger(run: Run) -> logging.Logger:
    logger = logging.getLogger(f"mpt.run.{run.id}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = logging.FileHandler(run.log_path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger


def _first_start(run: Run) -> bool:
    """No worker has taken this run up yet (status.json has neither the plan's warnings nor a start time)."""
    status = read_json(run.status_path)
    status = status if isinstance(status, dict) else {}
    return "warnings" not in status and "started" not in status




RUN_LOCK = "worker.lock"


class RunLocked(RuntimeError):
    """Another worker is running this run (it holds the run's lock)."""


def hold_run_lock(run: Run):
    """The run's OS file lock, taken without waiting: one worker per run directory. The OS releases it when
    the process dies, so a crashed worker never leaves a run locked."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(run.path / RUN_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        pid = run.status().get("pid")
        raise RunLocked(f"run {run.id} is being run by another worker" + (f" (pid {pid})" if pid else "")) from None
    return lock


def run_locked(run: Run) -> bool:
    """Whether a live worker holds the run's lock (checked without keeping it, or creating its file)."""
    return lock_held(run.path / RUN_LOCK)


def execute(run: Run, reporter: Reporter | None = None, stop: StopFlag | None = None,
            stages: list[str] | None = None) -> dict:
    """Run or resume the run's stages (all, or those named: engine.execution.stages); returns its results
    (per split, per task, mean).

    SIGTERM or a first Ctrl-C checkpoints the work in progress and raises RunCancelled. A run that
    another worker holds raises RunLocked before anything of the run is touched.
    """
    run_lock = hold_run_lock(run)
    try:
        return _execute_locked(run, reporter, stop, stages)
    finally:
        run_lock.release()


def _execute_locked(run: Run, reporter: Reporter | None, stop: StopFlag | None, stages: list[str] | None) -> dict:
    reporter = reporter or _Silent()
    stop = stop or StopFlag()
    stop.install_signal_handlers()
    config = run.config()
    preset = preset_from_dict(config["preset"])
    plan = Plan(**config["plan"])
    first_start = _first_start(run)
    log = _logger(run)
    status = StatusWriter(run)
    index = RunIndex(run.path.parent)
    device_lock = None
    try:  # from the first status write on: a failing disk here must end in a truthful 'failed' too
        if first_start:  # the plan's warnings head the log and stay in status.json; a resume does not repeat them
            for warning in plan.warnings:
                log.warning("%s", warning)
            status.set(warnings=list(plan.warnings))
        status.set(state="queued", pid=os.getpid(), host=socket.gethostname(), stage="waiting for a device",
                   error=None)
        status.start()
        if preset.cluster.backend == "ray":  # Ray owns the cluster's devices: no local device lock
            _check_stop(stop)
            status.set(state="running", started=time.time(), stage="connecting to Ray", device="ray")
            results = _execute_on_ray(run, preset, plan, reporter, status, log, stop, stages)
        else:
            candidates = candidate_devices(preset.model.device)
            device, device_lock = acquire_device(run.path.parent, candidates, on_wait=lambda: _check_stop(stop))
            _check_stop(stop)  # cancelled before it got a device: nothing to load
            status.set(state="running", started=time.time(), stage="setup", device=device)
            log.info("running on %s (pid %d)", device, os.getpid())
            results = _execute(run, preset, plan, device, reporter, status, log, stop, stages)
    except (RunCancelled, KeyboardInterrupt) as exc:
        status.set(state="cancelled", finished=time.time())
        log.info("cancelled: %s", exc or "interrupted")
        index.record(run)
        raise
    except BaseException as exc:
        status.set(state="failed", finished=time.time(), error=f"{type(exc).__name__}: {exc}")
        log.exception("failed")
        index.record(run)
        raise
    finally:
        status.stop()
        if device_lock is not None:
            device_lock.release()
    status.set(state="finished", finished=time.time(), stage="done", progress=1.0)
    index.record(run)
    log.info("finished")
    return results


class RunEvents:
    """The grid's events for one run: metrics.jsonl (every log_every steps), status and ETA, the log, the reporter."""

    def __init__(self, run: Run, preset, status: StatusWriter, reporter: Reporter, log: logging.Logger,
                 stop: StopFlag):
        self.run, self.preset, self.status, self.reporter, self.log, self.stop = run, preset, status, reporter, log, stop
        self.total = self.done = self.session = 0
        self.started = time.time()

    def begin(self, total_steps: int, done_steps: int) -> None:
        self.total, self.done = max(total_steps, 1), done_steps
        self.started, self.session = time.time(), 0  # steps run by this process: resumed work costs nothing
        self.reporter.start(self.total, done_steps)

    def _step(self, text: str, unit: str) -> None:
        self.done += 1
        self.session += 1
        eta = (self.total - self.done) * (time.time() - self.started) / self.session
        self.status.set(force=False, progress=self.done / self.total, eta_s=eta, cell=unit)
        self.reporter.advance(self.done, text)

    def progress_to(self, done_steps: int) -> None:
        self.done = done_steps
        self.status.set(force=False, progress=self.done / self.total)

    def stage(self, stage: str, **fields) -> None:
        self.status.set(stage=stage, **fields)

    def upstream_step(self, method: str, step: int, loss: float) -> None:
        up = self.preset.upstream
        if step % up.log_every == 0 or step == up.steps:
            self.run.log_upstream_loss(method, step, loss)
        self._step(f"upstream {method} step {step} loss {loss:.3f}", f"upstream:{method}")

    def cell_step(self, cell_id: str, step: int, loss: float) -> None:
        down = self.preset.downstream
        if step % down.log_every == 0 or step == down.steps:
            self.run.log_cell_loss(cell_id, step, loss)
        self._step(f"{cell_id} step {step} loss {loss:.3f}", cell_id)  # a unit's own count varies (max_epochs)

    def cell_dev(self, cell_id: str, step: int, score: float) -> None:
        self.run.log_cell_dev(cell_id, step, score)
        self.log.info("cell %s step %d dev %.4f", cell_id, step, score)

    def message(self, text: str) -> None:
        self.log.info("%s", text)

    def should_stop(self) -> bool:
        return self.stop()

    def cluster(self, info: dict) -> None:
        """A Ray run's workers and GPUs (engine.execution.cluster), for the app and the headless output."""
        self.status.set(cluster=info)
        self.reporter.workers(info)


def _check_stop(stop: StopFlag) -> None:
    if stop():
        raise RunCancelled("cancelled before it started")


def _execute(run: Run, preset, plan: Plan, device: str, reporter: Reporter, status: StatusWriter,
             log: logging.Logger, stop: StopFlag, stages: list[str] | None) -> dict:
    from engine.compute.models import quiet_libraries

    quiet_libraries()
    from engine.compute.backbone import Backbone
    from engine.compute.executor import Executor
    from engine.compute.upstream import check_second_order
    from engine.execution.stages import run_stages

    log.info("loading %s on %s", preset.model.name, device)
    reporter.message(f"loading model {preset.model.name} on {device}")
    backbone = Backbone.from_preset(preset.model, device, progress=reporter.message)
    if needs_second_order(plan.methods):
        check_second_order(backbone)  # before any training
    # what stored timings are matched on (engine.runner.estimate): the device's model, not just its index
    from engine.base.hardware import device_name

    status.set(device_name=device_name(device), precision=backbone.precision)
    events = RunEvents(run, preset, status, reporter, log, stop)
    return run_stages(run, preset, plan, Executor(backbone), events, stages)


def _execute_on_ray(run: Run, preset, plan: Plan, reporter: Reporter, status: StatusWriter, log: logging.Logger,
                    stop: StopFlag, stages: list[str] | None) -> dict:
    """This process as the Ray driver: the run's schedule on a pool of Ray workers (engine.execution.cluster)."""
    from engine.compute.models import quiet_libraries

    quiet_libraries()
    from engine.execution import cluster
    from engine.execution.stages import run_stages

    reporter.message("connecting to Ray" + (f" at {preset.cluster.address}" if preset.cluster.address else
                                            " (a local instance)"))
    backend = None
    try:
        try:
            address = cluster.connect(preset.cluster, run.log_path)
        except SystemExit:  # a cancel meets ray.init's own SIGTERM handler (sys.exit) until ours is back
            raise RunCancelled("cancelled while connecting to Ray") from None
        stop.install_signal_handlers()  # a cancel is a clean stop again
        events = RunEvents(run, preset, status, reporter, log, stop)
        backend = cluster.RayBackend(run, preset, address, events, log)
        reporter.message(f"Ray at {address}: {backend.size} workers loading {preset.model.name}")
        status.set(stage="waiting for Ray workers")
        first = backend.first_info(stop)
        status.set(stage="setup", device_name=first["device_name"], precision=first["precision"])
        return run_stages(run, preset, plan, backend, events, stages)  # the analysis on the same workers
    finally:
        if backend is not None:
            backend.close()
        cluster.disconnect()


def _redirect_output_to(log_path: Path) -> None:
    """A detached worker must never write to a terminal: send fds 1 and 2 (C libraries too) to the log."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m engine.runner.lifecycle RUN_DIR", file=sys.stderr)
        return 2
    run = Run(Path(argv[0]).resolve())
    _redirect_output_to(run.log_path)
    try:
        execute(run)
    except RunLocked as exc:
        print(f"mpt-tui worker: {exc}; this second worker exits", file=sys.stderr)
        return 2
    except (RunCancelled, KeyboardInterrupt):
        return 130
    except Exception as exc:  # already recorded in status.json and the log
        print(f"run {run.id} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
