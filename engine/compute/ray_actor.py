"""The Ray actor of a cluster run: the backbone loaded once on its device, then units as the driver sends them.

The driver side (the pool, the schedule, faults) is engine.execution.cluster; this is what runs on each
worker node. Events stream back in batches (`take_events`); `stop` asks the running unit to checkpoint.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

CHECK_FILE = ".cluster-check"  # the driver's token: a worker that reads it back sees the same run directory


class _StreamedEvents:
    """A unit's events inside an actor, kept until the driver collects them (`take`)."""

    def __init__(self, stop: threading.Event):
        self._items: list[tuple] = []
        self._lock = threading.Lock()
        self._stop = stop

    def _add(self, *item) -> None:
        with self._lock:
            self._items.append(item)

    def upstream_step(self, method: str, step: int, loss: float) -> None:
        self._add("upstream_step", method, step, loss)

    def cell_step(self, cell_id: str, step: int, loss: float) -> None:
        self._add("cell_step", cell_id, step, loss)

    def cell_dev(self, cell_id: str, step: int, score: float) -> None:
        self._add("cell_dev", cell_id, step, score)

    def message(self, text: str) -> None:
        self._add("message", text)

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def take(self) -> list[tuple]:
        with self._lock:
            items, self._items = self._items, []
        return items


class UnitActor:
    """A Ray actor: the backbone loaded once on its device (the GPU share Ray gave it, or the CPU), then units."""

    def __init__(self, preset: dict, threads: int, memory_share: float, env: dict):
        os.environ.update(env)  # before transformers loads (an actor's environment is its node's)
        from engine.compute.models import quiet_libraries

        quiet_libraries()
        import ray
        import torch

        from engine.compute.backbone import Backbone
        from engine.experiment.config import preset_from_dict
        from engine.compute.executor import Executor

        torch.set_num_threads(threads)  # Ray's default is one thread; pinned either way (equal records)
        p = preset_from_dict(preset)
        self.device = "cuda:0" if ray.get_gpu_ids() and p.model.device != "cpu" else "cpu"
        self.backbone = Backbone.from_preset(p.model, self.device)
        self.executor = Executor(self.backbone, memory_share)
        self._stop = threading.Event()
        self._events: _StreamedEvents | None = None

    def info(self, run_dir: str, token: str, data_dir: str) -> dict:
        """Where this worker is, and whether it sees the driver's run directory (the same one) and the data."""
        from engine.base.hardware import device_name

        seen = ""
        try:
            seen = (Path(run_dir) / CHECK_FILE).read_text(encoding="utf-8")
        except OSError:
            pass
        problem = None
        if seen != token:
            problem = f"the run directory {run_dir}"
        elif not Path(data_dir).is_dir():
            problem = f"the data directory {data_dir}"
        return {"node": socket.gethostname(), "pid": os.getpid(), "device": self.device,
                "device_name": device_name(self.device), "precision": self.backbone.precision, "missing": problem}

    def run(self, unit: dict) -> tuple[object, list[tuple], float]:
        """Run one unit; its result, the events not yet collected, and its seconds in here."""
        from engine.experiment.units import unit_from_dict

        self._stop.clear()
        self._events = _StreamedEvents(self._stop)
        started = time.perf_counter()
        try:
            result = self.executor.run(unit_from_dict(unit), self._events)
        except BaseException:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # an out-of-memory group is split and retried, here or elsewhere
            raise
        return result, self._events.take(), time.perf_counter() - started

    def take_events(self) -> list[tuple]:
        return self._events.take() if self._events else []

    def stop(self) -> None:
        """The running unit checkpoints and raises RunCancelled at its next step."""
        self._stop.set()

    def group_size(self, preset: dict, data_dir: str, config_dir: str | None, pending: list[dict]) -> tuple:
        from engine.experiment.config import preset_from_dict
        from engine.experiment.data import TaskData
        from engine.experiment.plan import Cell

        events = _StreamedEvents(self._stop)
        size = self.executor.group_size(preset_from_dict(preset), TaskData(data_dir, config_dir),
                                        [Cell(**c) for c in pending], events)
        return size, events.take()
