"""The analysis stage: task embeddings of finished runs, then their similarity document.

Which sources were close to each target, and did closeness predict a method's gain over PT?

Task embeddings, two kinds (`[analysis] similarity`):

- `prompt` (SPoT, Vu et al. 2022): each task (sources and targets) is prompt-tuned on each of its
  splits by an embedding job; the trained prompt, averaged over its tokens, is the split's
  embedding, and the mean over splits the task's. Every job starts from the same vocabulary-sampled
  prompt (seed `EMBEDDING_INIT_SEED`), with the same data-order seed, `analysis.embedding_steps`
  steps and `analysis.embedding_lr`, so embeddings differ only by the task's data. The jobs are
  ordinary grid cells (method `embed`) run as `TrainCells` units with `test=False` on the run's
  backend (this process, or a Ray run's workers): grouped (a group out of GPU memory is halved),
  checkpointed every `downstream.checkpoint_every` steps, cancellable and resumed like the grid.
  Their files live under RUN_DIR/analysis/embed-<steps>steps-lr<lr>/: groups.json, checkpoints/,
  prompts/, and embeddings/<cell>.json (a finished job: never run again).
- `text`: the frozen backbone's last hidden states over the task's training inputs (as stored,
  without the task-name prefix of `input_format = "crossfit"`; an `EmbedTexts` unit per task, on
  the same backend), mean-pooled over tokens, then
  over the inputs of a split; a model-only baseline, nothing trained.

The document (engine.results.analysis.compute_analysis, no torch): the target x source cosine matrix of each kind, each
target's `top_k` nearest sources, each method's gain over PT per target (mean over the splits both
have) and per split, and Spearman's rho (with n and a permutation p-value, engine.experiment.similarity)
between a target's similarity to its run's sources (max and mean) and that gain, over targets
("task") and over (target, split) pairs ("split", the split's own target embedding). It is stored
as RUN_DIR/analysis.json (schema in /README.md "Task similarity"); the index summary keeps only a
pointer and each target's top sources (engine.store.index.summarize).

`run_stage(run, preset, plan, backend, events)` is the analysis as the last stage of a run (a
no-op when `[analysis] similarity` is empty); `analyse_runs` analyses one or several finished runs
with the same backbone and data. The embedding jobs go through the same submission path as the
grid's cells (engine.execution.stage.submit_groups).
"""


from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from engine.execution.schedule import Schedule, Scheduled, as_backend
from engine.execution.stage import submit_groups
from engine.experiment.config import AnalysisConfig, Preset
from engine.experiment.plan import Cell, Plan
from engine.experiment.records import CellRecord
from engine.experiment.units import CellWork, EmbedTexts, PromptInit, TrainCells
from engine.results.analysis import analysis_path, analysis_request, check_analysable, compute_analysis
from engine.store.checkpoint import remove_checkpoint
from engine.store.run_dir import Run, read_record, write_json_atomic, write_record

EMBED = "embed"  # the method name of the embedding jobs' cells
EMBEDDING_INIT_SEED = 0  # every embedding job starts from this one vocabulary-sampled prompt


def work_dir(run: Run, settings: AnalysisConfig) -> Path:
    """The embedding jobs of these settings: groups.json, checkpoints/, prompts/, embeddings/ (jobs of
    other steps or learning rates are other jobs, in their own directory)."""
    return run.path / "analysis" / f"embed-{settings.embedding_steps}steps-lr{settings.embedding_lr:g}"


# ---- embedding jobs ----------------------------------------------------------------------

def embedding_preset(preset: Preset, settings: AnalysisConfig) -> Preset:
    """The preset every embedding job runs under: the run's model, prompt and batch size; the analysis's
    steps and learning rate; the last prompt kept, no epoch cap. A job's one dev evaluation (the tuning
    loop's, after its last step) is not used, so free-form tasks generate a single greedy token there."""
    down = dataclasses.replace(preset.downstream, steps=settings.embedding_steps, learning_rates=[settings.embedding_lr],
                               eval_every=settings.embedding_steps, max_epochs=0, test_prompt="last",
                               num_beams=1, max_new_tokens=1, early_stopping=False)
    return dataclasses.replace(preset, downstream=down, analysis=settings)


def embedding_cells(tasks: list[str], seeds: list[int], data, k: int, lr: float) -> list[Cell]:
    """One embedding job per (task, split seed of the run that the task has)."""
    return [Cell(EMBED, task, seed, lr) for task in tasks for seed in data.seeds(task, k) if seed in seeds]


def _paths(run: Run, settings: AnalysisConfig, cell: Cell) -> tuple[Path, Path, Path]:
    """(checkpoint, prompt, record) of an embedding job."""
    base = work_dir(run, settings)
    return (base / "checkpoints" / f"{cell.id}.pt", base / "prompts" / f"{cell.id}.safetensors",
            base / "embeddings" / f"{cell.id}.json")


def _groups_path(run: Run, settings: AnalysisConfig) -> Path:
    return work_dir(run, settings) / "groups.json"


class _StageEvents:
    """The embedding jobs' events for the caller's events: log lines and the stop flag pass through; their
    steps and dev scores are not grid cells, so they stay out of metrics.jsonl and the grid's progress (a
    line every `every_s` seconds says how far the group is)."""

    def __init__(self, events, steps: int, every_s: float = 10.0):
        self.events, self.steps, self.every_s = events, steps, every_s
        self.last = time.monotonic()

    def upstream_step(self, method, step, loss):
        pass

    def cell_step(self, cell_id, step, loss):
        if time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            self.events.message(f"analysis: embedding step {step}/{self.steps}")

    def cell_dev(self, cell_id, step, score):
        pass

    def message(self, text):
        self.events.message(text)

    def should_stop(self):
        return self.events.should_stop()


def submit_prompt_embeddings(schedule: Schedule, run: Run, preset: Preset, plan: Plan, data, tasks: list[str],
                             backend, events, quiet: _StageEvents) -> list[Cell]:
    """Submit the embedding jobs of `tasks` still to run, as train-only `TrainCells` groups through the
    grid's submission path (stored groups, records stored as groups end, out-of-memory halving); every
    job's cell. Finished jobs are read back, never run again."""
    settings = preset.analysis
    cells = embedding_cells(tasks, plan.seeds, data, preset.data.k, settings.embedding_lr)
    done = {c.id: record for c in cells if (record := read_record(_paths(run, settings, c)[2])) is not None}
    init = PromptInit("vocab", seed=EMBEDDING_INIT_SEED, pool=preset.prompt.vocab_pool)

    def store(cell: Cell, record: CellRecord) -> None:
        checkpoint, prompt, record_path = _paths(run, settings, cell)
        record.prompt = str(prompt.relative_to(run.path))
        record_path.parent.mkdir(parents=True, exist_ok=True)
        write_record(record_path, record)  # written last: from now on the job is done
        remove_checkpoint(checkpoint)

    def unit(part: list[Cell]) -> TrainCells:
        work = [CellWork(c, init, str(_paths(run, settings, c)[0]), str(_paths(run, settings, c)[1])) for c in part]
        return TrainCells(preset.to_dict(), plan.data_dir, plan.config_dir, work, test=False)

    submit_groups(schedule, cells, done, _groups_path(run, settings),
                  size_of=lambda pending: backend.group_size(preset, data, pending, quiet), unit_of=unit,
                  store=store, events=events, label="embedding group", noun="embedding jobs",
                  on_start=lambda name: events.stage("analysis", analysis=name))
    return cells


# ---- text embeddings ---------------------------------------------------------------------


def text_embedding_units(preset: Preset, plan: Plan, data, tasks: list[str], events,
                         into: dict) -> list[Scheduled]:
    """An `EmbedTexts` unit per task (its splits among the runs' seeds); each puts {seed: vector} in `into[task]`."""
    def unit(task: str) -> EmbedTexts:
        seeds = [s for s in data.seeds(task, preset.data.k) if s in plan.seeds]
        return EmbedTexts(preset.to_dict(), plan.data_dir, plan.config_dir, task, seeds)

    return [Scheduled(f"text embeddings of {task}", unit(task),
                      on_start=lambda task=task: events.stage("analysis", analysis=f"text embeddings of {task}"),
                      on_done=lambda pairs, task=task: into.__setitem__(task, {seed: v for seed, v in pairs}))
            for task in tasks]


# ---- running it ----------------------------------------------------------------------------

def analyse_runs(runs: list[Run], settings: AnalysisConfig, backend, events, requested: dict | None = None) -> dict:
    """Compute, store (in the first run's directory) and return the analysis of finished `runs`.

    `backend`: where the embedding units run, an engine.execution.schedule `Backend` (a run's Ray workers) or an
    `Executor` (this process's backbone of the runs' model); `events` is a `GridEvents` (message, stage,
    should_stop). Embedding jobs resume from their checkpoints.
    """
    from engine.experiment.data import TaskData

    preset, plan, parts, tasks = check_analysable(runs, settings)
    preset = embedding_preset(preset, settings)
    data = TaskData(plan.data_dir, plan.config_dir)
    # one schedule of both kinds' units, on the run's backend: in order here, spread over Ray workers there
    quiet = _StageEvents(events, settings.embedding_steps)
    schedule, texts = Schedule(), {}
    backend = as_backend(backend)
    if "prompt" in settings.similarity:
        events.stage("analysis", analysis="prompt embeddings")
        events.message(f"analysis: prompt embeddings of {len(tasks)} tasks")
        cells = submit_prompt_embeddings(schedule, runs[0], preset, plan, data, tasks, backend, events, quiet)
    if "text" in settings.similarity:
        events.message(f"analysis: text embeddings of {len(tasks)} tasks")
        for item in text_embedding_units(preset, plan, data, tasks, events, texts):
            schedule.submit(item)
    backend.run(schedule, quiet)
    embeddings = {}
    if "prompt" in settings.similarity:
        from engine.compute.embeddings import prompt_embeddings

        embeddings["prompt"] = prompt_embeddings([(c.task, c.seed, _paths(runs[0], settings, c)[1]) for c in cells])
    if "text" in settings.similarity:
        embeddings["text"] = texts
    doc = compute_analysis(parts, embeddings, settings.top_k)
    if requested is not None:  # added after the run finished (`mpt-tui analyse`): say so, and with what
        doc["requested"] = requested
    write_json_atomic(analysis_path(runs[0]), doc)
    events.message(f"analysis: stored {analysis_path(runs[0])}")
    return doc


def run_stage(run: Run, preset: Preset, plan: Plan, backend, events) -> dict | None:
    """The analysis as a run's last stage (after `run_grid`, on its backend): with the settings of
    `mpt-tui analyse` when one asked for it (engine.results.analysis.request_analysis: it may add
    other finished runs), else `[analysis]`; nothing when that has no similarity kind."""
    request = analysis_request(run)
    if request is None:
        return analyse_runs([run], preset.analysis, backend, events) if preset.analysis.similarity else None
    settings = dataclasses.replace(preset.analysis, **request["settings"])
    others = [Run(Path(path)) for path in request.get("others", [])]
    events.message(f"analysis asked for by `mpt-tui analyse` ({', '.join(settings.similarity)}"
                   + (f"; with {len(others)} other run(s)" if others else "") + ")")
    doc = analyse_runs([run, *others], settings, backend, events, requested=request)
    return doc


