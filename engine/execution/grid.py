"""The grid runner: a run's work as units, and the executor that runs them.

A run is units of work, each a plain dataclass of names, numbers and paths (the
resolved preset travels as a dict), so a unit can be written as JSON and run by
any process that can read the paths it names:

- `LearnInit`: learn the prompt initialisation of one upstream method on one source set (every
  target's sources, or under `data.sources = "nearest:K"` the set of some targets: one unit per
  (method, source set), shared by the targets of that set);
- `TrainCells`: prompt-tune a group of grid cells together (one multi-prompt
  group), then test each cell's best-dev prompt (train only: the similarity
  analysis's prompt-embedding jobs);
- `EmbedTexts`: the similarity analysis's text embeddings of one task (needs the
  backbone, so it runs where the backbone is, like the others).

An `Executor` holds the loaded backbone and runs units; it reports through
`UnitEvents` (per-step losses, dev scores, log lines, the stop flag) and returns
records. `run_grid` is the order of a whole run, written down as a `Schedule`:
the upstream units, then the cell groups (stored in groups.json), each group
waiting only for the initialisations its cells start from (their method on their
target's source set; PT groups wait for nothing); each finished cell is stored in the run directory as soon as its group
ends; then the paper's selection and aggregation. A backend runs a schedule: the
`LocalBackend` one unit at a time in the schedule's order, on this process's
device; `engine.execution.cluster.RayBackend` on a pool of Ray actors. Either way the
process that runs `run_grid` alone writes the run's records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from engine.base import faults
from engine.store.checkpoint import remove_checkpoint, resume_step, saved_step
from engine.experiment.config import Preset, preset_from_dict
from engine.experiment.data import TaskData
from engine.experiment.methods import METHODS, PT
from engine.experiment.plan import Cell, Plan, grid_cells, select_and_aggregate
from engine.store.run_dir import Run, read_json, write_json_atomic

CPU_GROUP_SIZE = 8  # on CPU a bigger pass gains little (bench/speed.py) and delays each cell's result


# ---- units of work ---------------------------------------------------------------------

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


# ---- the executor ----------------------------------------------------------------------

def subsample(examples: list, limit: int, seed: int = 0) -> list:
    """At most `limit` examples (0: all), a seeded random subset in file order: test files may be sorted by label."""
    if not limit or len(examples) <= limit:
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


class Executor:
    """Runs units over one loaded backbone (loaded once per process, reused by every unit)."""

    def __init__(self, backbone, memory_share: float = 1.0):
        self.backbone = backbone
        self.memory_share = memory_share  # the share of its GPU this executor may use (Ray: gpus_per_worker < 1)
        self._data: dict[tuple, object] = {}

    def data(self, unit: Unit) -> TaskData:
        key = (unit.data_dir, unit.config_dir)
        if key not in self._data:
            self._data[key] = TaskData(unit.data_dir, unit.config_dir)
        return self._data[key]

    def run(self, unit: Unit, events: UnitEvents):
        """A `LearnInit` returns {"method", "steps", "last_loss", "prompt"}; a `TrainCells` its cells' records;
        an `EmbedTexts` [[seed, vector], ...]."""
        if isinstance(unit, LearnInit):
            return self.learn_init(unit, events)
        if isinstance(unit, EmbedTexts):
            return self.embed_texts(unit)
        return self.train_cells(unit, events)

    def initial_prompt(self, init: PromptInit, length: int):
        from engine.compute.prompt import initial_prompt

        return initial_prompt(self.backbone, length=length, method=init.method, task_names=init.task_names,
                              file=init.file or None, seed=init.seed, pool=init.pool)

    def learn_init(self, unit: LearnInit, events: UnitEvents) -> dict:
        from engine.compute.algorithms.base import MetaTask
        from engine.compute.prompt import save_prompt
        from engine.compute.upstream import learn_initialisation

        preset = preset_from_dict(unit.preset)
        data = self.data(unit)
        fmt = preset.data.input_format
        tasks = [MetaTask(task, seed, split.train, split.dev) for task, seed in unit.meta_tasks
                 for split in [data.load_split(task, preset.data.k, seed, need_test=False, input_format=fmt)]]
        init = self.initial_prompt(unit.init, preset.prompt.length)
        events.message(f"upstream {unit.label}: {len(tasks)} meta-tasks from "
                       f"{len({t for t, _ in unit.meta_tasks})} source tasks")
        result = learn_initialisation(self.backbone, unit.method, tasks, init, preset.upstream,
                                      placement=preset.prompt.placement, checkpoint=Path(unit.checkpoint),
                                      on_step=lambda step, loss: events.upstream_step(unit.label, step, loss),
                                      should_stop=events.should_stop, on_message=events.message)
        save_prompt(Path(unit.output), result.prompt, model=preset.model.name,
                    extra={"method": unit.method, "steps": str(result.steps)})
        events.message(f"upstream {unit.label}: done, last loss {result.last_loss:.4f}")
        return {"method": unit.method, "steps": result.steps, "last_loss": result.last_loss, "prompt": unit.output}

    def _job(self, preset: Preset, data, work: CellWork, need_test: bool = True):
        from engine.compute.tuning import Job, TuningConfig, job_steps

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
        from engine.compute.prompt import save_prompt
        from engine.compute.tuning import EvalItem, evaluate_many, prompt_tune_group

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

    def embed_texts(self, unit: EmbedTexts) -> list[list]:
        from engine.execution.analysis import text_embedding

        k = preset_from_dict(unit.preset).data.k
        return [[seed, text_embedding(self.backbone, [e.input for e in self.data(unit).load_split(
            unit.task, k, seed, need_test=False).train])] for seed in unit.seeds]

    def group_size(self, preset: Preset, data, pending: list[Cell], events: UnitEvents) -> int:
        """How many grid cells train together: `downstream.group_size`, or what the memory budget allows."""
        down = preset.downstream
        if down.group_size:
            return min(down.group_size, len(pending))
        if self.backbone.device.type != "cuda":
            return min(CPU_GROUP_SIZE, len(pending))
        from engine.compute.prompt import initial_prompt
        from engine.compute.tuning import group_size_that_fits

        # the probe's batch: the longest train examples of any pending cell
        splits = {(c.task, c.seed) for c in pending}
        fmt = preset.data.input_format
        examples = [e for task, seed in splits for e in data.load_split(task, preset.data.k, seed, input_format=fmt).train]
        prompt = initial_prompt(self.backbone, length=preset.prompt.length, method="vocab", seed=0,
                                pool=preset.prompt.vocab_pool)
        fits, probe = group_size_that_fits(self.backbone, examples, down.batch_size, prompt,
                                           preset.prompt.placement, down.group_memory_fraction * self.memory_share)
        size = min(len(pending), fits)
        events.message(f"group size {size}: {probe['per_job_mib']:.0f} MiB per job + {probe['fixed_mib']:.0f} MiB "
                       f"fixed, {probe['free_mib']:.0f} MiB free")
        return size


# ---- the schedule: a run's units in order, each with the units it waits for -----------

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


class Backend(Protocol):
    """Where a schedule's units run."""

    def run(self, schedule: Schedule, events: UnitEvents) -> None: ...  # until the schedule is empty
    def group_size(self, preset: Preset, data, pending: list[Cell], events: UnitEvents) -> int: ...


class LocalBackend:
    """One unit at a time, in the schedule's order, on this process's executor (today's local runs)."""

    def __init__(self, executor: Executor):
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


def halve(groups: list[list[Cell]], group: list[Cell]) -> list[list[Cell]]:
    """Replace `group` in `groups` by its two halves (a group that ran out of memory); the halves."""
    half = (len(group) + 1) // 2
    i = groups.index(group)
    groups[i:i + 1] = [group[:half], group[half:]]
    return groups[i:i + 2]


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)  # a Ray task error is an instance of its cause too


# ---- a whole run ----------------------------------------------------------------------

class GridEvents(UnitEvents, Protocol):
    """UnitEvents plus what only the whole run knows: the step count and the stage."""

    def begin(self, total_steps: int, done_steps: int) -> None: ...
    def progress_to(self, done_steps: int) -> None: ...  # set, after a unit (early-stopped jobs, retries)
    def stage(self, stage: str, **fields) -> None: ...


def meta_task_keys(plan: Plan, data: TaskData, k: int, source_set: str = "") -> list[tuple[str, int]]:
    """The upstream meta-tasks of a source set: every (source task, split seed) of it that the data has."""
    return [(t, s) for t in plan.upstream_sets()[source_set] for s in data.seeds(t, k) if s in plan.seeds]


def upstream_unit(run: Run, preset: Preset, plan: Plan, method: str, source_set: str = "") -> LearnInit:
    """The unit that learns `method`'s initialisation on a source set of the plan (every listed seed of each)."""
    meta_tasks = meta_task_keys(plan, TaskData(plan.data_dir, plan.config_dir), preset.data.k, source_set)
    # upstream, the task-name init reads every source name (the authors' rule); task_words has no one name
    init_method = "vocab" if preset.prompt.init == "task_words" else preset.prompt.init
    init = PromptInit(init_method, file=preset.prompt.file, task_names=plan.upstream_sets()[source_set],
                      seed=preset.upstream.seed, pool=preset.prompt.vocab_pool)
    return LearnInit(method, preset.to_dict(), plan.data_dir, plan.config_dir, meta_tasks, init,
                     str(run.upstream_checkpoint(method, source_set)), str(run.upstream_prompt(method, source_set)),
                     source_set)


def upstream_name(method: str, source_set: str = "") -> str:
    """A learned initialisation's unit name in a schedule (and the stage status.json shows while it runs)."""
    return f"upstream:{upstream_label(method, source_set)}"


def cell_init(run: Run, preset: Preset, plan: Plan, cell: Cell) -> PromptInit:
    """PT starts from the plain initialisation; every other method from its learned (or reused) prompt,
    learned on the cell's target's source set."""
    if cell.method == PT:
        return PromptInit(preset.prompt.init, file=preset.prompt.file, task_names=[cell.task],
                          seed=preset.downstream.train_seed + cell.seed, pool=preset.prompt.vocab_pool)
    reuse = preset.upstream.hyperparameters[cell.method].prompt_file
    return PromptInit("file", file=reuse or str(run.upstream_prompt(cell.method, plan.set_key(cell.task))))


def cells_unit(run: Run, preset: Preset, plan: Plan, cells: list[Cell]) -> TrainCells:
    work = [CellWork(c, cell_init(run, preset, plan, c), str(run.cell_checkpoint(c.id)), str(run.cell_prompt(c.id)))
            for c in cells]
    return TrainCells(preset.to_dict(), plan.data_dir, plan.config_dir, work)


def upstream_to_learn(run: Run, preset: Preset, plan: Plan) -> list[tuple[str, str]]:
    """(method, source set) of each upstream initialisation neither reused from a file nor already learned
    by this run: one per method and distinct source set."""
    return [(m, key) for m in plan.methods if m != PT and not preset.upstream.hyperparameters[m].prompt_file
            for key in plan.upstream_sets() if not run.upstream_prompt(m, key).is_file()]


def needed_upstream(plan: Plan, cell: Cell) -> tuple[str, str]:
    """The (method, source set) whose initialisation `cell` starts from."""
    return cell.method, plan.set_key(cell.task)


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


def cell_groups(run: Run, preset: Preset, backend: Backend, data, cells: list[Cell], done: dict,
                events: UnitEvents) -> list[list[Cell]]:
    """All grid cells in the groups they train in, stored as the run's groups.json (`stored_groups`)."""
    return stored_groups(run.groups_path, cells, done,
                         lambda pending: backend.group_size(preset, data, pending, events))


def upstream_steps(preset: Preset, plan: Plan, data: TaskData, method: str, source_set: str = "") -> int:
    """The outer updates `method` makes on a source set (MTL with `epochs` counts passes over its pool)."""
    from engine.compute.algorithms.base import MetaTask

    k = preset.data.k
    tasks = [MetaTask(t, s, split.train, split.dev) for t, s in meta_task_keys(plan, data, k, source_set)
             for split in [data.load_split(t, k, s, need_test=False)]]
    return METHODS[method].algorithm().total_steps(preset.upstream.hyperparameters[method], preset.upstream.steps,
                                                   tasks)


def cell_steps(preset: Preset, data: TaskData, cells: list[Cell]) -> dict[str, int]:
    """Each cell's optimizer steps (`downstream.steps`, or fewer under `max_epochs`)."""
    from engine.compute.tuning import job_steps

    down = preset.downstream
    n_train = {(c.task, c.seed): len(data.load_split(c.task, preset.data.k, c.seed, need_test=False).train)
               for c in cells} if down.max_epochs else {}
    return {c.id: job_steps(down.steps, down.max_epochs, n_train.get((c.task, c.seed), 0), down.batch_size)
            for c in cells}


def group_seed(preset: Preset, cells: list[Cell]) -> int:
    """The seed of a group's dropout generator: from the run's train seed and the group's members."""
    digest = hashlib.sha256(json.dumps([preset.downstream.train_seed, [c.id for c in cells]]).encode()).digest()
    return int.from_bytes(digest[:7], "little")


def as_backend(backend: Backend | Executor) -> Backend:
    """An executor runs a schedule as a `LocalBackend`."""
    return LocalBackend(backend) if isinstance(backend, Executor) else backend


def run_grid(run: Run, preset: Preset, plan: Plan, backend: Backend | Executor, events: GridEvents) -> dict:
    """Run or resume every unit of the run; store each finished cell; return (and store) the results."""
    backend = as_backend(backend)
    up = preset.upstream
    cells = grid_cells(plan, preset.downstream.learning_rates)
    done = run.finished_cell_records([c.id for c in cells])
    to_learn = upstream_to_learn(run, preset, plan)

    data = TaskData(plan.data_dir, plan.config_dir)
    method_steps = {u: upstream_steps(preset, plan, data, *u) for u in to_learn}
    steps_of_cell = cell_steps(preset, data, cells)

    def steps_done() -> int:
        """Finished work plus what the checkpoints hold, from the run directory (a few small files)."""
        learned = [u for u in to_learn if run.upstream_prompt(*u).is_file()]
        return (sum(method_steps[u] for u in learned) + sum(steps_of_cell[c] for c in done)
                + sum(saved_step(run.upstream_checkpoint(*u)) for u in to_learn if u not in learned)
                + sum(resume_step(run.cell_checkpoint(c.id)) for c in cells if c.id not in done))

    def recount() -> None:
        events.progress_to(steps_done())  # early-stopped jobs, steps past a checkpoint that run again

    events.begin(sum(method_steps.values()) + sum(steps_of_cell.values()), steps_done())
    for method in plan.methods:
        if method != PT and up.hyperparameters[method].prompt_file:
            events.message(f"upstream {method}: reusing {up.hyperparameters[method].prompt_file}")
    groups = cell_groups(run, preset, backend, data, cells, done, events)
    schedule = Schedule()
    for method, key in to_learn:
        name = upstream_name(method, key)
        schedule.submit(Scheduled(name, upstream_unit(run, preset, plan, method, key),
                                  on_start=lambda n=name: events.stage(n),
                                  on_done=lambda result: recount(), on_retry=recount))

    def store(part: list[Cell], records: list[dict]) -> None:
        for cell, record in zip(part, records):
            faults.point("grid.record")
            record["prompt"] = str(run.cell_prompt(cell.id).relative_to(run.path))
            run.save_cell_record(cell.id, record)
            remove_checkpoint(run.cell_checkpoint(cell.id))
            run.log_cell_done(cell.id, record["dev"], record["test"])
            events.message(f"cell {cell.id}: dev {record['dev']:.4f} test {record['test']:.4f} ({record['metric']})")
            done[cell.id] = record
        recount()
        events.stage("downstream", done_cells=len(done))

    def group_item(group: list[Cell]) -> Scheduled | None:
        part = [c for c in group if c.id not in done]
        if not part:
            return None
        name = f"group {groups.index(group) + 1}/{len(groups)} ({len(part)} cells)"
        # its cells' (method, target's source set) initialisations still to learn; PT: none
        needs = frozenset(upstream_name(*needed_upstream(plan, c)) for c in part
                          if needed_upstream(plan, c) in to_learn)
        return Scheduled(name, cells_unit(run, preset, plan, part), needs,
                         on_start=lambda: events.stage("downstream", total_cells=len(cells), done_cells=len(done)),
                         on_done=lambda records: store(part, records), on_error=lambda exc: split(group, exc),
                         on_retry=recount)

    def split(group: list[Cell], exc: BaseException) -> bool:
        """The memory probe was too optimistic: split the group in two, remember the split, go on."""
        part = [c for c in group if c.id not in done]
        if not is_out_of_memory(exc) or len(part) == 1:
            return False
        import torch

        torch.cuda.empty_cache()
        recount()  # the failed attempt's steps past its checkpoints run again
        events.message(f"out of GPU memory with {len(part)} cells in a group; splitting it in two")
        halves = halve(groups, group)
        write_groups(run.groups_path, groups)
        for at, item in enumerate(filter(None, map(group_item, halves))):
            schedule.submit(item, at=at)
        return True

    for group in groups:
        item = group_item(group)
        if item:
            schedule.submit(item)
    backend.run(schedule, events)
    results = select_and_aggregate([done[c.id] for c in cells])
    write_json_atomic(run.results_path, results)
    return results
