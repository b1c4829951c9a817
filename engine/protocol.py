"""The experiment protocol, independent of any algorithm.

A preset is turned into a `Plan` (tasks and seeds checked against the data
before anything runs), the plan into downstream grid cells (method x target
task x split seed x learning rate), and finished cells into the paper's table:
per split the learning rate with the best dev score, per task mean and std of
the chosen test scores over splits, and the mean over tasks.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.config import Preset, PresetError
from engine.data import TaskData, TaskDataError


@dataclass
class Plan:
    data_dir: str
    config_dir: str | None
    setting: str
    sources: list[str]
    targets: list[str]
    seeds: list[int]
    methods: list[str] = field(default_factory=lambda: ["pt"])
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def open_data(preset: Preset) -> TaskData:
    try:
        return TaskData(preset.data.dir, preset.data.config_dir or None)
    except TaskDataError as exc:
        raise PresetError(f"data.dir: {exc}") from None


def make_plan(preset: Preset) -> Plan:
    """Check the preset against the data; every problem is a one-line PresetError."""
    data = open_data(preset)
    setting_name, sources, targets = "", list(preset.data.sources), list(preset.data.targets)
    if preset.data.setting:
        try:
            setting = data.load_setting(preset.data.setting)
        except TaskDataError as exc:
            raise PresetError(f"data.setting: {exc}") from None
        setting_name = setting.name
        sources = sources or setting.source
        targets = targets or setting.target
    if not targets:
        raise PresetError("data.targets: no target tasks (set data.targets or a data.setting with a 'test' list)")
    for key, tasks in (("data.sources", sources), ("data.targets", targets)):
        for task in tasks:
            if not data.has_task(task):
                raise PresetError(f"{key}: unknown task '{task}' (not found in {data.tasks_dir})")
    k = preset.data.k
    for task in targets:
        if not data.has_test(task, k):
            raise PresetError(f"data.targets: task '{task}' has no test file for k={k}; it can serve as a source task only")
        try:
            info = data.task_info(task)
        except TaskDataError as exc:
            raise PresetError(f"data.targets: {exc}") from None
        if info.task_type == "classification" and not info.options:
            raise PresetError(f"data.targets: classification task '{task}' has no label options "
                              f"(none in its files and no task config)")
        missing = [s for s in preset.data.seeds if s not in data.seeds(task, k)]
        if missing:
            raise PresetError(f"data.seeds: task '{task}' has no k={k} split for seed(s) {missing} "
                              f"(has {data.seeds(task, k)})")
    methods = ["pt"] + list(preset.upstream.methods)
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise PresetError(f"upstream.methods: {', '.join(repeated)} listed twice")
    if preset.upstream.methods and not sources:
        raise PresetError("data.sources: the source task list is empty, but upstream.methods "
                          f"({', '.join(preset.upstream.methods)}) learn on source tasks")
    for method in preset.upstream.methods:
        reuse = preset.upstream.hyperparameters[method].prompt_file
        if reuse and not Path(reuse).is_file():
            raise PresetError(f"upstream.{method}.prompt_file: {reuse} does not exist")
    warnings = []
    overlap = sorted(set(sources) & set(targets))
    if overlap:
        warnings.append(f"source and target tasks overlap: {', '.join(overlap)} (the paper keeps them disjoint)")
    return Plan(str(data.tasks_dir), str(data.config_dir) if data.config_dir else None, setting_name,
                sources, targets, list(preset.data.seeds), methods=methods, warnings=warnings)


@dataclass(frozen=True)
class Cell:
    method: str
    task: str
    seed: int
    lr: float

    @property
    def id(self) -> str:
        return f"{self.method}__{self.task}__s{self.seed}__lr{self.lr:g}"


def grid_cells(plan: Plan, learning_rates: list[float]) -> list[Cell]:
    return [Cell(m, t, s, lr) for m in plan.methods for t in plan.targets for s in plan.seeds for lr in learning_rates]


def select_and_aggregate(cell_results: list[dict]) -> dict:
    """Per (method, task, seed) the best-dev learning rate; per (method, task) mean/std over seeds.

    Ties in dev score keep the learning rate listed first. Std is the population
    standard deviation over the splits (0 for a single split).
    """
    chosen: dict[tuple, dict] = {}
    for cell in cell_results:  # cells arrive in grid order, so ">" keeps the first on ties
        key = (cell["method"], cell["task"], cell["seed"])
        if key not in chosen or _better(cell["dev"], chosen[key]["dev"]):
            chosen[key] = cell
    splits = [dict(c) for c in chosen.values()]
    per_task: dict[str, dict[str, dict]] = {}
    for method, task in sorted({(c["method"], c["task"]) for c in splits}, key=lambda mt: mt):
        scores = [c["test"] for c in splits if c["method"] == method and c["task"] == task]
        metric = next(c["metric"] for c in splits if c["method"] == method and c["task"] == task)
        per_task.setdefault(method, {})[task] = {
            "mean": statistics.fmean(scores), "std": statistics.pstdev(scores) if len(scores) > 1 else 0.0,
            "n": len(scores), "metric": metric}
    means = {m: statistics.fmean(t["mean"] for t in tasks.values()) for m, tasks in per_task.items()}
    return {"splits": splits, "tasks": per_task, "mean": means}


def _better(a: float, b: float) -> bool:
    if math.isnan(b):
        return not math.isnan(a)
    return a > b
