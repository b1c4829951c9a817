"""The comparison table (engine.results.report), and its renderings: headless table, CSV aggregate, `mpt-tui runs`."""

from __future__ import annotations

import io
import math
import re

import pytest
from rich.console import Console

from engine.results.export import table_rows
from engine.results.report import Column, build_report, format_duration, gain_text, means_line, score_text
from mpt_tui.headless import results_table


def _agg(mean: float, std: float = 0.01, n: int = 2, metric: str = "Classification-F1") -> dict:
    return {"mean": mean, "std": std, "n": n, "metric": metric}


RUN_A = {"run_id": "20260101-000000-a", "tasks": {
    "pt": {"t1": _agg(0.40), "t2": _agg(0.60)},
    "maml": {"t1": _agg(0.50), "t2": _agg(0.70)}}}
RUN_B = {"run_id": "20260202-000000-b", "tasks": {  # other targets, a much lower PT
    "pt": {"t1": _agg(0.20), "t3": _agg(0.20, metric="ACC")},
    "reptile": {"t1": _agg(0.30), "t3": _agg(0.30, metric="ACC")}}}


def test_with_two_runs_each_gain_is_over_its_own_runs_pt():
    report = build_report([RUN_A, RUN_B])
    a_pt, a_maml = Column(RUN_A["run_id"], "pt"), Column(RUN_A["run_id"], "maml")
    b_pt, b_rep = Column(RUN_B["run_id"], "pt"), Column(RUN_B["run_id"], "reptile")
    assert report.columns == [a_pt, a_maml, b_pt, b_rep]
    assert report.means[a_maml] == pytest.approx(0.60)
    assert report.gains[a_maml] == pytest.approx((0.60 - 0.50) / 0.50)  # over run A's PT (0.50)
    assert report.gains[b_rep] == pytest.approx((0.30 - 0.20) / 0.20)  # over run B's PT, not run A's
    assert report.gains[a_pt] == 0.0 and report.gains[b_pt] == 0.0


def test_different_target_sets_mean_over_own_targets_and_say_so():
    report = build_report([RUN_A, RUN_B])
    assert report.tasks == ["t1", "t2", "t3"]
    assert report.means[Column(RUN_B["run_id"], "pt")] == pytest.approx(0.20)  # t1 and t3 only
    assert report.score("t2", Column(RUN_B["run_id"], "pt")) is None
    assert report.notes and "different target tasks" in report.notes[0]
    assert build_report([RUN_A]).notes == []


def test_columns_in_the_registry_order_labels_and_best_column():
    run = {"run_id": "r", "tasks": {"reptile": {"t": _agg(0.3)}, "old_method": {"t": _agg(0.9)},
                                    "mtl": {"t": _agg(0.2)}, "pt": {"t": _agg(math.nan)}}}
    report = build_report([run])
    assert [c.method for c in report.columns] == ["pt", "mtl", "reptile", "old_method"]
    assert [report.header(c) for c in report.columns] == ["PT", "MTL", "Reptile", "old_method"]
    assert report.best_column("t") == Column("r", "old_method")  # NaN never wins
    several = build_report([RUN_A, RUN_B])
    assert several.header(several.columns[1]) == "MAML (" + RUN_A["run_id"][-12:] + ")"


def test_a_run_without_pt_has_no_gain():
    report = build_report([{"run_id": "r", "tasks": {"maml": {"t": _agg(0.5)}}}])
    assert report.gains[Column("r", "maml")] is None
    assert gain_text(None) == "-"


def test_formatting():
    assert score_text(_agg(0.4567, 0.0123)) == "45.7 ± 1.2"
    assert score_text(None) == "-"
    assert gain_text(0.123) == "+12.3%"
    assert [format_duration(s) for s in (None, 5, 65, 3700)] == ["?", "5s", "1m05s", "1h01m"]
    assert means_line(build_report([RUN_A])) == "PT 50.0 · MAML 60.0 (+20.0%)"


def test_csv_aggregate_and_headless_table_render_the_same_report():
    rows = table_rows([{**RUN_A, "name": "a"}, {**RUN_B, "name": "b"}])
    means = {(r["run_id"], r["method"]): r for r in rows if r["task"] == "MEAN"}
    assert means[(RUN_B["run_id"], "reptile")]["gain_over_pt"] == pytest.approx(0.5)
    assert means[(RUN_A["run_id"], "maml")]["mean"] == pytest.approx(0.6)
    assert means[(RUN_A["run_id"], "pt")]["n"] == 2

    out = io.StringIO()
    Console(file=out, width=200).print(results_table(build_report([RUN_A, RUN_B])))
    text = out.getvalue()
    assert "gain over PT" in text and "+20.0%" in text and "+50.0%" in text
    assert "different target tasks" in text


# ---- paired comparisons with PT ----------------------------------------------------------------

from engine.results.report import NO_SPLITS, NO_SPREAD, P_LABEL, delta_text, p_text, paired_statistics  # noqa: E402

SEEDS = [13, 21, 42, 87, 100]


def _run_with_splits(run_id: str, tests: dict[tuple[str, str], list[float]], seeds=SEEDS) -> dict:
    """A summary as the index holds it: the chosen cell per (method, task, seed), and its aggregates."""
    splits = [{"method": m, "task": t, "seed": s, "lr": 0.3, "dev": 0.5, "test": v, "metric": "ACC"}
              for (m, t), values in tests.items() for s, v in zip(seeds, values) if v is not None]
    tasks: dict = {}
    for (m, t), values in tests.items():
        present = [v for v in values if v is not None]
        tasks.setdefault(m, {})[t] = _agg(float(np.mean(present)), float(np.std(present)), len(present), "ACC")
    return {"run_id": run_id, "tasks": tasks, "splits": splits}


np = pytest.importorskip("numpy")
stats = pytest.importorskip("scipy.stats")

PT_SCORES = {"t1": [0.50, 0.55, 0.45, 0.60, 0.52], "t2": [0.30, 0.35, 0.28, 0.33, 0.31],
             "t3": [0.70, 0.72, 0.69, 0.75, 0.71]}
# better on every split, by varying amounts
PLANTED = {t: [v + d + 0.007 * i for v, d in zip(vs, [0.03, 0.05, 0.02, 0.04, 0.06])]  # no two differences tie
           for i, (t, vs) in enumerate(PT_SCORES.items())}
# no effect: the differences cancel out
NULL = {t: [v + d for v, d in zip(vs, [0.02, -0.03, 0.01, -0.02, 0.025])] for t, vs in PT_SCORES.items()}


def _expected_ci(diffs_by_task: list[np.ndarray]) -> tuple[float, float]:
    """The Welch-Satterthwaite t interval of the mean of task means, written out."""
    v = np.array([d.var(ddof=1) / len(d) for d in diffs_by_task])
    df = v.sum() ** 2 / sum(vi ** 2 / (len(d) - 1) for vi, d in zip(v, diffs_by_task))
    mean = np.mean([d.mean() for d in diffs_by_task])
    half = stats.t.ppf(0.975, df) * np.sqrt(v.sum()) / len(diffs_by_task)
    return mean - half, mean + half


def _expected_p(diffs_by_task: list[np.ndarray]) -> float:
    v = np.array([d.var(ddof=1) / len(d) for d in diffs_by_task])
    df = v.sum() ** 2 / sum(vi ** 2 / (len(d) - 1) for vi, d in zip(v, diffs_by_task))
    t = np.mean([d.mean() for d in diffs_by_task]) / (np.sqrt(v.sum()) / len(diffs_by_task))
    return 2 * stats.t.sf(abs(t), df)


def _scipy_ci(d: np.ndarray) -> tuple[float, float]:
    """One task: SciPy's one-sample t interval (exact under normality)."""
    res = stats.ttest_1samp(d, 0.0)
    ci = res.confidence_interval(0.95)
    return ci.low, ci.high


@pytest.mark.parametrize("other, better", [(PLANTED, True), (NULL, False)], ids=["planted", "null"])
def test_paired_interval_and_p_value_equal_scipys(other, better):
    run = _run_with_splits("r", {**{("pt", t): v for t, v in PT_SCORES.items()},
                                 **{("maml", t): v for t, v in other.items()}})
    report = build_report([run])
    maml = Column("r", "maml")
    assert report.paired(Column("r", "pt")) is None  # PT is the baseline, not compared with itself
    diffs = {t: np.array(other[t]) - np.array(PT_SCORES[t]) for t in PT_SCORES}
    for task, d in diffs.items():
        paired = report.paired(maml, task)
        assert (paired.n, paired.unpaired, paired.test, paired.rank_test) == (5, 0, "t", "wilcoxon")
        assert paired.mean == pytest.approx(d.mean())
        assert paired.p == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)  # one task: the one-sample t test
        assert paired.rank_p == pytest.approx(stats.wilcoxon(d).pvalue)  # kept as a robustness check
        assert (paired.low, paired.high) == pytest.approx(_scipy_ci(d))
    overall = report.paired(maml)
    pooled = np.concatenate(list(diffs.values()))
    assert (overall.n, overall.unpaired) == (15, 0)
    assert overall.mean == pytest.approx(pooled.mean())
    assert overall.mean == pytest.approx(report.means[maml] - report.means[Column("r", "pt")])  # the mean row's Δ
    assert overall.rank_p == pytest.approx(stats.wilcoxon(pooled).pvalue)
    assert overall.p == pytest.approx(_expected_p(list(diffs.values())))
    assert (overall.low, overall.high) == pytest.approx(_expected_ci(list(diffs.values())))
    assert (overall.p < 0.05) == (overall.low > 0 or overall.high < 0)  # one test: p and interval agree
    if better:  # better on each of 15 splits: Wilcoxon p = 2 / 2**15; each task alone cannot go below 2 / 2**5
        assert overall.rank_p == pytest.approx(2 / 2 ** 15) and overall.low > 0 and overall.p < 0.001
        assert report.paired(maml, "t1").rank_p == pytest.approx(0.0625)
    else:
        assert overall.p > 0.5 and overall.low < 0 < overall.high


def test_the_interval_is_not_random():
    run = _run_with_splits("r", {**{("pt", t): v for t, v in PT_SCORES.items()},
                                 **{("mtl", t): v for t, v in NULL.items()}})
    first, again = build_report([run]), build_report([run])
    column = Column("r", "mtl")
    assert first.paired(column) == again.paired(column)


def test_unpaired_and_nan_splits_are_left_out_and_counted():
    maml = {t: list(v) for t, v in PLANTED.items()}
    maml["t1"][4] = None  # MAML lacks t1's last split
    pt = {t: list(v) for t, v in PT_SCORES.items()}
    pt["t2"][0] = math.nan  # PT's first t2 split has no test score
    run = _run_with_splits("r", {**{("pt", t): v for t, v in pt.items()}, **{("maml", t): v for t, v in maml.items()}})
    report = build_report([run])
    column = Column("r", "maml")
    t1, t2, t3 = (report.paired(column, t) for t in ("t1", "t2", "t3"))
    assert (t1.n, t1.unpaired) == (4, 1) and (t2.n, t2.unpaired) == (4, 1) and (t3.n, t3.unpaired) == (5, 0)
    d1 = np.array(PLANTED["t1"][:4]) - np.array(PT_SCORES["t1"][:4])
    assert t1.rank_p == pytest.approx(stats.wilcoxon(d1).pvalue) and t1.mean == pytest.approx(d1.mean())
    assert t1.p == pytest.approx(stats.ttest_1samp(d1, 0.0).pvalue)
    assert (t1.low, t1.high) == pytest.approx(_scipy_ci(d1))
    overall = report.paired(column)
    assert (overall.n, overall.unpaired) == (13, 2)
    assert any("MAML vs PT: 2 splits" in n and "left out of the paired comparison" in n for n in report.notes)
    # a task PT lacks entirely: all its splits are unpaired, and the other tasks are still compared
    only_mine = _run_with_splits("r", {("pt", "t1"): PT_SCORES["t1"], ("maml", "t1"): PLANTED["t1"],
                                       ("maml", "t9"): PLANTED["t2"]})
    report = build_report([only_mine])
    assert report.paired(Column("r", "maml"), "t9") == paired_statistics([], 5)
    alone = report.paired(Column("r", "maml"), "t9")
    assert alone.mean is None and delta_text(alone) == "-" and p_text(alone) == "-"
    assert (report.paired(Column("r", "maml")).n, report.paired(Column("r", "maml")).unpaired) == (5, 5)


def test_no_interval_without_spread_and_the_sign_test_where_wilcoxon_is_undefined(monkeypatch):
    same = _run_with_splits("r", {("pt", "t1"): PT_SCORES["t1"], ("mtl", "t1"): PT_SCORES["t1"]})
    report = build_report([same])
    paired = report.paired(Column("r", "mtl"))
    assert (paired.mean, paired.low, paired.high, paired.p, paired.test, paired.n) == (0.0, None, None, None, "t", 5)
    assert (paired.rank_p, paired.rank_test, paired.reason) == (1.0, "sign", NO_SPREAD)
    assert p_text(paired) == "- (5)" and delta_text(paired) == "+0.0 (no CI)"
    assert f"MTL vs PT: no interval: {NO_SPREAD}" in report.notes

    def undefined(*args, **kwargs):
        raise ValueError("not enough data")

    monkeypatch.setattr(stats, "wilcoxon", undefined)
    diffs = [0.1, 0.2, -0.05, 0.3, 0.0, 0.125]  # not served from the cache
    paired = paired_statistics([diffs])
    assert paired.rank_test == "sign"
    assert paired.rank_p == pytest.approx(stats.binomtest(4, 5).pvalue)  # 4 of the 5 nonzero differences positive


def test_one_split_has_no_interval_and_a_single_split_task_stays_out():
    one = _run_with_splits("r", {("pt", "t1"): PT_SCORES["t1"][:1], ("maml", "t1"): PLANTED["t1"][:1],
                                 ("pt", "t2"): PT_SCORES["t2"][:1], ("maml", "t2"): PLANTED["t2"][:1]})
    report = build_report([one])
    paired = report.paired(Column("r", "maml"))
    assert (paired.low, paired.high, paired.p, paired.reason, paired.n) == (None, None, None, NO_SPLITS, 2)
    assert f"MAML vs PT: no interval: {NO_SPLITS}" in report.notes
    mixed = _run_with_splits("r", {("pt", "t1"): PT_SCORES["t1"], ("maml", "t1"): PLANTED["t1"],
                                   ("pt", "t2"): PT_SCORES["t2"], ("maml", "t2"): PLANTED["t2"],
                                   ("pt", "t3"): PT_SCORES["t3"][:1], ("maml", "t3"): [0.0]})
    report = build_report([mixed])
    paired = report.paired(Column("r", "maml"))
    d = [np.array(PLANTED[t]) - np.array(PT_SCORES[t]) for t in ("t1", "t2")]
    assert (paired.n, paired.single) == (10, 1) and paired.mean == pytest.approx(np.mean([x.mean() for x in d]))
    assert (paired.low, paired.high) == pytest.approx(_expected_ci(d))
    assert any(n.startswith("MAML vs PT: t3 has a single paired split: left out of the mean Δ") for n in report.notes)


def test_holm_adjusts_the_mean_rows_p_over_the_runs_methods():
    from engine.results.report import holm

    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06], abs=1e-12)
    run = _run_with_splits("r", {**{("pt", t): v for t, v in PT_SCORES.items()},
                                 **{("maml", t): v for t, v in PLANTED.items()},
                                 **{("mtl", t): v for t, v in NULL.items()}})
    report = build_report([run])
    maml, mtl = report.paired(Column("r", "maml")), report.paired(Column("r", "mtl"))
    assert [maml.p_holm, mtl.p_holm] == pytest.approx(holm([maml.p, mtl.p]))
    assert p_text(maml).endswith("(15, Holm)") and report.paired(Column("r", "maml"), "t1").p_holm is None
    alone = build_report([_run_with_splits("r", {**{("pt", t): v for t, v in PT_SCORES.items()},
                                                 **{("maml", t): v for t, v in PLANTED.items()}})])
    assert alone.paired(Column("r", "maml")).p_holm is None  # a family of one: nothing to adjust


def test_each_run_is_paired_with_its_own_pt():
    a = _run_with_splits("a", {("pt", "t1"): PT_SCORES["t1"], ("maml", "t1"): PLANTED["t1"]})
    b = _run_with_splits("b", {("pt", "t1"): PLANTED["t1"], ("maml", "t1"): PT_SCORES["t1"]})
    report = build_report([a, b])
    assert report.paired(Column("a", "maml")).mean == pytest.approx(0.04)
    assert report.paired(Column("b", "maml")).mean == pytest.approx(-0.04)
    assert report.compared() == [Column("a", "maml"), Column("b", "maml")]
    assert not build_report([RUN_A]).has_paired()  # no per-split scores: no paired rows anywhere


def test_headless_table_shows_the_paired_rows():
    run = _run_with_splits("r", {**{("pt", t): v for t, v in PT_SCORES.items()},
                                 **{("maml", t): v for t, v in PLANTED.items()}})
    report = build_report([run])
    out = io.StringIO()
    Console(file=out, width=200).print(results_table(report))
    text = out.getvalue()
    paired = report.paired(Column("r", "maml"))
    assert "Δ vs PT" in text and "[95% CI]" in text and P_LABEL in text
    assert delta_text(paired) == "+4.7 [+3.8, +5.6]"
    assert re.search(r"Δ vs PT .* \+4\.7 .*\n.*\[95% CI\] .* \[\+3\.8, \+5\.6\]", text)  # the interval below
    assert p_text(paired) == "<0.001 (15)" and p_text(paired) in text
    assert "t test" in " ".join(text.split())  # the caption says how to read them
    out = io.StringIO()
    Console(file=out, width=200).print(results_table(build_report([RUN_A])))
    assert "Δ vs PT" not in out.getvalue()
