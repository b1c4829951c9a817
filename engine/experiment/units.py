"""Units of work: what a run asks a backbone to compute, as plain serialisable dataclasses.

A unit names its inputs (the resolved preset as a dict, the data directory, checkpoint and output paths),
so it can be written as JSON and run by any process that can read those paths: this one, or a Ray
actor on another node (engine.compute.executor runs them; engine.execution schedules them).

- `LearnInit`: learn the prompt initialisation of one upstream method on one source set (every
  target's sources, or under `data.sources = "nearest:K"` the set of some targets);
- `TrainCells`: prompt-tune a group of grid cells together (one multi-prompt group), then test each
  cell's chosen prompt (train only: the similarity analysis's prompt-embedding jobs);
- `EmbedTexts`: the similarity analysis's text embeddings of one task's splits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

from engine.experiment.plan import Cell


CPU_GROUP_SIZE = 8  # on CPU a bigger pass gains little (bench/speed.py) and delays each cell's result


@dataclass
class PromptInit:
    """How a unit's initial prompt is made: loaded from `file`, or built from the backbone's vocabulary
    (`vocab`, `task_name`, `task_words`: see engine.compute.prompt.initial_prompt) with `seed`."""

    method: str
    file: str = ""
    task_names: list[str] = field(default_factory=list)  # the target task downstream, the sources upstream
    seed: int = 0
    pool: str = "first_5000"  # prompt.vocab_pool


@dataclass
class LearnInit:
    """Learn the initialisation of upstream method `method` on the meta-tasks (source task, split seed)."""

    method: str
    preset: dict
    data_dir: str
    config_dir: str | None
    meta_tasks: list[tuple[str, int]]
    init: PromptInit
    checkpoint: str  # resumed from, saved to every upstream.checkpoint_every meta-updates
    output: str  # the learned prompt (.safetensors)
    source_set: str = ""  # the key of its source set (engine.experiment.plan.source_set_key); "": every target's

    kind = "learn_init"

    @property
    def label(self) -> str:
        """The method, with its source set when it has one ("maml@1a2b3c4d"): its curves and log lines."""
        return upstream_label(self.method, self.source_set)


def upstream_label(method: str, source_set: str = "") -> str:
    return f"{method}@{source_set}" if source_set else method


@dataclass
class CellWork:
    """One grid cell of a `TrainCells` unit."""

    cell: Cell
    init: PromptInit
    checkpoint: str  # resumed from, saved to every downstream.checkpoint_every steps
    output: str  # the best-dev prompt (.safetensors)


@dataclass
class TrainCells:
    """Prompt-tune these grid cells as one multi-prompt group and test each one's best prompt."""

    preset: dict
    data_dir: str
    config_dir: str | None
    cells: list[CellWork] = field(default_factory=list)
    test: bool = True  # false: train only (task-embedding jobs); records carry test None

    kind = "train_cells"


@dataclass
class EmbedTexts:
    """The frozen backbone's text embedding (engine.execution.analysis.text_embedding) of each k-shot split `seeds`
    of `task`: the mean hidden state over the split's training inputs."""

    preset: dict
    data_dir: str
    config_dir: str | None
    task: str
    seeds: list[int]

    kind = "embed_texts"


Unit = LearnInit | TrainCells | EmbedTexts


def unit_to_dict(unit: Unit) -> dict:
    return {"kind": unit.kind, **dataclasses.asdict(unit)}


def unit_from_dict(raw: dict) -> Unit:
    raw = dict(raw)
    kind = raw.pop("kind")
    if kind == LearnInit.kind:
        return LearnInit(**{**raw, "init": PromptInit(**raw["init"]),
                            "meta_tasks": [tuple(t) for t in raw["meta_tasks"]]})
    if kind == TrainCells.kind:
        cells = [CellWork(**{**c, "cell": Cell(**c["cell"]), "init": PromptInit(**c["init"])}) for c in raw["cells"]]
        return TrainCells(**{**raw, "cells": cells})
    if kind == EmbedTexts.kind:
        return EmbedTexts(**raw)
    raise ValueError(f"unknown unit kind {kind!r}")


class UnitEvents(Protocol):
    """What a running unit tells its caller; `should_stop` asks it to checkpoint and stop."""

    def upstream_step(self, method: str, step: int, loss: float) -> None: ...
    def cell_step(self, cell_id: str, step: int, loss: float) -> None: ...
    def cell_dev(self, cell_id: str, step: int, score: float) -> None: ...
    def message(self, text: str) -> None: ...
    def should_stop(self) -> bool: ...
