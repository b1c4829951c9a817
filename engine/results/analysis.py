"""The task similarity analysis as a document: analysis.json, its reading and its text.

The analysis stage (engine.execution.analysis) computes task embeddings; this module turns them and the
runs' results into the document (target x source cosine matrices, each target's nearest sources, and
the Spearman correlation of each method's gain over PT with similarity), reads it back and renders it.
No torch here.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.experiment.config import AnalysisConfig, Preset
from engine.experiment.methods import PT
from engine.experiment.plan import Plan
from engine.experiment.similarity import ANALYSIS_FILE, cosine_matrix, ranked_sources, set_similarity, spearman
from engine.experiment.records import SPLITS, CellRecord
from engine.store.run_dir import Run, read_json, read_results, write_json_atomic


ANALYSIS_VERSION = 1


KINDS = ("prompt", "text")


AGGREGATES = ("max", "mean")


class AnalysisError(ValueError):
    """An analysis that cannot be made (a run not finished, runs that do not go together): one line."""


def analysis_path(run: Run) -> Path:
    return run.path / ANALYSIS_FILE


def read_analysis(run: Run) -> dict | None:
    """The stored analysis.json of a run (None when missing or damaged)."""
    doc = read_json(analysis_path(run))
    return doc if isinstance(doc, dict) and doc.get("version") == ANALYSIS_VERSION else None


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
    results = read_results(run.results_path)
    if not isinstance(results, dict) or not isinstance(results.get(SPLITS), list):
        raise AnalysisError(f"run {run.id} has no results yet ({run.status()['state']}): analyse a finished run")
    plan = Plan(**run.config()["plan"])
    scores = {c.split_key: c.test for c in map(CellRecord.from_dict, results[SPLITS])
              if isinstance(c.test, (int, float)) and math.isfinite(c.test)}
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


# ---- an analysis asked for after the run (`mpt-tui analyse`) ---------------------------------

REQUEST_FILE = "analysis-request.json"


def request_analysis(run: Run, settings: AnalysisConfig, others: list[Run] = ()) -> None:
    """Ask for the analysis of a finished run (with `others`, finished runs it reads): written into the
    run directory, so the analysis stage that the worker then runs, and any `resume` of it, use these
    settings. The analysis.json it writes carries the request (`requested`): how a finished run shows
    that its analysis was added later."""
    write_json_atomic(run.path / REQUEST_FILE, {"settings": dataclasses.asdict(settings),
                                                "others": [str(o.path) for o in others], "at": time.time()})


def analysis_request(run: Run) -> dict | None:
    """The stored request of `mpt-tui analyse` (settings, other runs' directories, when), or None."""
    doc = read_json(run.path / REQUEST_FILE)
    return doc if isinstance(doc, dict) and isinstance(doc.get("settings"), dict) else None


def check_analysable(runs: list[Run], settings: AnalysisConfig) -> tuple[Preset, Plan, list[RunPart], list[str]]:
    """Everything an analysis of `runs` needs, checked before any work: the runs finished and go together,
    a similarity kind is asked for, and every task has a split among the runs' seeds. The first run's
    preset (with `settings`), the joint plan (all runs' seeds), each run's part and the tasks to embed;
    an AnalysisError (one line) otherwise."""
    from engine.experiment.data import TaskData

    if not settings.similarity:
        raise AnalysisError("no similarity kind to compute (analysis.similarity is empty)")
    preset, plan = check_together(runs)
    parts = [run_part(r) for r in runs]
    tasks = list(dict.fromkeys(t for part in parts for t in part.sources + part.targets))
    plan = dataclasses.replace(plan, seeds=sorted({s for part in parts for s in part.seeds}))
    data = TaskData(plan.data_dir, plan.config_dir)
    lacking = [t for t in tasks if not set(data.seeds(t, preset.data.k)) & set(plan.seeds)]
    if lacking:
        raise AnalysisError(f"task(s) {', '.join(lacking)} have no k={preset.data.k} split among the runs' seeds "
                            f"{plan.seeds}: no embedding to compare")
    return dataclasses.replace(preset, analysis=settings), plan, parts, tasks
