"""A run on a Ray cluster (preset `[cluster] backend = "ray"`): the same schedule, many devices.

The run's worker process (`python -m engine.runner.lifecycle RUN_DIR`, or the headless CLI) is the Ray *driver*:
it connects to a cluster (`address = "auto"` or `"ray://host:port"`) or starts a local Ray instance
(`address = ""`), starts a pool of actors that it owns (not detached: they die with it), one per
`gpus_per_worker` share of a GPU (or per CPU on a CPU-only cluster), each holding the frozen backbone,
and hands them the units of the run's `engine.execution.grid.Schedule` as they become ready: the upstream methods
side by side, then every cell group as soon as the initialisation it starts from exists (PT groups at
once). Workers stream their events (losses, dev scores, log lines) back in batches; the driver alone
writes status.json, metrics.jsonl, the cell records, results.json and the index.

Storage: workers write their units' checkpoints and prompts into the run directory itself, which must
be on storage every node sees (checked when each worker starts: a run whose directory a node cannot see
fails at once, with the node named). Shipping checkpoints to the driver instead would put every
checkpoint of every job through the driver (a paper-scale group checkpoints optimizer state for its
jobs every few hundred steps), and a retried unit would need them shipped back; clusters that run
research jobs (Slurm, Kubernetes with a shared volume) have a shared filesystem anyway, and the model
and data must be readable on every node too.

Faults: a worker (or its node) that dies mid-unit costs the steps since the unit's last checkpoint: the
driver starts a replacement and the unit runs again from its checkpoints, first in line; the grouping
and seeds are the run's, so the records equal an undisturbed run's. Cancel asks every busy worker to
checkpoint and stop, then raises `RunCancelled`. A driver that dies takes its actors with it: the run
reads 'crashed' and `resume` schedules only what is unfinished.

Nothing here imports torch or Ray at module level: the preflight check (`check_cluster`) runs on the
app's UI path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from engine.execution.schedule import Backend
from engine.experiment.config import ClusterConfig, Preset, PresetError

RAY_MISSING = "cluster.backend: 'ray' needs the Ray package: pip install 'mpt-tui[ray]'"
POLL_S = 0.5  # how often the driver collects the workers' events
DEATHS_PER_WORKER = 3  # replacements allowed per worker of the pool before the run fails
# what a worker process needs from the driver's environment (the rest is the node's own)
PASSED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HF_ENDPOINT", "MPT_TUI_CACHE", "TRANSFORMERS_OFFLINE")
EVENT_NAMES = ("upstream_step", "cell_step", "cell_dev", "message")


# ---- preflight: torch-free, Ray-import-free unless the address must be looked up ---------------

def check_cluster(cluster: ClusterConfig) -> None:
    """A Ray preset needs Ray installed and, when it joins a cluster, a reachable address (PresetError)."""
    if cluster.backend != "ray":
        return
    import importlib.util

    try:
        found = importlib.util.find_spec("ray") is not None
    except ImportError:
        found = False
    if not found:
        raise PresetError(RAY_MISSING)
    if cluster.address:
        host, port = _bootstrap_address(cluster.address)
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as exc:
            raise PresetError(f"cluster.address: no Ray cluster reachable at {cluster.address!r} "
                              f"({host}:{port}: {exc.strerror or exc})") from None


def _bootstrap_address(address: str) -> tuple[str, int]:
    """(host, port) of a `ray://host:port`, `host:port` or `auto` address."""
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            address = canonicalize_bootstrap_address("auto") or ""
        except Exception as exc:  # ConnectionError: no running instance found on this machine
            raise PresetError(f"cluster.address: 'auto' found no running Ray cluster on this machine "
                              f"(start one with `ray start --head`): {str(exc).splitlines()[0]}") from None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise PresetError(f"cluster.address: {address!r} is not 'auto', 'host:port' or 'ray://host:port'")
    return host, int(port)


# ---- the worker side: an actor holding the backbone ---------------------------------------------


# ---- the driver side ---------------------------------------------------------------------

@contextlib.contextmanager
def _output_to(log_path: Path):
    """Processes started in here (a local Ray instance) inherit the run's log as stdout and stderr: they must
    never write to the terminal (the app's own stderr may not even exist)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log_fd):
            os.close(fd)


def connect(cluster: ClusterConfig, log_path: Path) -> str:
    """Join the preset's Ray cluster (or start a local instance); Ray's own log lines go to the run's log.
    Returns the address connected to."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(RAY_MISSING) from None
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # the venv's Python, not a `uv run` environment
    ray_logger = logging.getLogger("ray")
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s ray %(levelname)s %(message)s"))
    for old in ray_logger.handlers:  # an earlier run's log, in this same process
        old.close()
    ray_logger.handlers, ray_logger.propagate = [handler], False
    options = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": False,
               "namespace": "mpt-tui"}
    if not cluster.address:
        options["include_dashboard"] = False
    with _output_to(log_path):
        context = ray.init(address=cluster.address or "local", **options)  # "local": a new instance, never a stale one
    return getattr(context, "address_info", {}).get("gcs_address") or cluster.address or "local"


def disconnect() -> None:
    ray = sys.modules.get("ray")  # never imported: nothing to end
    if ray is not None and ray.is_initialized():
        ray.shutdown()  # the driver's actors end with it; a local instance it started stops


@dataclass
class _Worker:
    id: str
    actor: object
    starting: object = None  # the pending info() call while the actor loads its backbone
    info: dict = field(default_factory=dict)
    item: object = None  # the Scheduled unit it runs
    ref: object = None  # its pending run() call
    sent: float = 0.0  # when (perf_counter) it was sent


class RayBackend(Backend):
    """Runs a schedule's units on a pool of actors; the calling process stays the only writer of the run."""

    def __init__(self, run, preset: Preset, address: str, events, log: logging.Logger):
        import ray

        from engine.compute.ray_actor import CHECK_FILE, UnitActor  # the actor's class (no torch until it starts)

        self.actor_class, self.check_path = UnitActor, run.path / CHECK_FILE
        self.ray, self.run_dir, self.preset, self.address, self.log = ray, run.path, preset, address, log
        self.cfg = preset.cluster
        self.on_cluster = events.cluster
        resources = ray.cluster_resources()
        self.use_gpus = bool(resources.get("GPU")) and preset.model.device != "cpu"
        self.size = worker_count(self.cfg, resources, self.use_gpus)
        self.workers: list[_Worker] = []
        self.started = 0  # workers created, replacements included (their ids)
        self.deaths = 0
        self.token = uuid.uuid4().hex
        self.check_path.write_text(self.token, encoding="utf-8")
        self._published = None
        for _ in range(self.size):
            self._start_worker()
        self.log.info("ray: %d workers (%s) on %s", self.size,
                      f"{self.cfg.gpus_per_worker:g} GPU each" if self.use_gpus else "CPU", address)

    # -- the pool

    def _start_worker(self) -> None:
        ray = self.ray
        share = min(self.cfg.gpus_per_worker, 1.0) if self.use_gpus else 1.0
        options = {"num_cpus": 1, "num_gpus": self.cfg.gpus_per_worker if self.use_gpus else 0,
                   "max_concurrency": 4, "max_restarts": 0}  # run, take_events, stop, info at once
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        actor = ray.remote(self.actor_class).options(**options).remote(self.preset.to_dict(), 1, share, env)
        worker = _Worker(f"w{self.started}", actor)
        worker.starting = actor.info.remote(str(self.run_dir), self.token, self.preset.data.dir)
        self.started += 1
        self.workers.append(worker)

    def _adopt(self, worker: _Worker) -> None:
        """A starting worker answered: ready, or its node cannot see the run (the run fails: say which node)."""
        ref, worker.starting = worker.starting, None
        try:
            worker.info = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            self._lost(worker, f"could not start: {_first_line(exc)}")
            if not any(w.info for w in self.workers):
                raise RuntimeError(f"Ray worker {worker.id} could not start: {_first_line(exc)}") from None
            return
        if worker.info["missing"]:
            raise RuntimeError(f"Ray worker {worker.id} on node {worker.info['node']} does not see "
                               f"{worker.info['missing']}: a Ray run needs its runs root, model and data on "
                               f"storage every node shares (checkpoints live in the run directory)")
        self.log.info("ray worker %s: node %s, %s, pid %d", worker.id, worker.info["node"], worker.info["device"],
                      worker.info["pid"])

    def _lost(self, worker: _Worker, why: str) -> None:
        self.workers.remove(worker)
        self.deaths += 1
        self.log.warning("ray worker %s lost (%s)", worker.id, why)
        if self.deaths > DEATHS_PER_WORKER * self.size:
            raise RuntimeError(f"Ray workers died {self.deaths} times: giving up (last: {worker.id}, {why})")
        self._start_worker()

    def first_info(self, should_stop) -> dict:
        """Wait for one worker to be ready (the run's device name and precision come from it); a cancel
        meanwhile (the cluster may have no free GPU for a while) raises RunCancelled."""
        from engine.base.stopping import RunCancelled

        while not any(w.info for w in self.workers):
            if should_stop():
                raise RunCancelled("cancelled while waiting for Ray workers")
            starting = [w for w in self.workers if w.starting is not None]
            ready, _ = self.ray.wait([w.starting for w in starting], num_returns=1, timeout=POLL_S)
            for worker in [w for w in starting if w.starting in ready]:
                self._adopt(worker)
        return next(w.info for w in self.workers if w.info)

    # -- the Backend protocol

    def group_size(self, preset: Preset, data, pending, events) -> int:
        """The memory probe's size on a worker (its GPU share), evened out so the groups fill every worker's
        last round: 34 groups on 8 workers would leave 6 idle for a whole group's time; 40 smaller ones do not.
        An explicit `downstream.group_size` is kept as it is (a local run then groups the same)."""
        import dataclasses

        worker = next(w for w in self.workers if w.info)
        config_dir = str(data.config_dir) if data.config_dir else None
        size, messages = self.ray.get(worker.actor.group_size.remote(
            preset.to_dict(), str(data.tasks_dir), config_dir, [dataclasses.asdict(c) for c in pending]))
        _replay(messages, events)
        if preset.downstream.group_size:
            return size
        balanced = balanced_group_size(len(pending), size, self.size)
        if balanced != size:
            events.message(f"group size {balanced} (at most {size}): {len(pending)} cells in a multiple of "
                           f"{self.size} groups, one round per worker")
        return balanced

    def run(self, schedule, events) -> None:
        """Until every unit of `schedule` has finished; cancel and unrecoverable errors after every worker stops."""
        from engine.experiment.units import unit_to_dict
        from engine.base.stopping import RunCancelled

        ray = self.ray
        stopping, failure = False, None
        while True:
            for worker in [w for w in self.workers if w.starting is not None]:
                if ray.wait([worker.starting], timeout=0)[0]:
                    self._adopt(worker)
            if not stopping and failure is None:
                for worker in [w for w in self.workers if w.info and w.item is None]:
                    item = schedule.take()
                    if item is None:
                        break
                    worker.item, worker.ref = item, worker.actor.run.remote(unit_to_dict(item.unit))
                    worker.sent = time.perf_counter()
            self._publish()
            busy = [w for w in self.workers if w.item is not None]
            if not busy and (schedule.empty() or stopping or failure is not None):
                break
            if not busy and not any(w.starting is not None for w in self.workers):
                raise RuntimeError(f"units wait for each other: {', '.join(i.name for i in schedule.waiting)}")
            pending = [w.ref for w in busy] + [w.starting for w in self.workers if w.starting is not None]
            ready, _ = ray.wait(pending, num_returns=1, timeout=POLL_S)
            self._collect(busy, events)
            if not stopping and events.should_stop():
                stopping = True
                self.log.info("cancel: asking %d busy workers to checkpoint and stop", len(busy))
                for worker in busy:
                    worker.actor.stop.remote()
            for worker in [w for w in busy if w.ref in ready]:
                item, ref = worker.item, worker.ref
                worker.item = worker.ref = None
                try:
                    result, rest, seconds = ray.get(ref)
                except ray.exceptions.RayActorError as exc:  # the process or its node died: run it again elsewhere
                    self._lost(worker, f"while running {item.name}: {_first_line(exc)}")
                    events.message(f"worker {worker.id} lost while running {item.name}; it runs again from its "
                                   f"checkpoints")
                    schedule.retry(item)
                    continue
                except RunCancelled:
                    schedule.retry(item)  # checkpointed: waiting again for a resume
                    continue
                except Exception as exc:
                    try:
                        schedule.failed(item, exc)  # an out-of-memory group is split and submitted again
                    except Exception as unhandled:
                        if failure is None:
                            failure = unhandled
                            self.log.info("unit %s failed: stopping the other workers", item.name)
                            for other in self.workers:
                                if other.item is not None:
                                    other.actor.stop.remote()
                    continue
                _replay(rest, events)
                self.log.info("ray unit %s on %s: %.3f s in the worker, %.3f s round trip", item.name, worker.id,
                              seconds, time.perf_counter() - worker.sent)
                schedule.done(item, result)
        self._publish()
        if failure is not None:
            raise failure
        if stopping:
            raise RunCancelled("cancelled: the Ray workers checkpointed their units")

    def _collect(self, busy: list[_Worker], events) -> None:
        """The busy workers' events since the last call, into the run (metrics.jsonl, status, log)."""
        calls = [(w, w.actor.take_events.remote()) for w in busy]
        for worker, ref in calls:
            try:
                _replay(self.ray.get(ref), events)
            except self.ray.exceptions.RayActorError:
                pass  # a lost worker: its run() call says so

    def _publish(self) -> None:
        """status.json's `cluster` field (engine.runner.lifecycle), when what the workers do changed."""
        workers = [{"id": w.id, "node": w.info.get("node", "?"), "device": w.info.get("device", "?"),
                    "pid": w.info.get("pid", 0), "unit": w.item.name if w.item else ("idle" if w.info else "starting")}
                   for w in self.workers]
        if workers == self._published:
            return
        self._published = workers
        total = self.ray.cluster_resources().get("GPU", 0.0)
        free = self.ray.available_resources().get("GPU", 0.0)
        self.on_cluster({"backend": "ray", "address": self.address, "gpus_total": float(total),
                         "gpus_in_use": float(max(total - free, 0.0)), "workers": workers})

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                self.ray.kill(worker.actor)
        with contextlib.suppress(OSError):
            self.check_path.unlink()


def balanced_group_size(cells: int, largest: int, workers: int) -> int:
    """The smallest group size (at most `largest`) that needs no more rounds of `workers` groups than
    groups of `largest` do: the last round is then as full as it can be."""
    rounds = -(-cells // (largest * workers))  # ceil
    return max(1, -(-cells // (rounds * workers)))


def worker_count(cfg: ClusterConfig, resources: dict, use_gpus: bool) -> int:
    """`max_workers`, or one per `gpus_per_worker` of the cluster's GPUs (one per CPU without GPUs)."""
    if cfg.max_workers:
        return cfg.max_workers
    if use_gpus:
        return max(1, int(resources.get("GPU", 0) / cfg.gpus_per_worker + 1e-9))
    return max(1, int(resources.get("CPU", 1)))


def _replay(batch: list[tuple], events) -> None:
    for name, *args in batch:
        if name in EVENT_NAMES:
            getattr(events, name)(*args)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__

