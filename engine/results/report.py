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

- The estimate: per task the mean difference over its paired splits; over all
  targets the mean over tasks of the tasks' mean differences (the mean row's
  difference when no split is missing). The target tasks are fixed by the setting;
  only the splits are random.
- The 95% interval: a t interval, estimate ± t_{df, 0.975} · se, with
  se² = sum_i s_i² / (n_i T²) (s_i², n_i: task i's sample variance and paired split
  count, T: tasks) and Welch-Satterthwaite's df (n - 1 for one task: the exact
  one-sample t). It replaced a percentile bootstrap whose "95%" covered the truth
  in 68-89% of null draws at 3-10 tasks x 2-5 splits; docs/statistics.md has the
  simulated coverage (bench/interval_coverage.py).
- p: the two-sided p of the same t statistic, so p < 0.05 exactly when the interval
  excludes 0. On a mean row with several methods of one run compared with its PT,
  the table shows Holm's adjustment over that family (`Paired.p_holm`).
- A task with a single paired split has no spread of its own: it stays out of the
  overall mean and interval, and a note names it. With one split per task, or no
  spread in any task, there is no interval (and no p); a note says why.
- Robustness: the Wilcoxon signed-rank test over all paired differences (`rank_p`;
  the exact sign test where Wilcoxon is undefined, `rank_test` "sign"), in the
  exports and the Results screen's detail line.

SciPy is imported only when a paired statistic is first asked for, so
`mpt-tui runs` and the app's start never pay for it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache

from engine.experiment.methods import PT, in_display_order, label
from engine.experiment.records import SPLITS, CellRecord

CONFIDENCE = 0.95
INTERVAL = "Welch-Satterthwaite t interval of the mean of task means"


@dataclass(frozen=True)
class Column:
    run_id: str
    method: str


@dataclass(frozen=True)
class Paired:
    """A method minus PT of the same run, over paired splits (one task's, or every target's)."""

    n: int  # paired splits (in the mean and interval)
    unpaired: int  # splits only one of the two has (or with a NaN test score): left out
    mean: float | None  # mean difference; over all targets the mean of the tasks' mean differences
    low: float | None  # the t interval (CONFIDENCE); None where there is none (`reason`)
    high: float | None
    p: float | None  # two-sided p of the same t test (None without an interval)
    test: str  # "t", or "" without pairs
    diffs: tuple[float, ...] = ()  # the paired differences (over all targets: task by task)
    df: float | None = None  # the t test's degrees of freedom (Welch-Satterthwaite over tasks)
    rank_p: float | None = None  # robustness: Wilcoxon signed-rank over the differences (or the sign test)
    rank_test: str = ""  # "wilcoxon" or "sign"
    single: int = 0  # tasks with a single paired split, left out of the mean and interval
    reason: str = ""  # why there is no interval
    p_holm: float | None = None  # over all targets: p Holm-adjusted over the run's methods compared with PT


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
            return paired_statistics([diffs], unpaired)
        paired = paired_statistics([d for d, _ in pairs.values() if d], sum(u for _, u in pairs.values()))
        family = [c for c in self.compared() if c.run_id == column.run_id]
        if len(family) > 1 and paired.p is not None:  # Holm over the run's methods against its PT
            ps = [paired.p if c == column else self._overall_p(c) for c in family]
            paired = replace(paired, p_holm=holm(ps)[family.index(column)])
        return paired

    def _overall_p(self, column: Column) -> float | None:
        pairs = self._pairs(column)
        return paired_statistics([d for d, _ in pairs.values() if d], sum(u for _, u in pairs.values())).p


def _no_interval_reason(groups: list[list[float]]) -> str:
    """Why `paired_statistics(groups)` has no interval ("" where it has one), without NumPy or SciPy."""
    used = [g for g in groups if len(g) >= 2]
    if not groups:
        return ""
    if not used:
        return NO_SPLITS
    spread = any(statistics.stdev(g) > 1e-9 * max(abs(x) for x in g) for g in used)
    return "" if spread else NO_SPREAD


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def paired_statistics(groups: list[list[float]], unpaired: int = 0, confidence: float = CONFIDENCE) -> Paired:
    """The paired statistics of differences grouped by task (one group: one task).

    Mean, interval and p: `mean_difference_intervals` (the mean of the task means, a Welch-Satterthwaite
    t interval, the two-sided p of the same t test); a group with a single difference stays out of the
    mean and the interval (`Paired.single` counts them), unless every group has one (then the mean is
    theirs, with no interval). `reason` says why there is no interval. The rank test over all
    differences (Wilcoxon signed-rank, or the exact sign test where it is undefined) is kept as a
    robustness check in `rank_p`/`rank_test`.
    """
    return _paired_statistics(tuple(tuple(map(float, g)) for g in groups if len(g)), unpaired, confidence)


@lru_cache(maxsize=4096)  # the app redraws the same report on every key: compute each comparison once
def _paired_statistics(groups: tuple[tuple[float, ...], ...], unpaired: int, confidence: float) -> Paired:
    if not groups:
        return Paired(0, unpaired, None, None, None, None, "")
    import numpy as np

    width = max(map(len, groups))
    d = np.full((1, len(groups), width), np.nan)
    for i, g in enumerate(groups):
        d[0, i, :len(g)] = g
    r = mean_difference_intervals(d, confidence)
    used = [i for i, u in enumerate(r["used"][0]) if u]
    single = len(groups) - len(used)
    kept = groups if not used else tuple(groups[i] for i in used)
    diffs = tuple(x for g in kept for x in g)
    mean = statistics.fmean(statistics.fmean(g) for g in kept)
    rank_p, rank_test = _p_value(diffs)
    if bool(r["ok"][0]):
        return Paired(len(diffs), unpaired, mean, float(r["low"][0]), float(r["high"][0]), float(r["p"][0]), "t",
                      diffs, df=float(r["df"][0]), rank_p=rank_p, rank_test=rank_test, single=single)
    reason = NO_SPLITS if not used else NO_SPREAD
    return Paired(len(diffs), unpaired, mean, None, None, None, "t", diffs, rank_p=rank_p, rank_test=rank_test,
                  single=single, reason=reason)


NO_SPLITS = "one paired split per task: no spread to make an interval from"
NO_SPREAD = "every task's paired differences are equal (zero spread)"


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None stays None and is not counted)."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out: list[float | None] = [None] * len(pvalues)
    running, m = 0.0, len(present)
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def mean_difference_intervals(diffs, confidence: float = CONFIDENCE) -> dict:
    """The interval and p of the mean of task means, for a batch of comparisons at once (vectorised).

    `diffs`: an array (comparisons, tasks, splits) of paired differences, NaN where a split is absent.
    Per comparison, the tasks with at least two paired splits are used (one with a single split has no
    spread of its own and stays out: `used` says which); with m_i, s_i^2 and n_i a task's mean, sample
    variance (ddof 1) and split count and T the used tasks, the estimate is mean_i m_i, its variance
    sum_i s_i^2 / (n_i T^2), and the degrees of freedom Welch-Satterthwaite's,
    (sum_i v_i)^2 / sum_i v_i^2 / (n_i - 1) with v_i = s_i^2 / n_i (for one task n - 1: the exact
    one-sample t). The interval is estimate ± t_{df, (1+confidence)/2} · se, and p the two-sided p of the
    same t statistic, so p < 1 - confidence exactly when the interval excludes 0. No interval (`ok`
    False, low/high/p NaN) without a used task or when every used task's differences are all equal.
    Returns arrays: mean, low, high, p, df, se, ok, used (comparisons x tasks), n (paired splits used).
    """
    import numpy as np
    from scipy import special

    d = np.asarray(diffs, dtype=float)
    present = ~np.isnan(d)
    n_i = present.sum(axis=-1)
    used = n_i >= 2
    safe_n = np.where(n_i > 0, n_i, 1)
    m_i = np.where(present, d, 0.0).sum(axis=-1) / safe_n
    dev = np.where(present, d - m_i[..., None], 0.0)
    s2_i = (dev ** 2).sum(axis=-1) / np.where(n_i > 1, n_i - 1, 1)
    scale = np.where(present, np.abs(d), 0.0).max(axis=-1)
    s2_i = np.where(np.sqrt(s2_i) <= 1e-9 * scale, 0.0, s2_i)  # equal up to rounding: no spread
    tasks = used.sum(axis=-1)
    v_i = np.where(used, s2_i / safe_n, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(used, m_i, 0.0).sum(axis=-1) / tasks
        sum_v = v_i.sum(axis=-1)
        se = np.sqrt(sum_v) / tasks
        df = sum_v ** 2 / np.where(used, v_i ** 2 / np.where(n_i > 1, n_i - 1, 1), 0.0).sum(axis=-1)
        ok = (tasks > 0) & (sum_v > 0)
        df = np.where(ok, df, np.nan)
        half = special.stdtrit(np.where(ok, df, 1.0), 0.5 + confidence / 2) * se
        p = 2 * special.stdtr(np.where(ok, df, 1.0), -np.abs(mean) / np.where(ok, se, 1.0))
    nan = np.full(mean.shape, np.nan)
    return {"mean": mean, "low": np.where(ok, mean - half, nan), "high": np.where(ok, mean + half, nan),
            "p": np.where(ok, np.minimum(p, 1.0), nan), "df": df, "se": np.where(ok, se, nan), "ok": ok,
            "used": used, "n": np.where(used, n_i, 0).sum(axis=-1)}


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


def build_report(summaries: list[dict]) -> Report:
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
    report = Report(columns, sorted(metrics), scores, metrics, means, gains, notes, split_scores)
    for column in columns:
        pairs = report._pairs(column)
        unpaired = sum(u for _, u in pairs.values()) if pairs else 0
        if unpaired:
            notes.append(f"{report.header(column)} vs PT: {unpaired} split{'s' if unpaired > 1 else ''} that only one "
                         f"of the two has (or with a NaN test score) left out of the paired comparison")
        if pairs:
            groups = {t: d for t, (d, _) in pairs.items() if d}
            single = [t for t, d in groups.items() if len(d) == 1]
            if single and len(single) < len(groups):
                notes.append(f"{report.header(column)} vs PT: {', '.join(single)} "
                             f"{'has' if len(single) == 1 else 'have'} a single paired split: left out of the "
                             f"mean Δ and its interval")
            reason = _no_interval_reason(list(groups.values()))
            if reason:
                notes.append(f"{report.header(column)} vs PT: no interval: {reason}")
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
    """'+1.2 [-0.3, +2.8]': the mean paired difference and its t interval, x`scale` ('+1.2 (no CI)' without one)."""
    if paired is None or paired.mean is None:
        return "-"
    if paired.low is None:
        return f"{scale * paired.mean:+.{digits}f} (no CI)"
    return f"{scale * paired.mean:+.{digits}f} [{scale * paired.low:+.{digits}f}, {scale * paired.high:+.{digits}f}]"


def p_value_text(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def shown_p(paired: Paired | None) -> float | None:
    """The p a table prints: Holm-adjusted on a mean row with several methods, else the t test's."""
    if paired is None:
        return None
    return paired.p_holm if paired.p_holm is not None else paired.p


def p_text(paired: Paired | None) -> str:
    """'0.031 (15)': the t test's two-sided p and the number of pairs; '(15, Holm)' where Holm-adjusted."""
    if paired is None or paired.mean is None:
        return "-"
    return f"{p_value_text(shown_p(paired))} ({paired.n}{', Holm' if paired.p_holm is not None else ''})"


def paired_line(paired: Paired | None, scale: float = 100.0) -> str:
    """'Δ vs PT +1.2 [-0.3, +2.8] p=0.310 (n=15); Wilcoxon p=0.280'."""
    if paired is None or paired.mean is None:
        return "Δ vs PT: no paired splits"
    missing = f", {paired.unpaired} unpaired" if paired.unpaired else ""
    p = p_value_text(shown_p(paired))
    holm_text = ", Holm" if paired.p_holm is not None else ""
    rank = f"; {'Wilcoxon' if paired.rank_test == 'wilcoxon' else 'sign test'} p={p_value_text(paired.rank_p)}" \
        if paired.rank_p is not None else ""
    return (f"Δ vs PT {delta_text(paired, scale)} p{p if p.startswith('<') else '=' + p} "
            f"(n={paired.n}{missing}{holm_text}){rank}")


PAIRED_EXPLANATION = ("Δ: the method's test score minus PT's on the same split (x100), mean over splits, then over "
                      "tasks, with its 95% t interval (Welch-Satterthwaite df; tasks fixed, splits random); p: the "
                      "same two-sided t test (pairs in brackets; 'Holm': adjusted over the run's methods)")


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
