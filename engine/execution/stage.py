"""How a stage submits its cells: the one path that the grid and the analysis (and any later stage) share.

A stage's cells train in groups (multi-prompt passes). `submit_groups` groups the cells still to run
(the grouping is stored, so a resume keeps it), turns each group into a `Scheduled` unit, stores each
finished cell's record through the stage's own `store` as soon as its group ends, and halves a group
that ran out of GPU memory (the split is stored too). What differs between stages (the unit a group
becomes, where a record goes, what a group waits for) comes in as functions.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from engine.execution.schedule import Schedule, Scheduled
from engine.experiment.plan import Cell
from engine.experiment.records import as_record
from engine.experiment.units import Unit, UnitEvents
from engine.store.run_dir import read_json, write_json_atomic


def submit_groups(schedule: Schedule, cells: list[Cell], done: dict[str, dict], groups_path: Path, *,
                  size_of: Callable[[list[Cell]], int], unit_of: Callable[[list[Cell]], Unit],
                  store: Callable[[Cell, dict], None], events: UnitEvents, label: str = "group",
                  noun: str = "cells", needs_of: Callable[[list[Cell]], frozenset[str]] = lambda part: frozenset(),
                  on_start: Callable[[str], None] = lambda name: None,
                  on_change: Callable[[], None] = lambda: None) -> list[list[Cell]]:
    """Submit `cells` not yet in `done` ({cell id: record}) to `schedule`, in their stored groups.

    `unit_of(part)` is the unit that trains a group's unfinished cells; `store(cell, record)` keeps one
    finished cell's record (then `done` holds it); `needs_of(part)` names the units a group waits for;
    `on_start(name)` runs when a group starts; `on_change()` after a group's records are stored, when a
    group runs again from its checkpoints (its worker was lost) and when one is split.
    """
    groups = stored_groups(groups_path, cells, done, size_of)

    def item(group: list[Cell]) -> Scheduled | None:
        part = [c for c in group if c.id not in done]
        if not part:
            return None
        name = f"{label} {groups.index(group) + 1}/{len(groups)} ({len(part)} {noun})"
        return Scheduled(name, unit_of(part), needs_of(part), on_start=lambda: on_start(name),
                         on_done=lambda records: finish(part, records), on_error=lambda exc: halve_on_oom(group, exc),
                         on_retry=on_change)

    def finish(part: list[Cell], records: list[dict]) -> None:
        for cell, record in zip(part, map(as_record, records)):
            store(cell, record)
            done[cell.id] = record
        on_change()

    def halve_on_oom(group: list[Cell], exc: BaseException) -> bool:
        """The memory probe was too optimistic: split the group in two, remember the split, go on."""
        part = [c for c in group if c.id not in done]
        if not is_out_of_memory(exc) or len(part) == 1:
            return False
        _release_gpu_memory()
        on_change()  # the failed attempt's steps past its checkpoints run again
        events.message(f"out of GPU memory with {len(part)} {noun} in one {label}; splitting it in two")
        halves = halve(groups, group)
        write_groups(groups_path, groups)
        for at, half in enumerate(filter(None, map(item, halves))):
            schedule.submit(half, at=at)
        return True

    for group in groups:
        if (scheduled := item(group)) is not None:
            schedule.submit(scheduled)
    return groups


def halve(groups: list[list[Cell]], group: list[Cell]) -> list[list[Cell]]:
    """Replace `group` in `groups` by its two halves (a group that ran out of memory); the halves."""
    half = (len(group) + 1) // 2
    i = groups.index(group)
    groups[i:i + 1] = [group[:half], group[half:]]
    return groups[i:i + 2]


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error (a Ray task error is an instance of its cause too). Without torch loaded
    in this process (a Ray driver) no such error can have been raised here or unpickled."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def _release_gpu_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def stored_groups(path: Path, cells: list[Cell], done, size_of: Callable[[list[Cell]], int]) -> list[list[Cell]]:
    """`cells` in the groups they train in: consecutive pending cells, `size_of(pending)` at a time, finished
    ones alone. The grouping is stored at `path` the first time, and a resume keeps it (without asking
    for a size): a group's float rounding depends on its members, so regrouping (say, because a GPU has
    less free memory today) would change the numbers of the cells still to come. Delete it to regroup."""
    by_id = {c.id: c for c in cells}
    stored = read_json(path)
    if isinstance(stored, list) and sorted(i for g in stored for i in g) == sorted(by_id):
        return [[by_id[i] for i in g] for g in stored]
    pending = [c for c in cells if c.id not in done]
    size = size_of(pending) if pending else 1
    groups = [[c] for c in cells if c.id in done] + [pending[i:i + size] for i in range(0, len(pending), size)]
    write_groups(path, groups)
    return groups


def write_groups(path: Path, groups: list[list[Cell]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, [[c.id for c in g] for g in groups])
