"""The schedule: a run's units in order, each with the units it waits for, and the backends that run it.

A `Schedule` is independent of where units run; a backend takes the first waiting unit whose needs have
finished and reports back. The `LocalBackend` runs one unit at a time on this process's executor;
engine.execution.cluster.RayBackend spreads them over a pool of Ray actors. Either way the callbacks
of each `Scheduled` item (storing records, progress) run in the process that owns the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from engine.experiment.config import Preset
from engine.experiment.plan import Cell
from engine.experiment.units import Unit, UnitEvents


@dataclass
class Scheduled:
    """One unit of a schedule. The callbacks run in the process that owns the run (records, progress)."""

    name: str  # what status.json calls it while it runs: "upstream:maml", "group 3/12 (8 cells)"
    unit: Unit
    needs: frozenset[str] = frozenset()  # names of units that must have finished first
    on_start: Callable[[], None] = lambda: None
    on_done: Callable[[object], None] = lambda result: None
    on_error: Callable[[BaseException], bool] = lambda exc: False  # true: handled (say, re-submitted split)
    on_retry: Callable[[], None] = lambda: None  # it runs again from its checkpoints (its worker was lost)


class Schedule:
    """The order of a run's units, independent of where they run: a backend `take`s the first waiting unit
    whose needs have finished and reports back with `done`, `retry` or `failed`. More units may be
    submitted at any time (the halves of a group that ran out of memory)."""

    def __init__(self):
        self.waiting: list[Scheduled] = []
        self.running: list[Scheduled] = []
        self.finished: set[str] = set()
        self._known: set[str] = set()

    def submit(self, item: Scheduled, at: int | None = None) -> Scheduled:
        unknown = item.needs - self._known
        if unknown:
            raise ValueError(f"unit {item.name} needs {sorted(unknown)}, which were never submitted")
        self._known.add(item.name)
        self.waiting.insert(len(self.waiting) if at is None else at, item)
        return item

    def take(self) -> Scheduled | None:
        """The first waiting unit that can start now (None: none can, until a running one finishes)."""
        for item in self.waiting:
            if item.needs <= self.finished:
                self.waiting.remove(item)
                self.running.append(item)
                item.on_start()
                return item
        return None

    def done(self, item: Scheduled, result) -> None:
        self.running.remove(item)
        item.on_done(result)
        self.finished.add(item.name)

    def retry(self, item: Scheduled) -> None:
        """Its worker was lost: it goes first again, to resume from its checkpoints."""
        self.running.remove(item)
        self.waiting.insert(0, item)
        item.on_retry()

    def failed(self, item: Scheduled, exc: BaseException) -> None:
        """Its unit raised: the item's `on_error` may handle it (re-submitting work at the front); else it raises."""
        self.running.remove(item)
        if not item.on_error(exc):
            raise exc

    def empty(self) -> bool:
        return not self.waiting and not self.running


class Backend:
    """Where a schedule's units run (a base class: `as_backend` tells a backend from an executor)."""

    def run(self, schedule: Schedule, events: UnitEvents) -> None:  # until the schedule is empty
        raise NotImplementedError

    def group_size(self, preset: Preset, data, pending: list[Cell], events: UnitEvents) -> int:
        raise NotImplementedError


class LocalBackend(Backend):
    """One unit at a time, in the schedule's order, on this process's executor (today's local runs)."""

    def __init__(self, executor):
        self.executor = executor

    def run(self, schedule: Schedule, events: UnitEvents) -> None:
        from engine.base.stopping import RunCancelled

        while True:
            if schedule.waiting and events.should_stop():  # units without steps (text embeddings) never ask
                raise RunCancelled(f"cancelled before {schedule.waiting[0].name}")
            if (item := schedule.take()) is None:
                break
            try:
                result = self.executor.run(item.unit, events)
            except Exception as exc:
                schedule.failed(item, exc)
                continue
            schedule.done(item, result)
        if not schedule.empty():
            raise RuntimeError(f"units wait for each other: {', '.join(i.name for i in schedule.waiting)}")

    def group_size(self, preset: Preset, data, pending: list[Cell], events: UnitEvents) -> int:
        return self.executor.group_size(preset, data, pending, events)


class GridEvents(UnitEvents, Protocol):
    """UnitEvents plus what only the whole run knows: the step count and the stage."""

    def begin(self, total_steps: int, done_steps: int) -> None: ...
    def progress_to(self, done_steps: int) -> None: ...  # set, after a unit (early-stopped jobs, retries)
    def stage(self, stage: str, **fields) -> None: ...


def as_backend(backend) -> Backend:
    """A backend, or an executor (engine.compute.executor) to run a schedule as a `LocalBackend`."""
    return backend if isinstance(backend, Backend) else LocalBackend(backend)
