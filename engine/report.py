"""The comparison table, built in one place for every view of it.

The headless run's final table, the app's Results screen, `mpt-tui runs` and the
aggregated CSV all render the `Report` that `build_report` makes from run
summaries (`engine.store.summarize`, or a finished run's results.json with its
run id). Rows are target tasks, columns (run, method); each column's mean is
over its own run's targets, and its gain is over its own run's PT, so runs with
different targets or baselines are never mixed. Torch-free, like everything the
app reads.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from engine.methods import PT, in_display_order, label


@dataclass(frozen=True)
class Column:
    run_id: str
    method: str


@dataclass
class Report:
    columns: list[Column]
    tasks: list[str]  # the union of the runs' target tasks, sorted
    scores: dict[tuple[str, Column], dict]  # (task, column) -> {"mean", "std", "n", "metric"}
    metrics: dict[str, str]  # task -> metric name
    means: dict[Column, float | None]  # over the column's own tasks
    gains: dict[Column, float | None]  # relative to its own run's PT mean; None without one
    notes: list[str] = field(default_factory=list)

    def header(self, column: Column) -> str:
        """The method's label, with the run id's tail when several runs are compared."""
        several = len({c.run_id for c in self.columns}) > 1
        return label(column.method) + (f" ({column.run_id[-12:]})" if several else "")

    def score(self, task: str, column: Column) -> dict | None:
        return self.scores.get((task, column))

    def best_column(self, task: str) -> Column | None:
        """The column with the highest mean on `task` (ties: the first)."""
        present = [(c, self.scores[(task, c)]["mean"]) for c in self.columns if (task, c) in self.scores]
        present = [(c, m) for c, m in present if m == m]  # NaN never wins
        return max(present, key=lambda cm: cm[1])[0] if present else None


def build_report(summaries: list[dict]) -> Report:
    """`summaries`: dicts with "run_id" and "tasks" ({method: {task: aggregate}}), as the index stores them."""
    columns: list[Column] = []
    scores: dict[tuple[str, Column], dict] = {}
    metrics: dict[str, str] = {}
    target_sets = set()
    for s in summaries:
        tasks_by_method = s.get("tasks", {}) or {}
        run_tasks = set()
        for method in in_display_order(tasks_by_method):
            column = Column(s["run_id"], method)
            columns.append(column)
            for task, agg in tasks_by_method[method].items():
                scores[(task, column)] = agg
                metrics.setdefault(task, agg.get("metric", ""))
                run_tasks.add(task)
        if run_tasks:
            target_sets.add(frozenset(run_tasks))
    means = {}
    for column in columns:
        values = [agg["mean"] for (_, c), agg in scores.items() if c == column]
        means[column] = statistics.fmean(values) if values else None
    gains = {}
    for column in columns:
        base = means.get(Column(column.run_id, PT))
        mean = means[column]
        gains[column] = (mean - base) / abs(base) if base and mean is not None else None
    notes = []
    if len(target_sets) > 1:
        notes.append("the runs have different target tasks: each mean is over its own run's targets")
    return Report(columns, sorted(metrics), scores, metrics, means, gains, notes)


# ---- formatting, shared by the terminal table, the app and `mpt-tui runs` ----------------

def score_text(agg: dict | None) -> str:
    """x100, mean ± std over splits."""
    return f"{100 * agg['mean']:.1f} ± {100 * agg['std']:.1f}" if agg else "-"


def mean_text(value: float | None) -> str:
    return f"{100 * value:.1f}" if value is not None else "-"


def gain_text(value: float | None) -> str:
    return f"{100 * value:+.1f}%" if value is not None else "-"


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def means_line(report: Report) -> str:
    """One line per report: 'PT 33.2 · MTL 33.9 (+1.9%) · ...' (for `mpt-tui runs`)."""
    parts = []
    for column in report.columns:
        gain = report.gains[column]
        extra = f" ({gain_text(gain)})" if gain is not None and column.method != PT else ""
        parts.append(f"{label(column.method)} {mean_text(report.means[column])}{extra}")
    return " · ".join(parts)
