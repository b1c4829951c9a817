"""The task similarity analysis of finished runs: which sources were close to each target, and did
closeness predict a method's gain over PT?

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

The analysis (`compute_analysis`, no torch): the target x source cosine matrix of each kind, each
target's `top_k` nearest sources, each method's gain over PT per target (mean over the splits both
have) and per split, and Spearman's rho (with n and a permutation p-value, engine.experiment.similarity)
between a target's similarity to its run's sources (max and mean) and that gain, over targets
("task") and over (target, split) pairs ("split", the split's own target embedding). It is stored
as RUN_DIR/analysis.json (schema in /README.md "Task similarity"); the index summary keeps only a
pointer and each target's top sources (engine.store.index.summarize).

`run_stage(run, preset, plan, backend, events)` is the analysis as the last stage of a run (a
no-op when `[analysis] similarity` is empty); `analyse_runs` analyses one or several finished runs
with the same backbone and data (the `mpt-tui analyse` command); `render_text` is the headless
output.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.store.checkpoint import remove_checkpoint
from engine.experiment.config import AnalysisConfig, Preset
from engine.execution.grid import (CellWork, EmbedTexts, PromptInit, Schedule, Scheduled, TrainCells, as_backend, halve,
                         is_out_of_memory, stored_groups, write_groups)
from engine.experiment.methods import PT
from engine.experiment.plan import Cell, Plan
from engine.store.run_dir import Run, read_json, write_json_atomic
from engine.experiment.similarity import ANALYSIS_FILE, cosine_matrix, ranked_sources, set_similarity, spearman

ANALYSIS_VERSION = 1
EMBED = "embed"  # the method name of the embedding jobs' cells
EMBEDDING_INIT_SEED = 0  # every embedding job starts from this one vocabulary-sampled prompt
TEXT_BATCH = 32
KINDS = ("prompt", "text")
AGGREGATES = ("max", "mean")


class AnalysisError(ValueError):
    """An analysis that cannot be made (a run not finished, runs that do not go together): one line."""


def analysis_path(run: Run) -> Path:
    return run.path / ANALYSIS_FILE


def work_dir(run: Run, settings: AnalysisConfig) -> Path:
    """The embedding jobs of these settings: groups.json, checkpoints/, prompts/, embeddings/ (jobs of
    other steps or learning rates are other jobs, in their own directory)."""
    return run.path / "analysis" / f"embed-{settings.embedding_steps}steps-lr{settings.embedding_lr:g}"


def read_analysis(run: Run) -> dict | None:
    """The stored analysis.json of a run (None when missing or damaged)."""
    doc = read_json(analysis_path(run))
    return doc if isinstance(doc, dict) and doc.get("version") == ANALYSIS_VERSION else None


# ---- the runs analysed --------------------------------------------------------------------

@dataclass
class RunPart:
    """One analysed run: its tasks and the test score of each (method, target, split) chosen on dev."""

    run_id: str
    sources: list[str]
    targets: list[str]
    seeds: list[int]
    scores: dict[tuple[str, str, int], float]  # (method, target, seed) -> test score
    source_sets: dict[str, list[str]] = field(default_factory=dict)  # each target's own sources (nearest:K)


def run_part(run: Run) -> RunPart:
    results = read_json(run.results_path)
    if not isinstance(results, dict) or not isinstance(results.get("splits"), list):
        raise AnalysisError(f"run {run.id} has no results yet ({run.status()['state']}): analyse a finished run")
    plan = Plan(**run.config()["plan"])
    scores = {(c["method"], c["task"], c["seed"]): c["test"] for c in results["splits"]
              if isinstance(c.get("test"), (int, float)) and math.isfinite(c["test"])}
    return RunPart(run.id, list(plan.sources), list(plan.targets), list(plan.seeds), scores,
                   {t: list(plan.source_sets.get(t, plan.sources)) for t in plan.targets})


def check_together(runs: list[Run]) -> tuple[Preset, Plan]:
    """The first run's preset and plan, once every run is seen to share its backbone, prompt and data
    (embeddings of different models or data are not comparable) and no target is in two runs."""
    from engine.experiment.config import preset_from_dict

    configs = [run.config() for run in runs]
    first_preset, first_plan = configs[0]["preset"], configs[0]["plan"]
    seen_targets: dict[str, str] = {}
    for run, config in zip(runs, configs):
        preset, plan = config["preset"], config["plan"]
        for what, a, b in (("model.name", preset["model"]["name"], first_preset["model"]["name"]),
                           ("prompt.length", preset["prompt"]["length"], first_preset["prompt"]["length"]),
                           ("prompt.placement", preset["prompt"]["placement"], first_preset["prompt"]["placement"]),
                           ("data.k", preset["data"]["k"], first_preset["data"]["k"]),
                           ("the data directory", plan["data_dir"], first_plan["data_dir"])):
            if a != b:
                raise AnalysisError(f"runs {runs[0].id} and {run.id} differ in {what} ({b} vs {a}): "
                                    f"analyse them separately")
        for target in plan["targets"]:
            if target in seen_targets:
                raise AnalysisError(f"target task {target} is in runs {seen_targets[target]} and {run.id}: "
                                    f"analyse runs with different targets together, or each run alone")
            seen_targets[target] = run.id
    return preset_from_dict(first_preset), Plan(**first_plan)


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
    """Submit the embedding jobs of `tasks` still to run, as train-only `TrainCells` groups that store their
    jobs' records when they end (a group out of GPU memory is halved, like the grid's); every job's cell.
    Finished jobs are read back, never run again."""
    settings = preset.analysis
    cells = embedding_cells(tasks, plan.seeds, data, preset.data.k, settings.embedding_lr)
    done = {c.id for c in cells if isinstance(read_json(_paths(run, settings, c)[2]), dict)}
    groups = stored_groups(_groups_path(run, settings), cells, done,
                           lambda pending: backend.group_size(preset, data, pending, quiet))
    init = PromptInit("vocab", seed=EMBEDDING_INIT_SEED, pool=preset.prompt.vocab_pool)

    def store(part: list[Cell], records: list[dict]) -> None:
        for cell, record in zip(part, records):
            checkpoint, prompt, record_path = _paths(run, settings, cell)
            record["prompt"] = str(prompt.relative_to(run.path))
            record_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(record_path, record)  # written last: from now on the job is done
            remove_checkpoint(checkpoint)
            done.add(cell.id)

    def item(group: list[Cell]) -> Scheduled | None:
        part = [c for c in group if c.id not in done]
        if not part:
            return None
        work = [CellWork(c, init, str(_paths(run, settings, c)[0]), str(_paths(run, settings, c)[1])) for c in part]
        name = f"embedding group {groups.index(group) + 1}/{len(groups)}"
        return Scheduled(f"{name} ({len(part)} jobs)",
                         TrainCells(preset.to_dict(), plan.data_dir, plan.config_dir, work, test=False),
                         on_start=lambda: events.stage("analysis", analysis=name),
                         on_done=lambda records: store(part, records), on_error=lambda exc: split(group, exc))

    def split(group: list[Cell], exc: BaseException) -> bool:
        part = [c for c in group if c.id not in done]
        if not is_out_of_memory(exc) or len(part) == 1:
            return False
        import torch

        torch.cuda.empty_cache()
        events.message(f"analysis: out of GPU memory with {len(part)} embedding jobs in a group; splitting it in two")
        halves = halve(groups, group)
        write_groups(_groups_path(run, settings), groups)
        for at, half in enumerate(filter(None, map(item, halves))):
            schedule.submit(half, at=at)
        return True

    for group in groups:
        if (scheduled := item(group)) is not None:
            schedule.submit(scheduled)
    return cells


def read_prompt_embeddings(run: Run, settings: AnalysisConfig, cells: list[Cell]) -> dict:
    """{task: {seed: [d floats]}}: each finished embedding job's prompt, averaged over its tokens."""
    import torch

    from engine.compute.prompt import load_prompt

    out: dict[str, dict[int, list[float]]] = {}
    for cell in cells:
        prompt, _ = load_prompt(_paths(run, settings, cell)[1])
        out.setdefault(cell.task, {})[cell.seed] = torch.as_tensor(prompt).double().mean(dim=0).tolist()
    return out


# ---- text embeddings ---------------------------------------------------------------------

def text_embedding(backbone, texts: list[str], batch_size: int = TEXT_BATCH) -> list[float]:
    """The frozen backbone's last hidden states over `texts` (the encoder's for an encoder-decoder),
    mean-pooled over each text's tokens (at most `max_input_length`), then averaged over the texts.
    Run by `Executor.embed_texts` (an `EmbedTexts` unit: where the backbone is)."""
    import torch

    model = backbone.model.get_encoder() if backbone.is_encoder_decoder else backbone.model.base_model
    tokenizer = backbone.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total = torch.zeros(backbone.hidden_size, dtype=torch.float64)
    for start in range(0, len(texts), batch_size):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"][: backbone.max_input_length] or [pad]
               for t in texts[start:start + batch_size]]
        width = max(len(i) for i in ids)
        input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=backbone.device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=backbone.device)
        with torch.no_grad(), backbone.autocast():
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state.double()
        pooled = (hidden * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
        total += pooled.sum(dim=0).cpu()
    return (total / max(len(texts), 1)).tolist()


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


# ---- the analysis (no torch) -------------------------------------------------------------------

def _mean_vector(by_seed: dict) -> list[float]:
    vectors = list(by_seed.values())
    return [sum(v[i] for v in vectors) / len(vectors) for i in range(len(vectors[0]))]


def _gains(parts: list[RunPart]) -> tuple[dict, dict]:
    """(per target, per split) gain of each method over PT: {method: {target: mean gain}} and
    {method: {(target, seed): gain}}, over the splits both the method and PT have."""
    per_split: dict[str, dict[tuple[str, int], float]] = {}
    for part in parts:
        for (method, target, seed), score in part.scores.items():
            base = part.scores.get((PT, target, seed))
            if method != PT and base is not None:
                per_split.setdefault(method, {})[(target, seed)] = score - base
    per_target = {method: {target: statistics.fmean(g for (t, _), g in splits.items() if t == target)
                           for target in dict.fromkeys(t for t, _ in splits)}
                  for method, splits in per_split.items()}
    return per_target, per_split


def compute_analysis(parts: list[RunPart], embeddings: dict[str, dict], top_k: int) -> dict:
    """The analysis.json document of `parts` from task embeddings {kind: {task: {seed: vector}}}."""
    sources = list(dict.fromkeys(s for part in parts for s in part.sources))
    targets = list(dict.fromkeys(t for part in parts for t in part.targets))
    gains, split_gains = _gains(parts)
    doc = {"version": ANALYSIS_VERSION, "runs": [{"run_id": p.run_id, "sources": p.sources, "targets": p.targets,
                                                  "source_sets": p.source_sets} for p in parts],
           "sources": sources, "targets": targets, "kinds": {}, "correlations": [], "gains": gains}
    own = {t: part.source_sets.get(t, part.sources) for part in parts for t in part.targets}
    for kind in (k for k in KINDS if k in embeddings):
        vectors = embeddings[kind]
        source_vectors = {s: _mean_vector(vectors[s]) for s in sources}
        matrix = cosine_matrix([_mean_vector(vectors[t]) for t in targets], [source_vectors[s] for s in sources])
        doc["kinds"][kind] = {"matrix": matrix, "nearest": ranked_sources(matrix, sources, targets, top_k)}
        task_sim = {t: set_similarity(row, sources, own[t], t) for t, row in zip(targets, matrix)}
        split_sim = {(t, seed): set_similarity(cosine_matrix([v], [source_vectors[s] for s in sources])[0],
                                               sources, own[t], t)
                     for t in targets for seed, v in vectors[t].items()}
        for method in sorted(gains):
            for aggregate in AGGREGATES:
                for level, sims, by_key in (("task", task_sim, gains[method]), ("split", split_sim,
                                                                              split_gains[method])):
                    keys = [key for key in by_key if aggregate in sims.get(key, {})]
                    stat = spearman([sims[key][aggregate] for key in keys], [by_key[key] for key in keys])
                    doc["correlations"].append({"similarity": kind, "method": method, "aggregate": aggregate,
                                                "level": level, **stat})
    doc["note"] = reading_note(len(targets))
    return doc


def reading_note(n_targets: int) -> str:
    """What a correlation over this many targets can say (the floor of its p-value)."""
    floor = 2 / math.factorial(n_targets) if n_targets >= 3 else 1.0
    note = (f"{n_targets} target task{'s' if n_targets != 1 else ''}: over targets, a Spearman correlation's "
            f"two-sided permutation p cannot go below 2/n! = {min(floor, 1.0):.3g} whatever the data")
    if n_targets < 16:
        note += ("; a rho of 0.5 reaches p < 0.05 only with about 16 targets or more (rho 0.7: about 9), so "
                 "read these correlations as descriptive; the per-split rows pool splits of the same "
                 "targets, which are not independent")
    return note


# ---- running it ----------------------------------------------------------------------------

def analyse_runs(runs: list[Run], settings: AnalysisConfig, backend, events) -> dict:
    """Compute, store (in the first run's directory) and return the analysis of finished `runs`.

    `backend`: where the embedding units run, an engine.execution.grid `Backend` (a run's Ray workers) or an
    `Executor` (this process's backbone of the runs' model); `events` is a `GridEvents` (message, stage,
    should_stop). Embedding jobs resume from their checkpoints.
    """
    from engine.experiment.data import TaskData

    if not settings.similarity:
        raise AnalysisError("no similarity kind to compute (analysis.similarity is empty)")
    preset, plan = check_together(runs)
    parts = [run_part(r) for r in runs]
    preset = embedding_preset(preset, settings)
    tasks = list(dict.fromkeys(t for part in parts for t in part.sources + part.targets))
    plan = dataclasses.replace(plan, seeds=sorted({s for part in parts for s in part.seeds}))
    data = TaskData(plan.data_dir, plan.config_dir)
    lacking = [t for t in tasks if not set(data.seeds(t, preset.data.k)) & set(plan.seeds)]
    if lacking:
        raise AnalysisError(f"task(s) {', '.join(lacking)} have no k={preset.data.k} split among the runs' seeds "
                            f"{plan.seeds}: no embedding to compare")
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
        embeddings["prompt"] = read_prompt_embeddings(runs[0], settings, cells)
    if "text" in settings.similarity:
        embeddings["text"] = texts
    doc = compute_analysis(parts, embeddings, settings.top_k)
    write_json_atomic(analysis_path(runs[0]), doc)
    events.message(f"analysis: stored {analysis_path(runs[0])}")
    return doc


def run_stage(run: Run, preset: Preset, plan: Plan, backend, events) -> dict | None:
    """The analysis as a run's last stage (after `run_grid`, on its backend): nothing when `[analysis]
    similarity` is empty."""
    if not preset.analysis.similarity:
        return None
    return analyse_runs([run], preset.analysis, backend, events)


# ---- text output ---------------------------------------------------------------------------

def render_text(doc: dict, digits: int = 2) -> str:
    """The analysis as plain text: each kind's matrix (targets x sources) and nearest sources, the
    correlation table, and the note on how little few targets can say."""
    sources, targets = doc["sources"], doc["targets"]
    lines = []
    width = max([len(t) for t in targets] + [6])
    for kind, body in doc["kinds"].items():
        lines.append(f"task similarity ({kind} embeddings): cosine, target x source")
        labels = [f"S{i + 1}" for i in range(len(sources))]
        lines.append(" " * width + "  " + "  ".join(f"{label:>{digits + 3}}" for label in labels))
        for target, row in zip(targets, body["matrix"]):
            lines.append(f"{target:<{width}}  " + "  ".join(f"{sim:>{digits + 3}.{digits}f}" for sim in row))
        lines.append("  " + ", ".join(f"S{i + 1} = {s}" for i, s in enumerate(sources)))
        for target, items in body["nearest"].items():
            lines.append(f"  nearest to {target}: " + ", ".join(f"{s} ({sim:.{digits}f})" for s, sim in items))
        lines.append("")
    if doc["correlations"]:
        lines.append("Spearman rho of the gain over PT vs similarity to the run's sources (n, permutation p)")
        lines.append(f"{'similarity':<10} {'method':<8} {'aggregate':<9} {'level':<5} {'n':>3} {'rho':>6} {'p':>6}")
        for c in doc["correlations"]:
            rho = "-" if c["rho"] is None else f"{c['rho']:+.2f}"
            p = "-" if c["p"] is None else f"{c['p']:.3f}"
            lines.append(f"{c['similarity']:<10} {c['method']:<8} {c['aggregate']:<9} {c['level']:<5} "
                         f"{c['n']:>3} {rho:>6} {p:>6}")
    lines.append(f"note: {doc['note']}")
    return "\n".join(lines) + "\n"
