"""Task similarity, the arithmetic: cosine matrices, Spearman's rank correlation with an exact or
Monte Carlo permutation p-value, and each target's nearest sources. Plain Python and NumPy only
(no torch, NumPy imported on use), so the app, the CLI and the exports can read a stored analysis without loading a model.

- `cosine_matrix(targets, sources)`: cos(target_i, source_j) for two lists of vectors.
- `spearman(x, y)`: rho (Pearson on average ranks, as `scipy.stats.spearmanr`), n, and the
  two-sided permutation p-value over every pairing of x with y when n! is at most
  `EXACT_PERMUTATIONS` (8 values or fewer), else over `MC_PERMUTATIONS` seeded random pairings;
  two-sided as `scipy.stats.permutation_test` makes it: twice the smaller tail, at most 1. With n
  values and no ties the p-value cannot go below 2/n! (n = 3: 1/3), whatever the data.
- `ranked_sources(matrix, sources, targets, k)`: per target, its k most similar sources, most
  similar first (a source with the target's own name is left out: it would be the target itself).
- `nearest_sources(analysis, k, kind)`: the same selection read from a stored analysis.json
  document (what `data.sources = "nearest:K"` retrieves); `index_entry(analysis)`: what the run
  index keeps of it.
"""

from __future__ import annotations

import itertools
import math

ANALYSIS_FILE = "analysis.json"  # in the run directory (engine.execution.analysis writes it)
EXACT_PERMUTATIONS = 40320  # 8!: up to 8 values every pairing is enumerated
MC_PERMUTATIONS = 9999  # beyond, this many seeded random pairings (p = (hits + 1) / (MC_PERMUTATIONS + 1))
PERMUTATION_SEED = 0
_TOLERANCE = 1e-12  # a permuted rho this close to the observed one counts as reaching it (float rounding)


def cosine_matrix(targets: list, sources: list) -> list[list[float]]:
    """cos(targets[i], sources[j]) as nested lists; a zero vector's similarity is 0."""
    import numpy as np

    a = np.asarray(targets, dtype=np.float64)
    b = np.asarray(sources, dtype=np.float64)
    a_norm = np.linalg.norm(a, axis=1, keepdims=True)
    b_norm = np.linalg.norm(b, axis=1, keepdims=True)
    a = np.divide(a, a_norm, out=np.zeros_like(a), where=a_norm > 0)
    b = np.divide(b, b_norm, out=np.zeros_like(b), where=b_norm > 0)
    return (a @ b.T).tolist()


def average_ranks(values):
    """Ranks 1..n, ties sharing their mean rank (scipy.stats.rankdata's 'average')."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson_rows(rx, ry):
    """Pearson correlation of rx with each row of ry (ry: [m, n])."""
    dx = rx - rx.mean()
    dy = ry - ry.mean(axis=1, keepdims=True)
    return (dy @ dx) / ((dx @ dx) * (dy * dy).sum(axis=1)) ** 0.5


def spearman(x, y) -> dict:
    """{"n", "rho", "p"}: Spearman's rho of the pairs (x_i, y_i) and its two-sided permutation p-value.

    rho and p are None when fewer than 3 pairs are given or either side is constant (no ranking to
    correlate). Pairs with a non-finite value are left out first, and n counts the pairs used.
    """
    import numpy as np

    pairs = [(float(a), float(b)) for a, b in zip(x, y)
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    n = len(pairs)
    result = {"n": n, "rho": None, "p": None}
    if n < 3:
        return result
    rx = average_ranks([a for a, _ in pairs])
    ry = average_ranks([b for _, b in pairs])
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return result
    rho = float(_pearson_rows(rx, ry[None, :])[0])
    if math.factorial(n) <= EXACT_PERMUTATIONS:
        null = _pearson_rows(rx, ry[np.array(list(itertools.permutations(range(n))))])
        greater = np.count_nonzero(null >= rho - _TOLERANCE) / len(null)
        less = np.count_nonzero(null <= rho + _TOLERANCE) / len(null)
    else:  # Monte Carlo: the observed pairing counts as one of the resamples
        rng = np.random.default_rng(PERMUTATION_SEED)
        null = _pearson_rows(rx, np.array([ry[rng.permutation(n)] for _ in range(MC_PERMUTATIONS)]))
        greater = (np.count_nonzero(null >= rho - _TOLERANCE) + 1) / (MC_PERMUTATIONS + 1)
        less = (np.count_nonzero(null <= rho + _TOLERANCE) + 1) / (MC_PERMUTATIONS + 1)
    result.update(rho=max(-1.0, min(1.0, rho)), p=float(min(1.0, 2 * min(greater, less))))
    return result


def ranked_sources(matrix: list[list[float]], sources: list[str], targets: list[str],
                   k: int) -> dict[str, list[list]]:
    """{target: [[source, similarity], ...]}: the k most similar sources of each target, most similar first
    (ties keep the sources' order; a source named like the target is left out)."""
    out = {}
    for target, row in zip(targets, matrix):
        candidates = [(s, sim) for s, sim in zip(sources, row) if s != target]
        ranked = sorted(candidates, key=lambda item: -item[1])  # stable: ties stay in source order
        out[target] = [[s, float(sim)] for s, sim in ranked[:k]]
    return out


def set_similarity(row: list[float], sources: list[str], own: list[str], target: str) -> dict[str, float]:
    """{"max", "mean"} similarity of a target (its `row` over all `sources`) to the sources of its own run
    (`own`; a source named like the target left out); {} when none is left."""
    sims = [sim for s, sim in zip(sources, row) if s in own and s != target]
    return {"max": max(sims), "mean": sum(sims) / len(sims)} if sims else {}


def sources_of(analysis: dict) -> dict[str, list[str]]:
    """{target: its own sources in the run it came from} (nearest:K runs give each target its set)."""
    return {t: run.get("source_sets", {}).get(t, run["sources"]) for run in analysis.get("runs", [])
            for t in run["targets"]}


def nearest_sources(analysis: dict, k: int, kind: str | None = None) -> dict[str, list[str]]:
    """{target: [source, ...]}: each target's k most similar sources by the stored matrix of `kind`
    (default: "prompt" if the analysis has it, else its first kind). A ValueError names what is missing."""
    kinds = analysis.get("kinds") or {}
    if kind is None:
        kind = "prompt" if "prompt" in kinds else next(iter(kinds), None)
    if kind not in kinds:
        have = ", ".join(kinds) or "none"
        raise ValueError(f"the analysis has no '{kind}' similarity matrix (it has: {have})")
    if k < 1:
        raise ValueError(f"nearest:K needs K >= 1, got {k}")
    ranked = ranked_sources(kinds[kind]["matrix"], analysis["sources"], analysis["targets"], k)
    return {target: [s for s, _ in items] for target, items in ranked.items()}


def index_entry(doc: dict) -> dict:
    """What the run index keeps of an analysis: the file and each target's nearest sources (prompt kind
    if computed, else text)."""
    kinds = doc.get("kinds") or {}
    kind = "prompt" if "prompt" in kinds else next(iter(kinds), None)
    top = {t: [s for s, _ in items] for t, items in kinds[kind]["nearest"].items()} if kind else {}
    return {"file": ANALYSIS_FILE, "top": top}
