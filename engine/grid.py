"""The grid runner: a run's work as units, and the executor that runs them.

A run is two kinds of unit of work, each a plain dataclass of names, numbers and
paths (the resolved preset travels as a dict), so a unit can be written as JSON
and run by any process that can read the paths it names:

- `LearnInit`: learn the prompt initialisation of one upstream method;
- `TrainCells`: prompt-tune a group of grid cells together (one multi-prompt
  group), then test each cell's best-dev prompt.

An `Executor` holds the loaded backbone and runs units; it reports through
`UnitEvents` (per-step losses, dev scores, log lines, the stop flag) and returns
records. `run_grid` is the order of a whole run: the upstream units, then the
cell groups (stored in groups.json), each finished cell stored in the run
directory as soon as its group ends; then the paper's selection and aggregation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from engine import faults
from engine.checkpoint import remove_checkpoint, resume_step, saved_step
from engine.config import Preset, preset_from_dict
from engine.data import TaskData
from engine.methods import METHODS, PT
from engine.protocol import Cell, Plan, grid_cells, select_and_aggregate
from engine.runs import Run, read_json, write_json_atomic

CPU_GROUP_SIZE = 8  # on CPU a bigger pass gains little (bench/speed.py) and delays each cell's result


# ---- units of work ---------------------------------------------------------------------

@dataclass
class PromptInit:
    """How a unit's initial prompt is made: loaded from `file`, or built from the backbone's vocabulary
    (`vocab`, `task_name`, `task_words`: see engine.prompt.initial_prompt) with `seed`."""

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

    kind = "learn_init"


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


Unit = LearnInit | TrainCells


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
    raise ValueError(f"unknown unit kind {kind!r}")


class UnitEvents(Protocol):
    """What a running unit tells its caller; `should_stop` asks it to checkpoint and stop."""

    def upstream_step(self, method: str, step: int, loss: float) -> None: ...
    def cell_step(self, cell_id: str, step: int, loss: float) -> None: ...
    def cell_dev(self, cell_id: str, step: int, score: float) -> None: ...
    def message(self, text: str) -> None: ...
    def should_stop(self) -> bool: ...


# ---- the executor ----------------------------------------------------------------------

def subsample(examples: list, limit: int, seed: int = 0) -> list:
    """At most `limit` examples (0: all), a seeded random subset in file order: test files may be sorted by label."""
    if not limit or len(examples) <= limit:
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


class Executor:
    """Runs units over one loaded backbone (loaded once per process, reused by every unit)."""

    def __init__(self, backbone):
        self.backbone = backbone
        self._data: dict[tuple, object] = {}

    def data(self, unit: Unit) -> TaskData:
        key = (unit.data_dir, unit.config_dir)
        if key not in self._data:
            self._data[key] = TaskData(unit.data_dir, unit.config_dir)
        return self._data[key]

    def run(self, unit: Unit, events: UnitEvents):
        """A `LearnInit` returns {"method", "steps", "last_loss", "prompt"}; a `TrainCells` its cells' records."""
        if isinstance(unit, LearnInit):
            return self.learn_init(unit, events)
        return self.train_cells(unit, events)

    def initial_prompt(self, init: PromptInit, length: int):
        from engine.prompt import initial_prompt

        return initial_prompt(self.backbone, length=length, method=init.method, task_names=init.task_names,
                              file=init.file or None, seed=init.seed, pool=init.pool)

    def learn_init(self, unit: LearnInit, events: UnitEvents) -> dict:
        from engine.algorithms.base import MetaTask
        from engine.prompt import save_prompt
        from engine.upstream import learn_initialisation

        preset = preset_from_dict(unit.preset)
        data = self.data(unit)
        fmt = preset.data.input_format
        tasks = [MetaTask(task, seed, split.train, split.dev) for task, seed in unit.meta_tasks
                 for split in [data.load_split(task, preset.data.k, seed, need_test=False, input_format=fmt)]]
        init = self.initial_prompt(unit.init, preset.prompt.length)
        events.message(f"upstream {unit.method}: {len(tasks)} meta-tasks from "
                       f"{len({t for t, _ in unit.meta_tasks})} source tasks")
        result = learn_initialisation(self.backbone, unit.method, tasks, init, preset.upstream,
                                      placement=preset.prompt.placement, checkpoint=Path(unit.checkpoint),
                                      on_step=lambda step, loss: events.upstream_step(unit.method, step, loss),
                                      should_stop=events.should_stop, on_message=events.message)
        save_prompt(Path(unit.output), result.prompt, model=preset.model.name,
                    extra={"method": unit.method, "steps": str(result.steps)})
        events.message(f"upstream {unit.method}: done, last loss {result.last_loss:.4f}")
        return {"method": unit.method, "steps": result.steps, "last_loss": result.last_loss, "prompt": unit.output}

    def _job(self, preset: Preset, data, work: CellWork, need_test: bool = True):
        from engine.tuning import Job, TuningConfig, job_steps

        down, cell = preset.downstream, work.cell
        split = data.load_split(cell.task, preset.data.k, cell.seed, need_test=need_test,
                                input_format=preset.data.input_format)
        cfg = TuningConfig(learning_rate=cell.lr, steps=job_steps(down.steps, down.max_epochs, len(split.train),
                                                                  down.batch_size),
                           batch_size=down.batch_size, optimizer=down.optimizer, eval_every=down.eval_every,
                           eval_batch_size=down.eval_batch_size, prediction=down.prediction,
                           max_new_tokens=down.max_new_tokens, num_beams=down.num_beams,
                           repetition_penalty=down.repetition_penalty, early_stopping=down.early_stopping,
                           grad_clip=down.grad_clip, weight_decay=down.weight_decay,
                           placement=preset.prompt.placement, checkpoint_every=down.checkpoint_every)
        job = Job(self.initial_prompt(work.init, preset.prompt.length), split.train, split.dev,
                  data.task_info(cell.task), cfg, down.train_seed + cell.seed, checkpoint=Path(work.checkpoint))
        return job, subsample(split.test, down.max_test_examples)

    def train_cells(self, unit: TrainCells, events: UnitEvents) -> list[dict]:
        """Prompt-tune the unit's cells as one group, test each one's chosen prompt; one record per cell."""
        from engine.prompt import save_prompt
        from engine.tuning import EvalItem, evaluate_many, prompt_tune_group

        preset = preset_from_dict(unit.preset)
        data = self.data(unit)
        cells = [w.cell for w in unit.cells]
        work = [self._job(preset, data, w, need_test=unit.test) for w in unit.cells]
        jobs, tests = [job for job, _ in work], [test for _, test in work]
        started = time.time()
        resumed = [resume_step(w.checkpoint) for w in unit.cells]
        events.message(f"group of {len(cells)} cells: " + ", ".join(
            c.id + (f" (resuming after step {r})" if r else "") for c, r in zip(cells, resumed)))
        results = prompt_tune_group(
            self.backbone, jobs, on_step=lambda j, step, loss: events.cell_step(cells[j].id, step, loss),
            on_eval=lambda j, step, score: events.cell_dev(cells[j].id, step, score), should_stop=events.should_stop,
            dropout_seed=group_seed(preset, cells), on_message=events.message)
        last = preset.downstream.test_prompt == "last"
        tested = [r.last_prompt if last else r.best_prompt for r in results]
        evaluations = evaluate_many(self.backbone, [EvalItem(prompt, test, job.task, job.cfg)
                                                    for prompt, job, test in zip(tested, jobs, tests)]) \
            if unit.test else [None] * len(jobs)
        seconds = round(time.time() - started, 2)
        records = []
        for w, result, job, prompt, evaluation in zip(unit.cells, results, jobs, tested, evaluations):
            cell = w.cell
            save_prompt(Path(w.output), prompt, model=preset.model.name,
                        extra={"task": cell.task, "seed": str(cell.seed)})
            records.append({"method": cell.method, "task": cell.task, "seed": cell.seed, "lr": cell.lr,
                            "metric": evaluation.metric if evaluation else None, "dev": result.best_dev,
                            "test": evaluation.score if evaluation else None,
                            "best_step": result.best_step, "tested": preset.downstream.test_prompt,
                            "steps": job.cfg.steps, "dev_history": result.dev_history,
                            "final_loss": result.final_loss, "stopped": result.stopped,
                            "seconds": seconds, "group_size": len(cells), "prompt": w.output})
        events.message(f"group of {len(cells)} cells done in {seconds:.1f}s")
        return records

    def group_size(self, preset: Preset, data, pending: list[Cell], events: UnitEvents) -> int:
        """How many grid cells train together: `downstream.group_size`, or what the memory budget allows."""
        down = preset.downstream
        if down.group_size:
            return min(down.group_size, len(pending))
        if self.backbone.device.type != "cuda":
            return min(CPU_GROUP_SIZE, len(pending))
        from engine.prompt import initial_prompt
        from engine.tuning import group_size_that_fits

        # the probe's batch: the longest train examples of any pending cell
        splits = {(c.task, c.seed) for c in pending}
        fmt = preset.data.input_format
        examples = [e for task, seed in splits for e in data.load_split(task, preset.data.k, seed, input_format=fmt).train]
        prompt = initial_prompt(self.backbone, length=preset.prompt.length, method="vocab", seed=0,
                                pool=preset.prompt.vocab_pool)
        fits, probe = group_size_that_fits(self.backbone, examples, down.batch_size, prompt,
                                           preset.prompt.placement, down.group_memory_fraction)
        size = min(len(pending), fits)
        events.message(f"group size {size}: {probe['per_job_mib']:.0f} MiB per job + {probe['fixed_mib']:.0f} MiB "
                       f"fixed, {probe['free_mib']:.0f} MiB free")
        return size


# ---- a whole run ----------------------------------------------------------------------

class GridEvents(UnitEvents, Protocol):
    """UnitEvents plus what only the whole run knows: the step count and the stage."""

    def begin(self, total_steps: int, done_steps: int) -> None: ...
    def progress_to(self, done_steps: int) -> None: ...  # set, after a unit (early-stopped jobs, retries)
    def stage(self, stage: str, **fields) -> None: ...


def meta_task_keys(plan: Plan, data: TaskData, k: int) -> list[tuple[str, int]]:
    """The upstream meta-tasks: every (source task, split seed) of the plan that the data has."""
    return [(t, s) for t in plan.sources for s in data.seeds(t, k) if s in plan.seeds]


def upstream_unit(run: Run, preset: Preset, plan: Plan, method: str) -> LearnInit:
    """The unit that learns `method`'s initialisation on the plan's sources (every listed seed of each)."""
    meta_tasks = meta_task_keys(plan, TaskData(plan.data_dir, plan.config_dir), preset.data.k)
    # upstream, the task-name init reads every source name (the authors' rule); task_words has no one name
    init_method = "vocab" if preset.prompt.init == "task_words" else preset.prompt.init
    init = PromptInit(init_method, file=preset.prompt.file, task_names=list(plan.sources), seed=preset.upstream.seed,
                      pool=preset.prompt.vocab_pool)
    return LearnInit(method, preset.to_dict(), plan.data_dir, plan.config_dir, meta_tasks, init,
                     str(run.upstream_checkpoint(method)), str(run.upstream_prompt(method)))


def cell_init(run: Run, preset: Preset, cell: Cell) -> PromptInit:
    """PT starts from the plain initialisation; every other method from its learned (or reused) prompt."""
    if cell.method == PT:
        return PromptInit(preset.prompt.init, file=preset.prompt.file, task_names=[cell.task],
                          seed=preset.downstream.train_seed + cell.seed, pool=preset.prompt.vocab_pool)
    reuse = preset.upstream.hyperparameters[cell.method].prompt_file
    return PromptInit("file", file=reuse or str(run.upstream_prompt(cell.method)))


def cells_unit(run: Run, preset: Preset, plan: Plan, cells: list[Cell]) -> TrainCells:
    work = [CellWork(c, cell_init(run, preset, c), str(run.cell_checkpoint(c.id)), str(run.cell_prompt(c.id)))
            for c in cells]
    return TrainCells(preset.to_dict(), plan.data_dir, plan.config_dir, work)


def methods_to_learn(run: Run, preset: Preset, plan: Plan) -> list[str]:
    """Upstream methods whose prompt is neither reused from a file nor already learned by this run."""
    return [m for m in plan.methods if m != PT and not preset.upstream.hyperparameters[m].prompt_file
            and not run.upstream_prompt(m).is_file()]


def cell_groups(run: Run, preset: Preset, executor: Executor, data, cells: list[Cell], done: dict,
                events: UnitEvents) -> list[list[Cell]]:
    """All grid cells in the groups they train in: consecutive pending cells, `size` at a time.

    The grouping is stored in the run directory (groups.json) the first time, and a resumed run
    keeps it: a group's float rounding depends on its members, so regrouping (say, because a GPU
    has less free memory today) would change the numbers of the cells still to come. Delete
    groups.json to regroup.
    """
    by_id = {c.id: c for c in cells}
    stored = read_json(run.groups_path)
    if isinstance(stored, list) and sorted(i for g in stored for i in g) == sorted(by_id):
        return [[by_id[i] for i in g] for g in stored]
    pending = [c for c in cells if c.id not in done]
    size = executor.group_size(preset, data, pending, events) if pending else 1
    groups = [[c] for c in cells if c.id in done] + [pending[i:i + size] for i in range(0, len(pending), size)]
    save_groups(run, groups)
    return groups


def upstream_steps(preset: Preset, plan: Plan, data: TaskData, method: str) -> int:
    """The outer updates `method` makes in this run (MTL with `epochs` counts passes over its pool)."""
    from engine.algorithms.base import MetaTask

    k = preset.data.k
    tasks = [MetaTask(t, s, split.train, split.dev) for t, s in meta_task_keys(plan, data, k)
             for split in [data.load_split(t, k, s, need_test=False)]]
    return METHODS[method].algorithm().total_steps(preset.upstream.hyperparameters[method], preset.upstream.steps,
                                                   tasks)


def cell_steps(preset: Preset, data: TaskData, cells: list[Cell]) -> dict[str, int]:
    """Each cell's optimizer steps (`downstream.steps`, or fewer under `max_epochs`)."""
    from engine.tuning import job_steps

    down = preset.downstream
    n_train = {(c.task, c.seed): len(data.load_split(c.task, preset.data.k, c.seed, need_test=False).train)
               for c in cells} if down.max_epochs else {}
    return {c.id: job_steps(down.steps, down.max_epochs, n_train.get((c.task, c.seed), 0), down.batch_size)
            for c in cells}


def group_seed(preset: Preset, cells: list[Cell]) -> int:
    """The seed of a group's dropout generator: from the run's train seed and the group's members."""
    digest = hashlib.sha256(json.dumps([preset.downstream.train_seed, [c.id for c in cells]]).encode()).digest()
    return int.from_bytes(digest[:7], "little")


def save_groups(run: Run, groups: list[list[Cell]]) -> None:
    write_json_atomic(run.groups_path, [[c.id for c in g] for g in groups])


def run_grid(run: Run, preset: Preset, plan: Plan, executor: Executor, events: GridEvents) -> dict:
    """Run or resume every unit of the run; store each finished cell; return (and store) the results."""
    import torch

    down, up = preset.downstream, preset.upstream
    cells = grid_cells(plan, down.learning_rates)
    done = run.finished_cell_records([c.id for c in cells])
    to_learn = methods_to_learn(run, preset, plan)

    data = TaskData(plan.data_dir, plan.config_dir)
    method_steps = {m: upstream_steps(preset, plan, data, m) for m in to_learn}
    steps_of_cell = cell_steps(preset, data, cells)

    def steps_done() -> int:
        """Finished work plus what the checkpoints hold, from the run directory (a few small files)."""
        learned = [m for m in to_learn if run.upstream_prompt(m).is_file()]
        return (sum(method_steps[m] for m in learned) + sum(steps_of_cell[c] for c in done)
                + sum(saved_step(run.upstream_checkpoint(m)) for m in to_learn if m not in learned)
                + sum(resume_step(run.cell_checkpoint(c.id)) for c in cells if c.id not in done))

    events.begin(sum(method_steps.values()) + sum(steps_of_cell.values()), steps_done())
    for method in plan.methods:
        if method != PT and up.hyperparameters[method].prompt_file:
            events.message(f"upstream {method}: reusing {up.hyperparameters[method].prompt_file}")
    for method in to_learn:
        events.stage(f"upstream:{method}")
        executor.run(upstream_unit(run, preset, plan, method), events)
        events.progress_to(steps_done())

    events.stage("downstream", total_cells=len(cells), done_cells=len(done))
    groups = cell_groups(run, preset, executor, data, cells, done, events)
    i = 0
    while i < len(groups):
        group = groups[i]
        part = [c for c in group if c.id not in done]
        try:
            records = executor.run(cells_unit(run, preset, plan, part), events) if part else []
        except torch.cuda.OutOfMemoryError:
            if len(part) == 1:
                raise
            # the memory probe was too optimistic: split the group, remember the split, go on
            torch.cuda.empty_cache()
            events.progress_to(steps_done())  # the failed attempt's steps past its checkpoints run again
            events.message(f"out of GPU memory with {len(part)} cells in a group; splitting it in two")
            half = (len(group) + 1) // 2
            groups[i:i + 1] = [group[:half], group[half:]]
            save_groups(run, groups)
            continue
        for cell, record in zip(part, records):
            faults.point("grid.record")
            record["prompt"] = str(run.cell_prompt(cell.id).relative_to(run.path))
            run.save_cell_record(cell.id, record)
            remove_checkpoint(run.cell_checkpoint(cell.id))
            run.log_cell_done(cell.id, record["dev"], record["test"])
            events.message(f"cell {cell.id}: dev {record['dev']:.4f} test {record['test']:.4f} ({record['metric']})")
            done[cell.id] = record
        events.progress_to(steps_done())  # jobs that stopped early (NaN) count as done
        events.stage("downstream", done_cells=len(done))
        i += 1
    results = select_and_aggregate([done[c.id] for c in cells])
    write_json_atomic(run.results_path, results)
    return results
