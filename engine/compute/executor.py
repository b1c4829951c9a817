"""The executor: runs units of work (engine.experiment.units) over one loaded backbone.

An `Executor` holds the backbone (loaded once per process, reused by every unit) and turns a unit into
its records: a learned initialisation, the trained and tested cells of a group, a task's text
embeddings. It reports through `UnitEvents` (per-step losses, dev scores, log lines, the stop flag).
Where and in which order units run is engine.execution's concern.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

from engine.compute.embeddings import text_embedding
from engine.experiment.config import Preset, preset_from_dict
from engine.experiment.data import TaskData
from engine.experiment.plan import Cell
from engine.experiment.records import CellRecord, UpstreamRecord
from engine.experiment.units import (CPU_GROUP_SIZE, CellWork, EmbedTexts, LearnInit, PromptInit, TrainCells, Unit,
                                     UnitEvents)
from engine.store.checkpoint import resume_step


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
        """A `LearnInit` returns its `UpstreamRecord`; a `TrainCells` its cells' `CellRecord`s (engine.experiment.records);
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

    def learn_init(self, unit: LearnInit, events: UnitEvents) -> UpstreamRecord:
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
        return UpstreamRecord(method=unit.method, steps=result.steps, last_loss=result.last_loss, prompt=unit.output)

    def _job(self, preset: Preset, data, work: CellWork, need_test: bool = True):
        from engine.compute.tuning import Job

        down, cell = preset.downstream, work.cell
        split = data.load_split(cell.task, preset.data.k, cell.seed, need_test=need_test,
                                input_format=preset.data.input_format)
        cfg = down.tuning_config(cell.lr, len(split.train), preset.prompt.placement)
        job = Job(self.initial_prompt(work.init, preset.prompt.length), split.train, split.dev,
                  data.task_info(cell.task), cfg, down.train_seed + cell.seed, checkpoint=Path(work.checkpoint))
        return job, subsample(split.test, down.max_test_examples)

    def train_cells(self, unit: TrainCells, events: UnitEvents) -> list[CellRecord]:
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
            records.append(CellRecord(method=cell.method, task=cell.task, seed=cell.seed, lr=cell.lr,
                                      metric=evaluation.metric if evaluation else None, dev=result.best_dev,
                                      test=evaluation.score if evaluation else None,
                                      best_step=result.best_step, tested=preset.downstream.test_prompt,
                                      steps=job.cfg.steps, dev_history=result.dev_history,
                                      final_loss=result.final_loss, stopped=result.stopped,
                                      seconds=seconds, group_size=len(cells), prompt=w.output))
        events.message(f"group of {len(cells)} cells done in {seconds:.1f}s")
        return records

    def embed_texts(self, unit: EmbedTexts) -> list[list]:
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


def group_seed(preset: Preset, cells: list[Cell]) -> int:
    """The seed of a group's dropout generator: from the run's train seed and the group's members."""
    digest = hashlib.sha256(json.dumps([preset.downstream.train_seed, [c.id for c in cells]]).encode()).digest()
    return int.from_bytes(digest[:7], "little")
