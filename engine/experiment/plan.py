"""The experiment protocol, independent of any algorithm.

A preset is turned into a `Plan` (tasks and seeds checked against the data
before anything runs), the plan into downstream grid cells (method x target
task x split seed x learning rate), and finished cells into the paper's table:
per split the learning rate with the best dev score, per task mean and std of
the chosen test scores over splits, and the mean over tasks.

`data.setting = "qin2023:<name>"` takes the authors' own source/target lists
(presets/paper-settings/<name>.json, with where in their code each list comes from).

`data.sources = "nearest:K"` gives each target its own source set: the K candidates most similar to it
by a stored similarity matrix (`data.similarity`: a run's analysis.json, engine.experiment.similarity), the
candidates being the setting's sources (or the matrix's, without a setting). The plan keeps each
target's set (`source_sets`, in candidate order, so targets with the same K sources share one set and
one upstream stage per method: engine.execution.grid); with a list of sources every target has the same set
and `source_sets` is empty.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from engine.experiment.config import Preset, PresetError, builtin_presets_dir, nearest_k
from engine.experiment.data import TaskData, TaskDataError
from engine.experiment.records import (AGG_MEAN, AGG_METRIC, AGG_N, AGG_STD, MEAN, SPLITS, TASKS, CellRecord,
                                       as_record)

PAPER_SETTING_PREFIX = "qin2023:"  # data.setting = "qin2023:<name>": the authors' own source/target lists


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
    # a paper setting's tasks that this data lacks (skipped; absent from plans stored before they existed)
    missing_sources: list[str] = field(default_factory=list)
    missing_targets: list[str] = field(default_factory=list)
    # data.sources = "nearest:K": each target's own sources (`sources` is their union); empty: every target
    # learns from `sources` (and plans stored before source sets existed)
    source_sets: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def set_key(self, target: str) -> str:
        """The short stable key of `target`'s source set; "" when every target shares the plan's sources."""
        return source_set_key(self.source_sets[target]) if self.source_sets else ""

    def upstream_sets(self) -> dict[str, list[str]]:
        """{key: sources} of each distinct source set, in target order: one upstream stage per method each."""
        if not self.source_sets:
            return {"": list(self.sources)}
        return {self.set_key(t): list(self.source_sets[t]) for t in self.targets}

    def targets_of(self, key: str) -> list[str]:
        """The targets that start from source set `key`."""
        return [t for t in self.targets if self.set_key(t) == key]


def source_set_key(sources: list[str]) -> str:
    """8 hex digits naming a source set (its tasks in order) in upstream file and unit names."""
    return hashlib.sha256(json.dumps(list(sources)).encode("utf-8")).hexdigest()[:8]


@dataclass(frozen=True)
class PaperSetting:
    """One of the paper's settings: the authors' source and target task lists, and where they come from."""

    name: str
    sources: list[str]
    targets: list[str]
    source: str

    @property
    def key(self) -> str:
        return PAPER_SETTING_PREFIX + self.name


def paper_settings_dir() -> Path:
    return builtin_presets_dir() / "paper-settings"


def paper_setting_names() -> list[str]:
    return sorted(p.stem for p in paper_settings_dir().glob("*.json"))


def load_paper_setting(name: str) -> PaperSetting:
    """`name` with or without the "qin2023:" prefix; an unknown one is a one-line PresetError."""
    name = name.removeprefix(PAPER_SETTING_PREFIX)
    path = paper_settings_dir() / f"{name}.json"
    if not name or "/" in name or not path.is_file():
        raise PresetError(f"data.setting: unknown paper setting '{PAPER_SETTING_PREFIX}{name}' (known: "
                          f"{', '.join(PAPER_SETTING_PREFIX + n for n in paper_setting_names())})")
    raw = json.loads(path.read_text(encoding="utf-8"))
    return PaperSetting(name, list(raw["train"]), list(raw["test"]), str(raw.get("source", "")))


def open_data(preset: Preset) -> TaskData:
    try:
        return TaskData(preset.data.dir, preset.data.config_dir or None)
    except TaskDataError as exc:
        raise PresetError(f"data.dir: {exc}") from None


def make_plan(preset: Preset, find_run_dir: Callable[[str], Path] | None = None) -> Plan:
    """Check the preset against the data; every problem is a one-line PresetError.

    A paper setting's own lists are taken as far as the data has them: a source task the data
    lacks, or a target task it lacks (or without a test file, or without some of data.seeds), is
    skipped, recorded on the plan and said in one warning. Lists written in the preset stay strict.
    `find_run_dir` turns a run id in `data.similarity` into its directory (or raises PresetError): the
    runs root is the store's, so engine.runner.prepare.plan_run passes it; without it only paths work.
    """
    data = open_data(preset)
    k = preset.data.k
    nearest = nearest_k(preset.data.sources)
    analysis = load_similarity(preset, find_run_dir) if nearest else None
    setting_name, targets = "", list(preset.data.targets)
    sources = [] if nearest else list(preset.data.sources)
    paper: PaperSetting | None = None
    missing_sources: list[str] = []
    missing_targets: list[str] = []
    skipped_targets: dict[str, list[str]] = {}  # why -> tasks, in the paper's order
    if preset.data.setting.startswith(PAPER_SETTING_PREFIX):
        paper = load_paper_setting(preset.data.setting)
        setting_name = paper.key
        if not sources:
            sources = [t for t in paper.sources if data.has_task(t)]
            missing_sources = [t for t in paper.sources if not data.has_task(t)]
        if not targets:
            for task in paper.targets:
                why = _unusable_target(data, task, k, preset.data.seeds)
                if why:
                    skipped_targets.setdefault(why, []).append(task)
                    missing_targets.append(task)
                else:
                    targets.append(task)
            if not targets:
                raise PresetError(f"data.setting: none of the {len(paper.targets)} target tasks of paper setting "
                                  f"{paper.name} is usable in {data.tasks_dir} ({_why_list(skipped_targets)})")
        if missing_sources and not sources and preset.upstream.methods:
            raise PresetError(f"data.setting: none of the {len(paper.sources)} source tasks of paper setting "
                              f"{paper.name} is in {data.tasks_dir}, but upstream.methods "
                              f"({', '.join(preset.upstream.methods)}) learn on source tasks")
    elif preset.data.setting:
        try:
            setting = data.load_setting(preset.data.setting)
        except TaskDataError as exc:
            raise PresetError(f"data.setting: {exc}") from None
        setting_name = setting.name
        sources = sources or setting.source
        targets = targets or setting.target
    if not targets:
        raise PresetError("data.targets: no target tasks (set data.targets or a data.setting with a 'test' list)")
    if nearest:
        sources = sources or list(analysis["sources"])  # the candidates: the setting's sources, else the matrix's
    for key, tasks in (("data.sources", sources), ("data.targets", targets)):
        for task in tasks:
            if not data.has_task(task):
                raise PresetError(f"{key}: unknown task '{task}' (not found in {data.tasks_dir})")
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
    source_sets: dict[str, list[str]] = {}
    if nearest:
        source_sets = nearest_source_sets(analysis, sources, targets, nearest, preset.data.similarity_kind,
                                          preset.data.similarity)
        sources = [s for s in sources if any(s in chosen for chosen in source_sets.values())]
    for method in preset.upstream.methods:
        reuse = preset.upstream.hyperparameters[method].prompt_file
        if reuse and not Path(reuse).is_file():
            raise PresetError(f"upstream.{method}.prompt_file: {reuse} does not exist")
    check_task_files(preset, data, sources if preset.upstream.methods else [], targets)
    warnings = []
    if preset.data.similarity and not nearest:
        warnings.append("data.similarity is set but data.sources is a list: the similarity matrix is not used "
                        "(data.sources = \"nearest:K\" uses it)")
    if paper and (missing_targets or missing_sources):
        warnings.append(_missing_warning(paper, skipped_targets, missing_sources, bool(preset.upstream.methods)))
    overlap = sorted(set(sources) & set(targets))
    if overlap:
        authors = paper and set(overlap) <= set(paper.sources) & set(paper.targets)
        why = (f"the authors' own split, {paper.key}, lists {'it' if len(overlap) == 1 else 'them'} on both sides"
               if authors else "the paper keeps them disjoint")
        warnings.append(f"source and target tasks overlap: {', '.join(overlap)} ({why})")
    return Plan(str(data.tasks_dir), str(data.config_dir) if data.config_dir else None, setting_name,
                sources, targets, list(preset.data.seeds), methods=methods, warnings=warnings,
                missing_sources=missing_sources, missing_targets=missing_targets, source_sets=source_sets)


def load_similarity(preset: Preset, find_run_dir: Callable[[str], Path] | None) -> dict:
    """The analysis.json that `data.similarity` names: a file, a run directory, or a run id (or its unique
    prefix) that `find_run_dir` finds; anything else is a one-line PresetError naming the key."""
    from engine.experiment.similarity import ANALYSIS_FILE

    ref = preset.data.similarity
    if not ref:
        raise PresetError(f"data.similarity: data.sources = {preset.data.sources!r} needs a stored similarity "
                          f"matrix: a run id whose analysis is done (mpt-tui analyse) or an {ANALYSIS_FILE} file")
    path = Path(ref).expanduser()
    if not path.exists() and not ref.endswith(".json"):
        if find_run_dir is None:
            raise PresetError(f"data.similarity: {ref} is neither a file nor a run directory")
        path = find_run_dir(ref)
    if path.is_dir():
        path = path / ANALYSIS_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("kinds"), dict) or "sources" not in doc:
        why = "does not exist" if not path.exists() else "is not a readable analysis"
        raise PresetError(f"data.similarity: {path} {why} (run `mpt-tui analyse RUN_ID` first)")
    doc["file"] = str(path)
    return doc


def nearest_source_sets(analysis: dict, candidates: list[str], targets: list[str], k: int, kind: str,
                        ref: str) -> dict[str, list[str]]:
    """{target: its k candidates most similar to it by the analysis's `kind` matrix}, each set in candidate
    order (so equal sets are equal lists); a target or candidate the matrix lacks is a PresetError."""
    from engine.experiment.similarity import nearest_sources

    file = analysis["file"]
    if kind not in analysis["kinds"]:
        have = ", ".join(analysis["kinds"]) or "none"
        raise PresetError(f"data.similarity_kind: {file} has no '{kind}' similarity matrix (it has: {have})")
    for what, tasks, stored in (("target", targets, analysis.get("targets", [])),
                                ("source", candidates, analysis["sources"])):
        lacking = [t for t in tasks if t not in stored]
        if lacking:
            raise PresetError(f"data.similarity: {file} has no similarity for {what} task(s) {', '.join(lacking)} "
                              f"(its {what}s: {', '.join(stored)})")
    for target in targets:
        if len([s for s in candidates if s != target]) < k:
            raise PresetError(f"data.sources: nearest:{k} but target {target} has only "
                              f"{len([s for s in candidates if s != target])} candidate sources")
    matrix = analysis["kinds"][kind]["matrix"]
    rows = [analysis["targets"].index(t) for t in targets]
    columns = [analysis["sources"].index(s) for s in candidates]
    among = {"sources": candidates, "targets": targets,  # the matrix restricted to this run's candidates
             "kinds": {kind: {"matrix": [[matrix[i][j] for j in columns] for i in rows]}}}
    chosen = nearest_sources(among, k, kind)
    return {t: [s for s in candidates if s in chosen[t]] for t in targets}


def _unusable_target(data: TaskData, task: str, k: int, seeds: list[int]) -> str:
    """Why a paper setting's target task cannot be run on this data ("" when it can)."""
    if not data.has_task(task):
        return "absent"
    if not data.has_test(task, k):
        return f"no k={k} test file"
    lacking = [s for s in seeds if s not in data.seeds(task, k)]
    if lacking:
        return f"no k={k} split for seed(s) {', '.join(map(str, lacking))}"
    return ""


def _why_list(skipped: dict[str, list[str]]) -> str:
    return "; ".join(f"{why}: {', '.join(tasks)}" for why, tasks in skipped.items())


def _missing_warning(paper: PaperSetting, skipped: dict[str, list[str]], missing_sources: list[str],
                     upstream: bool) -> str:
    """One line: which of the paper's tasks this run skips and what that does to its comparison with the paper."""
    parts, consequences = [], []
    n_targets = sum(len(tasks) for tasks in skipped.values())
    if n_targets:
        parts.append(f"{n_targets} of {len(paper.targets)} targets missing from the data ({_why_list(skipped)})")
        consequences.append("results are not comparable to the paper's table for the missing rows")
    if missing_sources:
        parts.append(f"{len(missing_sources)} of {len(paper.sources)} sources"
                     f"{'' if n_targets else ' missing from the data'} ({', '.join(missing_sources)})")
        consequences.append("the upstream prompts are learned on fewer sources" if upstream
                            else "the source list is shorter than the paper's")
    return f"paper setting {paper.name}: skipping {' and '.join(parts)}: {' and '.join(consequences)}"


def check_task_files(preset: Preset, data: TaskData, sources: list[str], targets: list[str]) -> None:
    """Read every split the run will read (sources: train and dev; targets: train, dev and test), so bad
    data (invalid JSON, non-UTF-8 bytes, a label outside the options, a config that does not parse) is
    refused with its file and line before a run directory exists, not inside the worker."""
    k, seeds = preset.data.k, set(preset.data.seeds)
    try:
        for task in sources:
            for seed in sorted(set(data.seeds(task, k)) & seeds):
                data.load_split(task, k, seed, need_test=False)
        for task in targets:
            for seed in preset.data.seeds:
                data.load_split(task, k, seed)
    except TaskDataError as exc:
        raise PresetError(f"data: {exc}") from None


@dataclass(frozen=True)
class Cell:
    method: str
    task: str
    seed: int
    lr: float

    @property
    def id(self) -> str:
        """'<method>__<task>__s<seed>__lr<lr:g>': file names under cells/, prompts/, checkpoints/ and the
        "cell" of metrics.jsonl events; `Cell.from_id` and `parse_cell_id` read it back."""
        return f"{self.method}{CELL_ID_SEP}{self.task}{CELL_ID_SEP}s{self.seed}{CELL_ID_SEP}lr{self.lr:g}"

    @classmethod
    def from_id(cls, cell_id: str) -> "Cell":
        """The cell `cell_id` names (the inverse of `Cell.id`); ValueError when it is not a cell id."""
        method, task, seed, lr = parse_cell_id(cell_id)
        if method == "?":
            raise ValueError(f"'{cell_id}' is not a cell id (<method>__<task>__s<seed>__lr<lr>)")
        return cls(method, task, int(seed), float(lr))


CELL_ID_SEP = "__"


def parse_cell_id(cell_id: str) -> tuple[str, str, str, str]:
    """'maml__task__s13__lr0.3' -> ('maml', 'task', '13', '0.3'), the parts as `Cell.id` wrote them (strings,
    for display); anything else: ('?', the id, '', ''). The method is the first part, the seed and learning
    rate the last two, the task whatever lies between (so a task name may itself contain '__')."""
    parts = cell_id.split(CELL_ID_SEP)
    if len(parts) >= 4 and parts[0]:
        seed, lr = parts[-2][1:], parts[-1][2:]
        task = CELL_ID_SEP.join(parts[1:-2])
        if parts[-2].startswith("s") and parts[-1].startswith("lr") and task and _is_int(seed) and _is_float(lr):
            return parts[0], task, seed, lr
    return "?", cell_id, "", ""


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def grid_cells(plan: Plan, learning_rates: list[float]) -> list[Cell]:
    return [Cell(m, t, s, lr) for m in plan.methods for t in plan.targets for s in plan.seeds for lr in learning_rates]


def select_and_aggregate(cell_results: list) -> dict:
    """Per (method, task, seed) the best-dev learning rate; per (method, task) mean/std over seeds.

    `cell_results`: engine.experiment.records.CellRecord (or their dicts), in grid order. Ties in dev score
    keep the learning rate listed first. Std is the population standard deviation over the splits (0 for a
    single split). Returns results.json's document: "splits" (the chosen records, as dicts), "tasks", "mean".
    """
    chosen: dict[tuple, CellRecord] = {}
    for cell in map(as_record, cell_results):  # cells arrive in grid order, so ">" keeps the first on ties
        if cell.split_key not in chosen or _better(cell.dev, chosen[cell.split_key].dev):
            chosen[cell.split_key] = cell
    splits = list(chosen.values())
    per_task: dict[str, dict[str, dict]] = {}
    for method, task in sorted({(c.method, c.task) for c in splits}, key=lambda mt: mt):
        scores = [c.test for c in splits if c.method == method and c.task == task]
        metric = next(c.metric for c in splits if c.method == method and c.task == task)
        per_task.setdefault(method, {})[task] = {
            AGG_MEAN: statistics.fmean(scores), AGG_STD: statistics.pstdev(scores) if len(scores) > 1 else 0.0,
            AGG_N: len(scores), AGG_METRIC: metric}
    means = {m: statistics.fmean(t[AGG_MEAN] for t in tasks.values()) for m, tasks in per_task.items()}
    return {SPLITS: [c.to_dict() for c in splits], TASKS: per_task, MEAN: means}


def _better(a: float, b: float) -> bool:
    if math.isnan(b):
        return not math.isnan(a)
    return a > b
