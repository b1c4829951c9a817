"""engine.experiment.similarity: cosine matrices and Spearman's rho with its permutation p-value against SciPy on
random data; each target's nearest sources as the matrix orders them."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats as st
from scipy.spatial.distance import cdist

from engine.experiment.similarity import cosine_matrix, index_entry, nearest_sources, ranked_sources, set_similarity, spearman


def _exact_p(x, y):
    """Two-sided permutation p of Spearman's rho by SciPy's spearmanr over every pairing (as
    scipy.stats.permutation_test defines it: twice the smaller tail, at most 1)."""
    observed = st.spearmanr(x, y).statistic
    null = np.array([st.spearmanr(x, y[list(order)]).statistic for order in itertools.permutations(range(len(y)))])
    gamma = 1e-12
    return min(1.0, 2 * min(np.mean(null >= observed - gamma), np.mean(null <= observed + gamma)))


def test_cosine_matrix_matches_scipy():
    rng = np.random.default_rng(0)
    targets, sources = rng.normal(size=(4, 7)), rng.normal(size=(6, 7))
    got = np.array(cosine_matrix(targets.tolist(), sources.tolist()))
    assert got.shape == (4, 6)
    np.testing.assert_allclose(got, 1 - cdist(targets, sources, "cosine"), atol=1e-12)
    assert cosine_matrix([[0.0, 0.0]], [[1.0, 2.0]]) == [[0.0]]  # a zero vector is similar to nothing


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_spearman_and_its_exact_permutation_p_match_scipy(n):
    rng = np.random.default_rng(n)
    for trial in range(3):
        x = rng.normal(size=n)
        y = 0.6 * x + rng.normal(size=n)
        if trial == 2:
            y = np.round(y)  # ties: average ranks, as SciPy
        got = spearman(x.tolist(), y.tolist())
        expected = st.spearmanr(x, y).statistic
        if math.isnan(expected):
            assert got["rho"] is None and got["p"] is None
            continue
        assert got["n"] == n
        assert got["rho"] == pytest.approx(expected, abs=1e-12)
        assert got["p"] == pytest.approx(_exact_p(x, y), abs=1e-12)  # every pairing enumerated


def test_spearman_monte_carlo_p_for_many_pairs_agrees_with_scipy():
    rng = np.random.default_rng(7)
    for n in (12, 30):
        x = rng.normal(size=n)
        y = 0.4 * x + rng.normal(size=n)
        got = spearman(x, y)
        reference = st.spearmanr(x, y)
        assert got["rho"] == pytest.approx(reference.statistic, abs=1e-12)
        # 9999 random pairings against SciPy's t-approximation: they agree within sampling and approximation error
        assert got["p"] == pytest.approx(reference.pvalue, abs=0.03)


def test_spearman_without_a_ranking_gives_no_rho_and_drops_missing_pairs():
    assert spearman([1.0, 2.0], [3.0, 4.0]) == {"n": 2, "rho": None, "p": None}
    assert spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]) == {"n": 4, "rho": None, "p": None}
    got = spearman([1.0, 2.0, float("nan"), 3.0, None], [1.0, 2.0, 5.0, 3.0, 4.0])
    assert got["n"] == 3 and got["rho"] == pytest.approx(1.0)
    assert got["p"] == pytest.approx(1 / 3)  # the floor with 3 targets: 2/3!


def _analysis(matrix, sources, targets):
    return {"version": 1, "sources": sources, "targets": targets,
            "kinds": {"text": {"matrix": matrix}, "prompt": {"matrix": [[-s for s in row] for row in matrix]}}}


def test_nearest_sources_selects_what_the_matrix_says():
    rng = np.random.default_rng(3)
    sources = [f"s{i}" for i in range(6)] + ["t1"]  # t1 is a source too: never its own nearest
    targets = ["t0", "t1", "t2"]
    matrix = rng.uniform(-1, 1, size=(3, 7))
    matrix[1, 6] = 5.0
    doc = _analysis(matrix.tolist(), sources, targets)
    for kind, m in (("text", matrix), ("prompt", -matrix)):
        got = nearest_sources(doc, 3, kind)
        for i, target in enumerate(targets):
            order = [sources[j] for j in np.argsort(-m[i], kind="stable") if sources[j] != target]
            assert got[target] == order[:3]
    assert nearest_sources(doc, 2) == nearest_sources(doc, 2, "prompt")  # prompt by default
    ranked = ranked_sources(matrix.tolist(), sources, targets, 2)
    assert all(a[1] >= b[1] for items in ranked.values() for a, b in zip(items, items[1:]))
    assert index_entry(doc | {"kinds": {"prompt": {"nearest": ranked}}})["top"] == {
        t: [s for s, _ in items] for t, items in ranked.items()}
    with pytest.raises(ValueError, match="no 'bogus'"):
        nearest_sources(doc, 2, "bogus")
    with pytest.raises(ValueError, match="K >= 1"):
        nearest_sources(doc, 0)


def test_ties_keep_the_source_order_and_set_similarity_reads_only_the_runs_own_sources():
    assert ranked_sources([[0.5, 0.9, 0.5]], ["a", "b", "c"], ["t"], 3) == {"t": [["b", 0.9], ["a", 0.5],
                                                                                    ["c", 0.5]]}
    row = [0.1, 0.9, 0.4, 1.0]
    assert set_similarity(row, ["a", "b", "c", "t"], ["a", "c", "t"], "t") == {"max": 0.4, "mean": 0.25}
    assert set_similarity(row, ["a", "b", "c", "t"], ["t"], "t") == {}
