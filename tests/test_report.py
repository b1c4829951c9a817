"""The comparison table (engine.report), and its renderings: headless table, CSV aggregate, `mpt-tui runs`."""

from __future__ import annotations

import io
import math

import pytest
from rich.console import Console

from engine.export import table_rows
from engine.report import Column, build_report, format_duration, gain_text, means_line, score_text
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
