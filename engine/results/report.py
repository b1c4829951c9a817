"""The comparison table, built in one place for every view of it.

The headless run's final table, the app's Results screen, `mpt-tui runs` and the
exports all render the `Report` that `build_report` makes from run summaries
(`engine.store.index.summarize`, or a finished run's results.json with its run id).
Rows are target tasks, columns (run, method); each column's mean is over its own
run's targets, and its gain is over its own run's PT, so runs with different
targets or baselines are never mixed. Torch-free, like everything the app reads.

Paired comparisons (`Report.paired`): mean ± std alone cannot say whether a
method beats PT on five splits, so every method is also compared with PT of the
same run split by split. A summary's "splits" list holds the chosen cell (the
best-dev learning rate's) per (method, task, seed); the difference on split s is
the method's chosen test score minus PT's on the same task and seed. A split that
only one of the two has, or whose test score is NaN, is left out of the pairs
and counted as unpaired.

- Per target task: the mean difference over the paired splits; a 95% percentile
  bootstrap interval of that mean (splits resampled with replacement, 10,000
  resamples, seeded: the same summaries give the same interval); a two-sided
  p-value of the Wilcoxon signed-rank test (SciPy's `wilcoxon` defaults: zero
  differences dropped, exact for small samples without ties or zeros).
- Over all targets: the mean over tasks of the tasks' mean differences (the mean
  row's difference when no split is missing); the bootstrap resamples splits
  within each task (stratified: the target tasks are the setting, fixed; the
  splits are the random part), so each resample's statistic is again a mean of
  task means; the Wilcoxon test takes every (task, split) pair's difference.
- Where Wilcoxon is undefined (every difference zero) or SciPy cannot compute it,
  the p-value is the exact two-sided sign test (`binomtest` on the number of
  positive differences among the nonzero ones; 1.0 when there are none), and
  `Paired.test` says "sign". With 5 splits the smallest two-sided Wilcoxon
  p-value of one task is 1/16 = 0.0625: a single task cannot reach 0.05.

SciPy is imported only when a paired statistic is first asked for, so
`mpt-tui runs` and the app's start never pay for it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

from engine.experiment.methods import PT, in_display_order, label
from engine.experiment.records import SPLITS, CellRecord

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Column:
    run_id: str
    method: str


@dataclass(frozen=True)
class Paired:
    """A method minus PT of the same run, over paired splits (one task's, or every target's)."""

    n: int  # paired splits
    unpaired: int  # splits only one of the two has (or with a NaN test score): left out
    mean: float | None  # mean difference; over all targets the mean of the tasks' mean differences
    low: float | None  # the bootstrap interval (CONFIDENCE)
    high: float | None
    p: float | None  # two-sided
    test: str  # "wilcoxon", "sign", or "" without pairs
    diffs: tuple[float, ...] = ()  # the paired differences (over all targets: task by task)


@dataclass
class Report:
    columns: list[Column]
    tasks: list[str]  # the union of the runs' target tasks, sorted
    scores: dict[tuple[str, Column], dict]  # (task, column) -> {"mean", "std", "n", "metric"}
    metrics: dict[str, str]  # task -> metric name
    means: dict[Column, float | None]  # over the column's own tasks
    gains: dict[Column, float | None]  # relative to its own run's PT mean; None without one
    notes: list[str] = field(default_factory=list)
    # (task, column) -> {seed: chosen test score}, from the summaries' "splits" (absent: no per-split data)
    split_scores: dict[tuple[str, Column], dict[int, float]] = field(default_factory=dict)
    seed: int = BOOTSTRAP_SEED
    n_resamples: int = N_RESAMPLES

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

    # ---- paired comparisons with PT ---------------------------------------------------

    def compared(self) -> list[Column]:
        """The columns with a paired comparison: not PT, with per-split scores and a PT in their run."""
        return [c for c in self.columns if self._pairs(c) is not None]

    def paired(self, column: Column, task: str | None = None) -> Paired | None:
        """`column` minus its run's PT, on `task`'s splits, or over all targets (task None).

        None for PT itself, for a run without PT, and without per-split scores.
        """
        key = (task, column)
        if key not in self._paired:
            self._paired[key] = self._compute_paired(column, task)
        return self._paired[key]

    def has_paired(self) -> bool:
        return any(self._pairs(c) is not None for c in self.columns)

    def _pairs(self, column: Column) -> dict[str, tuple[list[float], int]] | None:
        """task -> (the paired differences in seed order, the unpaired count)."""
        if column.method == PT:
            return None
        base = Column(column.run_id, PT)
        mine = {t: s for (t, c), s in self.split_scores.items() if c == column}
        theirs = {t: s for (t, c), s in self.split_scores.items() if c == base}
        if not mine or not theirs:
            return None
        out = {}
        for task in sorted(set(mine) | set(theirs)):
            a, b = mine.get(task, {}), theirs.get(task, {})
            both = sorted(s for s in set(a) & set(b) if _finite(a[s]) and _finite(b[s]))
            out[task] = ([a[s] - b[s] for s in both], len(set(a) | set(b)) - len(both))
        return out

    @cached_property
    def _paired(self) -> dict[tuple[str | None, Column], Paired | None]:
        return {}  # computed on demand: the app draws only the overall ones

    def _compute_paired(self, column: Column, task: str | None) -> Paired | None:
        pairs = self._pairs(column)
        if pairs is None or (task is not None and task not in pairs):
            return None
        if task is not None:
            diffs, unpaired = pairs[task]
            return paired_statistics([diffs], unpaired, self.seed, self.n_resamples)
        return paired_statistics([d for d, _ in pairs.values() if d], sum(u for _, u in pairs.values()),
                                 self.seed, self.n_resamples)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def paired_statistics(groups: list[list[float]], unpaired: int = 0, seed: int = BOOTSTRAP_SEED,
                      n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE) -> Paired:
    """The paired statistics of differences grouped by task (one group: one task).

    Mean: the mean of the groups' means. Interval: percentile bootstrap, each group's
    differences resampled with replacement (`numpy.random.default_rng(seed)`, one
    `integers(0, n, (n_resamples, n))` draw per group in order; for one group this is
    `scipy.stats.bootstrap(..., method="percentile")` with the same generator).
    p: Wilcoxon signed-rank over all differences, or the exact sign test where it is undefined.
    """
    return _paired_statistics(tuple(tuple(map(float, g)) for g in groups if len(g)), unpaired, seed, n_resamples,
                              confidence)


@lru_cache(maxsize=4096)  # the app redraws the same report on every key: compute each comparison once
def _paired_statistics(groups: tuple[tuple[float, ...], ...], unpaired: int, seed: int, n_resamples: int,
                       confidence: float) -> Paired:
    diffs = tuple(d for g in groups for d in g)
    if not diffs:
        return Paired(0, unpaired, None, None, None, None, "")
    import numpy as np

    mean = statistics.fmean(statistics.fmean(g) for g in groups)
    rng = np.random.default_rng(seed)
    total = np.zeros(n_resamples)
    for g in groups:
        values = np.asarray(g)
        total += values[rng.integers(0, len(values), (n_resamples, len(values)))].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = (float(v) for v in np.percentile(total / len(groups), [100 * alpha / 2, 100 * (1 - alpha / 2)]))
    p, test = _p_value(diffs)
    return Paired(len(diffs), unpaired, mean, low, high, p, test, diffs)


def _p_value(diffs: tuple[float, ...]) -> tuple[float, str]:
    """Two-sided: Wilcoxon signed-rank, or the exact sign test where Wilcoxon is undefined."""
    import warnings

    from scipy import stats

    nonzero = [d for d in diffs if d != 0]
    if nonzero:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                p = float(stats.wilcoxon(diffs).pvalue)
            if math.isfinite(p):
                return p, "wilcoxon"
        except ValueError:
            pass
        return float(stats.binomtest(sum(d > 0 for d in nonzero), len(nonzero)).pvalue), "sign"
    return 1.0, "sign"  # no nonzero difference: no evidence either way


def prepare_statistics() -> None:
    """Import SciPy's statistics now (about a second), e.g. in a worker thread before a report is drawn."""
    from scipy import stats  # noqa: F401


def build_report(summaries: list[dict], seed: int = BOOTSTRAP_SEED, n_resamples: int = N_RESAMPLES) -> Report:
    """`summaries`: dicts with "run_id" and "tasks" ({method: {task: aggregate}}), as the index stores them,
    and "splits" (the chosen cell per (method, task, seed)) for the paired comparisons."""
    columns: list[Column] = []
    scores: dict[tuple[str, Column], dict] = {}
    metrics: dict[str, str] = {}
    split_scores: dict[tuple[str, Column], dict[int, float]] = {}
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
        for cell in map(CellRecord.from_dict, s.get(SPLITS, []) or []):
            if cell.method in tasks_by_method:
                split_scores.setdefault((cell.task, Column(s["run_id"], cell.method)), {})[cell.seed] = \
                    math.nan if "test" in cell.missing else cell.test
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
    report = Report(columns, sorted(metrics), scores, metrics, means, gains, notes, split_scores, seed, n_resamples)
    for column in columns:
        pairs = report._pairs(column)
        unpaired = sum(u for _, u in pairs.values()) if pairs else 0
        if unpaired:
            notes.append(f"{report.header(column)} vs PT: {unpaired} split{'s' if unpaired > 1 else ''} that only one "
                         f"of the two has (or with a NaN test score) left out of the paired comparison")
    return report


# ---- formatting, shared by the terminal table, the app, `mpt-tui runs` and the exports ----------

def score_text(agg: dict | None) -> str:
    """x100, mean ± std over splits."""
    return f"{100 * agg['mean']:.1f} ± {100 * agg['std']:.1f}" if agg else "-"


def mean_text(value: float | None) -> str:
    return f"{100 * value:.1f}" if value is not None else "-"


def gain_text(value: float | None) -> str:
    return f"{100 * value:+.1f}%" if value is not None else "-"


DELTA_LABEL = "Δ vs PT [95% CI]"
P_LABEL = "p (pairs)"


def delta_text(paired: Paired | None, scale: float = 100.0, digits: int = 1) -> str:
    """'+1.2 [-0.3, +2.8]': the mean paired difference and its bootstrap interval, x`scale`."""
    if paired is None or paired.mean is None:
        return "-"
    return f"{scale * paired.mean:+.{digits}f} [{scale * paired.low:+.{digits}f}, {scale * paired.high:+.{digits}f}]"


def p_value_text(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_text(paired: Paired | None) -> str:
    """'0.031 (15)': the two-sided p-value and the number of pairs; ', sign' where it is the sign test's."""
    if paired is None or paired.mean is None:
        return "-"
    return f"{p_value_text(paired.p)} ({paired.n}{', sign' if paired.test == 'sign' else ''})"


def paired_line(paired: Paired | None, scale: float = 100.0) -> str:
    """'Δ vs PT +1.2 [-0.3, +2.8] p=0.310 (n=15)'."""
    if paired is None or paired.mean is None:
        return "Δ vs PT: no paired splits"
    test = ", sign test" if paired.test == "sign" else ""
    missing = f", {paired.unpaired} unpaired" if paired.unpaired else ""
    p = p_value_text(paired.p)
    return f"Δ vs PT {delta_text(paired, scale)} p{p if p.startswith('<') else '=' + p} (n={paired.n}{missing}{test})"


PAIRED_EXPLANATION = ("Δ: the method's test score minus PT's on the same split (x100), mean over splits and tasks, "
                      "95% bootstrap interval; p: two-sided Wilcoxon signed-rank test over the paired splits "
                      "(their number in brackets; 'sign': the exact sign test, where Wilcoxon is undefined)")


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
