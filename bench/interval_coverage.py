"""Coverage of the "Δ vs PT" 95% interval under the null, simulated at the sizes mpt-tui sees.

    python bench/interval_coverage.py                 # the three CI nulls and the skewed one, 4,000 per cell
    python bench/interval_coverage.py --draws 20000   # tighter estimates

Each comparison draws, for T tasks x n splits, paired differences whose true mean is 0 in every task,
and asks `engine.results.report.mean_difference_intervals` (the function behind every Δ interval the
report prints) for its interval; the cell's coverage is the share of the comparisons that print an
interval whose [low, high] holds 0. tests/test_interval_coverage.py runs the same cells and bounds them.

Nulls (every task's parameters drawn afresh per comparison):
- normal: differences N(0, σ_t²), σ_t log-uniform over a 15x range (0.4 to 6 points);
- beta: method and PT each drawn from the same Beta per task (mean 0.2-0.9, concentration 5-60);
- binomial16: accuracy on 16 test examples, method and PT each Binomial(16, p_t)/16, p_t 0.3-0.95
  (ties and zero differences happen; a task whose differences are all equal has no spread);
- skewed (docs only): σ_t (Exp(1) - 1), mean 0, skewness 2, σ_t as in normal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.results.report import mean_difference_intervals  # noqa: E402

TASKS = (1, 2, 3, 5, 10, 20)
SPLITS = (2, 3, 5, 10)
MIXED = (2, 3, 5, 5, 10)  # one comparison's tasks with different numbers of splits
NULLS = ("normal", "beta", "binomial16")
SKEWED = "skewed"
SEED = 20260101


def _spreads(rng, shape):
    return 0.004 * 15.0 ** rng.uniform(0.0, 1.0, shape)


def draw(null: str, splits_per_task: tuple[int, ...], draws: int, rng) -> np.ndarray:
    """(draws, tasks, max splits) differences with true mean 0 per task, NaN beyond a task's splits."""
    tasks, width = len(splits_per_task), max(splits_per_task)
    shape = (draws, tasks, width)
    if null == "normal":
        d = rng.standard_normal(shape) * _spreads(rng, (draws, tasks, 1))
    elif null == SKEWED:
        d = (rng.standard_exponential(shape) - 1.0) * _spreads(rng, (draws, tasks, 1))
    elif null == "beta":
        mean = rng.uniform(0.2, 0.9, (draws, tasks, 1))
        conc = rng.uniform(5.0, 60.0, (draws, tasks, 1))
        a, b = np.broadcast_to(mean * conc, shape), np.broadcast_to((1 - mean) * conc, shape)
        d = rng.beta(a, b) - rng.beta(a, b)
    elif null == "binomial16":
        p = np.broadcast_to(rng.uniform(0.3, 0.95, (draws, tasks, 1)), shape)
        d = (rng.binomial(16, p) - rng.binomial(16, p)) / 16.0
    else:
        raise ValueError(null)
    absent = np.arange(width)[None, None, :] >= np.asarray(splits_per_task)[None, :, None]
    return np.where(absent, np.nan, d)


def cells() -> list[tuple[str, tuple[int, ...]]]:
    out = [(f"{t}x{n}", (n,) * t) for t in TASKS for n in SPLITS]
    return out + [("mixed " + "/".join(map(str, MIXED)), MIXED)]


def coverage(null: str, splits_per_task: tuple[int, ...], draws: int, rng) -> tuple[float, float]:
    """(coverage among the comparisons with an interval, share of comparisons with one)."""
    r = mean_difference_intervals(draw(null, splits_per_task, draws, rng))
    ok = r["ok"]
    hit = (r["low"][ok] <= 0.0) & (0.0 <= r["high"][ok])
    return float(hit.mean()) if ok.any() else float("nan"), float(ok.mean())


def table(nulls, draws: int, seed: int = SEED) -> dict[str, dict[str, tuple[float, float]]]:
    rng = np.random.default_rng(seed)
    return {name: {null: coverage(null, spt, draws, rng) for null in nulls} for name, spt in cells()}


def render(result: dict, nulls) -> str:
    lines = ["| tasks x splits | " + " | ".join(nulls) + " |", "|---" * (len(nulls) + 1) + "|"]
    for name, row in result.items():
        parts = []
        for null in nulls:
            cov, shown = row[null]
            parts.append(f"{100 * cov:.1f}%" + (f" ({100 * shown:.0f}% shown)" if shown < 0.995 else ""))
        lines.append(f"| {name} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    nulls = NULLS + (SKEWED,)
    print(render(table(nulls, args.draws, args.seed), nulls))


if __name__ == "__main__":
    main()
