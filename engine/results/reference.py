"""The authors' own numbers (Qin et al., ACL 2023), beside ours.

presets/reference/qin2023.json is written by scripts/reference_numbers.py from the result CSVs of their
repository (github.com/qcwthu/transferfile, branch master; the commit is in the file): per setting, method
and target task the mean and population std of test_performance over their splits (x100), the number of
splits, the file and commit it came from, full fine-tuning as a labelled extra, and the rows left out.

`reference_table(name)` is the authors' table for one of the paper settings in presets/paper-settings/
(rows: that setting's targets, in its order; a mean over targets is over the targets the method's file
has, and says so when that is fewer). `compare(report, table)` sets each column of a run's report beside
it: the difference of the run's mean to the reported mean over the targets both have. A run is a
reproduction only with their model and data; otherwise it is compared, not reproduced. Torch-free.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from engine.experiment.config import builtin_presets_dir
from engine.experiment.methods import label
from engine.experiment.plan import PAPER_SETTING_PREFIX, load_paper_setting, paper_setting_names
from engine.results.report import Column, Report

REFERENCE_FILE = "reference/qin2023.json"
METHOD_ORDER = ("pt", "mtl", "maml", "fomaml", "reptile")
FULL_FINETUNING = "ft"
FT_LABEL = "full FT"  # full fine-tuning of the model: an extra, not a prompt method
THEIR_MODEL = "google/t5-large-lm-adapt"
THEIR_SEEDS = (13, 21, 42, 87, 100)


class ReferenceError(ValueError):
    """An unknown setting name: one line listing the known ones."""


def reference_path() -> Path:
    """The shipped data (package data of engine.presets)."""
    return builtin_presets_dir() / REFERENCE_FILE


@lru_cache(maxsize=1)
def load_reference(path: str | None = None) -> dict:
    file = Path(path) if path else reference_path()
    return json.loads(file.read_text(encoding="utf-8"))


def reference_names() -> list[str]:
    """The paper settings (presets/paper-settings) that the reference data covers."""
    data = load_reference()
    return [n for n in paper_setting_names() if n in data["settings"]]


def method_label(method: str) -> str:
    return FT_LABEL if method == FULL_FINETUNING else label(method)


@dataclass
class ReferenceTable:
    setting: str  # e.g. "class_to_class"
    tasks: list[str]  # the setting's targets, in presets/paper-settings order
    methods: list[str]  # pt, mtl, maml, fomaml, reptile, then ft (the extra)
    scores: dict[tuple[str, str], dict]  # (task, method) -> {"mean", "std", "n"}, x100
    means: dict[str, float | None]  # over the method's targets among `tasks`, x100
    counts: dict[str, int]  # targets in each method's mean
    files: dict[str, dict]  # method -> {"file", "commit", "shared_with"?}
    sources: str  # where the setting's task lists come from (presets/paper-settings)
    n_sources: int
    extra_tasks: dict[str, float]  # method -> mean over every target in their file, where it has more tasks
    n_file_tasks: dict[str, int]
    left_out: list[dict]
    notes: list[str] = field(default_factory=list)
    common_tasks: list[str] = field(default_factory=list)  # the targets every method has
    common_means: dict[str, float | None] = field(default_factory=dict)  # x100, over common_tasks
    repository: str = ""
    commit: str = ""
    model: str = ""
    data: str = ""
    metric: str = ""

    @property
    def key(self) -> str:
        return PAPER_SETTING_PREFIX + self.setting

    def score(self, task: str, method: str) -> dict | None:
        return self.scores.get((task, method))

    def common_mean(self, method: str, tasks) -> tuple[float | None, int]:
        """The method's mean (x100) over those of `tasks` it has, and their number."""
        values = [self.scores[(t, method)]["mean"] for t in tasks if (t, method) in self.scores]
        return (statistics.fmean(values) if values else None), len(values)

    def to_dict(self) -> dict:
        return {
            "setting": self.key, "repository": self.repository, "commit": self.commit, "model": self.model,
            "data": self.data, "metric": self.metric, "sources": self.sources, "n_sources": self.n_sources,
            "tasks": self.tasks, "methods": self.methods,
            "scores": {m: {t: self.scores[(t, m)] for t in self.tasks if (t, m) in self.scores} for m in self.methods},
            "means": self.means, "counts": self.counts, "common_tasks": self.common_tasks,
            "common_means": self.common_means, "files": self.files,
            "file_means_all_tasks": self.extra_tasks, "file_task_counts": self.n_file_tasks,
            "left_out": self.left_out, "notes": self.notes,
        }


def reference_table(name: str) -> ReferenceTable:
    """The authors' table for a paper setting, `name` with or without "qin2023:"."""
    name = name.removeprefix(PAPER_SETTING_PREFIX)
    known = reference_names()
    if name not in known:
        raise ReferenceError(f"unknown paper setting '{name}' (known: {', '.join(known)})")
    data = load_reference()
    paper = load_paper_setting(name)
    entry = data["settings"][name]
    by_method = dict(entry["methods"])
    if entry.get("full_finetuning"):
        by_method[FULL_FINETUNING] = entry["full_finetuning"]
    methods = [m for m in (*METHOD_ORDER, FULL_FINETUNING) if m in by_method]
    tasks = list(paper.targets)
    scores, means, counts, files, extra, n_file = {}, {}, {}, {}, {}, {}
    notes = []
    for method in methods:
        found = by_method[method]
        targets = found["targets"]
        for task in tasks:
            if task in targets:
                scores[(task, method)] = targets[task]
        values = [targets[t]["mean"] for t in tasks if t in targets]
        means[method] = statistics.fmean(values) if values else None
        counts[method] = len(values)
        files[method] = {k: found[k] for k in ("file", "commit", "shared_with") if k in found}
        n_file[method] = len(targets)
        missing = [t for t in tasks if t not in targets]
        if missing:
            notes.append(f"{method_label(method)}: their file has no result for {', '.join(missing)}; its mean is "
                         f"over {len(values)} of {len(tasks)} targets")
        if set(targets) - set(tasks):
            extra[method] = statistics.fmean(v["mean"] for v in targets.values())
    if extra:
        more = sorted(set().union(*(set(by_method[m]["targets"]) for m in extra)) - set(tasks))
        notes.append(f"their files also hold {len(more)} tasks outside this setting's {len(tasks)} targets "
                     f"({', '.join(more)}): left out of the table; the mean over all of them is under "
                     f"file_means_all_tasks")
    for method, f in files.items():
        if f.get("shared_with"):
            notes.append(f"{method_label(method)}: no file of its own for this setting; {f['file']} is "
                         f"{f['shared_with']}'s (same targets, and it does not depend on the source tasks)")
    incomplete = [m for m in methods if counts[m] < len(tasks)]
    common = [t for t in tasks if all((t, m) in scores for m in methods)]
    common_means = {m: statistics.fmean(scores[(t, m)]["mean"] for t in common) if common else None
                    for m in methods}
    if incomplete:
        notes.append(f"a mean over targets is over the targets that method has; over the {len(common)} targets "
                     f"every method has: see the common mean row")
    left_out = [r for r in data.get("left_out", []) if any(r["file"] == f["file"] for f in files.values())]
    return ReferenceTable(name, tasks, methods, scores, means, counts, files, paper.source, len(paper.sources),
                          extra, n_file, left_out, notes, common if incomplete else list(tasks),
                          common_means, data.get("repository", ""), data.get("commit", ""),
                          data.get("model", ""), data.get("data", ""), data.get("metric", ""))


def reference_for(setting: str) -> ReferenceTable | None:
    """The reference of a run's setting ("qin2023:NAME"), None for any other setting or one without data."""
    if not setting or not setting.startswith(PAPER_SETTING_PREFIX):
        return None
    try:
        return reference_table(setting)
    except ReferenceError:
        return None


# ---- a run beside the reference --------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    column: Column
    ours: float | None  # x100, over `tasks`
    reported: float | None  # x100, over `tasks`
    tasks: tuple[str, ...]  # the targets both have

    @property
    def delta(self) -> float | None:
        return self.ours - self.reported if self.ours is not None and self.reported is not None else None


@dataclass
class Comparison:
    table: ReferenceTable
    differences: dict[Column, Difference]
    runs: dict[str, dict]  # run_id -> {"model", "reproduction": bool, "why": [...]}
    notes: list[str] = field(default_factory=list)

    def difference(self, column: Column) -> Difference | None:
        return self.differences.get(column)

    def label(self) -> str:
        """One line saying what is compared with what."""
        t = self.table
        return (f"reported: Qin et al. 2023, {t.repository}@{t.commit[:7]}, {t.key}; their model {THEIR_MODEL} "
                f"(T5-Large LM-adapted), their data CrossFit's few-shot splits (16 or 32 shots), seeds "
                f"{', '.join(map(str, THEIR_SEEDS))}")

    def to_dict(self) -> dict:
        return {"reference": self.table.to_dict(), "label": self.label(), "runs": self.runs, "notes": self.notes,
                "differences": [{"run_id": d.column.run_id, "method": d.column.method, "ours": d.ours,
                                 "reported": d.reported, "delta": d.delta, "tasks": list(d.tasks)}
                                for d in self.differences.values()]}


def overview_block(report: Report, summary: dict) -> dict | None:
    """`mpt-tui show --json`'s "reported": the comparison in brief (the reported means, each column's
    difference over the targets both have, what differs); None for a run without a paper setting."""
    comparison = compare(report, [summary])
    if comparison is None:
        return None
    doc = comparison.to_dict()
    table = doc.pop("reference")
    return {"setting": table["setting"], "repository": table["repository"], "commit": table["commit"],
            "reported_means": table["means"], "reported_counts": table["counts"], **doc,
            "reference_notes": table["notes"]}


def run_identity(summary: dict) -> dict:
    """Whether a run is a reproduction (their model and seeds) or a comparison, and why."""
    why = []
    model = summary.get("model", "") or ""
    if model.rstrip("/").split("/")[-1] != THEIR_MODEL.split("/")[-1]:
        why.append(f"model {model or '?'} (theirs: {THEIR_MODEL})")
    seeds = summary.get("seeds") or []
    if seeds and sorted(seeds) != sorted(THEIR_SEEDS):
        why.append(f"seeds {', '.join(map(str, seeds))} (theirs: {', '.join(map(str, THEIR_SEEDS))})")
    return {"model": model, "reproduction": not why, "why": why}


def identity_text(info: dict) -> str:
    if info["reproduction"]:
        return "their model and seeds (data: check it is CrossFit's splits)"
    return "compared, not reproduced: " + "; ".join(info["why"])


def compare(report: Report, summaries: list[dict]) -> Comparison | None:
    """The reference beside `report`, when its runs share one "qin2023:" setting that has reference data."""
    settings = {s.get("setting", "") for s in summaries if s.get("run_id") in {c.run_id for c in report.columns}}
    tables = {s: reference_for(s) for s in settings}
    tables = {s: t for s, t in tables.items() if t is not None}
    if len(tables) != 1 or len(settings) != 1:
        return None
    table = next(iter(tables.values()))
    differences = {}
    for column in report.columns:
        ours = {t: 100 * a["mean"] for (t, c), a in report.scores.items() if c == column and a and a["mean"] == a["mean"]}
        both = tuple(t for t in table.tasks if t in ours and (t, column.method) in table.scores)
        if column.method not in table.methods:
            continue
        reported = table.common_mean(column.method, both)[0] if both else None
        differences[column] = Difference(column, statistics.fmean(ours[t] for t in both) if both else None,
                                         reported, both)
    runs = {s["run_id"]: run_identity(s) for s in summaries if s.get("run_id") in {c.run_id for c in report.columns}}
    notes = []
    for d in differences.values():
        if d.tasks and len(d.tasks) < len(table.tasks):
            notes.append(f"{report.header(d.column)}: the difference is over the {len(d.tasks)} of "
                         f"{len(table.tasks)} targets both have")
    return Comparison(table, differences, runs, notes)


def difference_text(diff: Difference | None) -> str:
    """'+1.2 (10)': ours minus reported (x100) over the targets both have, their number in brackets."""
    if diff is None or diff.delta is None:
        return "-"
    return f"{diff.delta:+.1f} ({len(diff.tasks)})"


def reported_text(cell: dict | None) -> str:
    return f"{cell['mean']:.1f} ± {cell['std']:.1f}" if cell else "-"


def reported_mean_text(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def reference_rows(comparison: Comparison, report: Report) -> list[tuple[str, list[str]]]:
    """The reported block as rows aligned with `report.columns`: one per target task (the reported
    mean ± std of each column's method), the reported mean over the targets each column shares, and
    the difference row. PT's and the methods' labels are the columns'."""
    table = comparison.table
    rows = []
    for task in table.tasks:
        rows.append((task, [reported_text(table.score(task, c.method)) for c in report.columns]))
    rows.append(("reported mean", [reported_mean_text(comparison.differences[c].reported)
                                   if c in comparison.differences else "-" for c in report.columns]))
    rows.append(("ours − reported", [difference_text(comparison.difference(c)) for c in report.columns]))
    return rows


__all__ = ["overview_block", "CSV_DIFF_TASK", "CSV_REPORTED_RUN", "Comparison", "Difference", "comparisons", "csv_rows", "grid_section",
           "json_block", "reference_notes", "FT_LABEL", "FULL_FINETUNING", "ReferenceError", "ReferenceTable", "compare",
           "difference_text", "identity_text", "load_reference", "method_label", "reference_for",
           "reference_names", "reference_rows", "reference_table", "reported_mean_text", "reported_text",
           "run_identity"]


# ---- the exports' reported block (engine.results.export calls these) -----------------------------


def comparisons(summaries: list[dict]) -> list[tuple[list[dict], Comparison]]:
    """The summaries grouped by their "qin2023:" setting, each group with its comparison (one report per
    group: a run with another setting, or none, has no reported block)."""
    from engine.results.report import build_report

    groups: dict[str, list[dict]] = {}
    for s in summaries:
        if reference_for(s.get("setting", "")) is not None:
            groups.setdefault(s["setting"], []).append(s)
    out = []
    for group in groups.values():
        comparison = compare(build_report(group), group)
        if comparison is not None:
            out.append((group, comparison))
    return out


def grid_section(comparison: Comparison, report: Report, scale: float, digits: int) -> tuple[list, list[str]]:
    """The reported block of a Markdown/LaTeX grid, aligned with `report.columns` (two leading cells: the
    row label and an empty metric), and its notes."""
    factor = scale / 100.0
    table = comparison.table

    def num(value, sign=False):
        if value is None:
            return "-"
        return f"{value * factor:+.{digits}f}" if sign else f"{value * factor:.{digits}f}"

    rows = []
    for task in table.tasks:
        cells = []
        for c in report.columns:
            cell = table.score(task, c.method)
            cells.append(("-" if cell is None else f"{num(cell['mean'])} ± {num(cell['std'])}", False))
        rows.append([(f"reported: {task}", False), ("", False)] + cells)
    rows.append([("reported mean", False), ("", False)] +
                [(num(comparison.differences[c].reported) if c in comparison.differences else "-", False)
                 for c in report.columns])
    rows.append([("ours − reported", False), ("", False)] +
                [(_diff_cell(comparison.difference(c), num), False) for c in report.columns])
    return rows, reference_notes(comparison)


def _diff_cell(diff: Difference | None, num) -> str:
    if diff is None or diff.delta is None:
        return "-"
    return f"{num(diff.delta, sign=True)} ({len(diff.tasks)})"


def reference_notes(comparison: Comparison) -> list[str]:
    """What the reported block is and what differs, one sentence each (no final full stop)."""
    t = comparison.table
    notes = [comparison.label(),
             "reported: their mean ± std over their splits, per task, and their mean over the targets each of this "
             "run's methods has; ours − reported: this run's mean minus the reported mean over the targets both "
             "have (their number in brackets)"]
    for run_id, info in comparison.runs.items():
        notes.append(f"run {run_id}: {identity_text(info)}")
    ft = t.means.get(FULL_FINETUNING)
    if ft is not None:
        notes.append(f"their full fine-tuning (every weight of the model), an extra: mean {ft:.1f} over "
                     f"{t.counts[FULL_FINETUNING]} targets")
    return notes + comparison.notes + t.notes


CSV_REPORTED_RUN = "reported"
CSV_DIFF_TASK = "DIFF_VS_REPORTED"


def csv_rows(summaries: list[dict], scale: float) -> list[dict]:
    """Rows of the tasks CSV: the reported table (run_id "reported", per method and task, then MEAN over the
    setting's targets) once per setting, and per run and method its difference to the reported mean over the
    targets both have (task DIFF_VS_REPORTED, n: their number)."""
    factor = scale / 100.0
    rows = []
    for _group, comparison in comparisons(summaries):
        t = comparison.table
        base = {"run_id": CSV_REPORTED_RUN, "name": f"Qin et al. 2023 ({t.repository}@{t.commit[:7]})",
                "model": THEIR_MODEL, "setting": t.key, "gain_over_pt": ""}
        for method in t.methods:
            for task in t.tasks:
                cell = t.score(task, method)
                if cell:
                    rows.append({**base, "method": method, "task": task, "metric": "", "mean": cell["mean"] * factor,
                                 "std": cell["std"] * factor, "n": cell["n"]})
            if t.means[method] is not None:
                rows.append({**base, "method": method, "task": "MEAN", "metric": "", "mean": t.means[method] * factor,
                             "std": "", "n": t.counts[method]})
        for d in comparison.differences.values():
            if d.delta is None:
                continue
            rows.append({"run_id": d.column.run_id, "name": "", "model": "", "setting": t.key,
                         "method": d.column.method, "task": CSV_DIFF_TASK, "metric": "", "mean": d.delta * factor,
                         "std": "", "n": len(d.tasks), "gain_over_pt": ""})
    return rows


def json_block(summaries: list[dict]) -> list[dict]:
    """The tasks JSON's "reported" list: one comparison per "qin2023:" setting among the runs (numbers x100)."""
    return [comparison.to_dict() for _group, comparison in comparisons(summaries)]
