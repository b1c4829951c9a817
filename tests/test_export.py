"""CSV export (engine.results.export) from the index, through the CLI too; results are synthetic cell records."""

from __future__ import annotations

import csv
import io
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.results.export import SPLIT_COLUMNS, split_rows, table_rows, to_csv
from engine.experiment.plan import select_and_aggregate
from engine.store.run_dir import Run, create_run, list_runs, write_json_atomic
from engine.store.index import RunIndex, summarize

from conftest import EXPECTED_CHOICE, synthetic_cells

PRESET_FOR_EXPORT = {
    "name": "exp", "model": {"name": "tiny-model"}, "prompt": {"length": 16},
    "downstream": {"learning_rates": [0.3, 0.1], "steps": 30, "batch_size": 8, "optimizer": "adafactor"},
}


@pytest.fixture
def export_runs(tmp_path) -> Path:
    """Three runs as the worker leaves them: two finished with results, one queued without; all indexed."""
    root = tmp_path / "runs"
    full = select_and_aggregate(synthetic_cells())
    only_b = select_and_aggregate([c for c in synthetic_cells() if c["task"] == "task-b"])
    index = RunIndex(root)
    for name, results in (("first", full), ("second", only_b), ("third", None)):
        config = {"preset": {**PRESET_FOR_EXPORT, "name": name},
                  "plan": {"setting": "cls", "targets": ["task-a", "task-b", "task-c"], "seeds": [13, 42, 100],
                           "methods": ["pt", "mpt"]}}
        run = create_run(root, config, name)
        if results is not None:
            write_json_atomic(run.results_path, results)
            run.update_status(state="finished", finished=time.time())
        index.record(run)
        time.sleep(0.01)
    return root


def _expected_split_keys(root: Path) -> list[tuple]:
    runs = {Run(p).config()["preset"]["name"]: p.name for p in root.iterdir() if p.is_dir()}
    keys = [(runs["first"], m, t, s) for (m, t, s) in EXPECTED_CHOICE]
    keys += [(runs["second"], "pt", "task-b", s) for s in (13, 42, 100)]
    return sorted(keys)


def test_summarize_and_split_rows(export_runs):
    summaries = [summarize(run) for run in list_runs(export_runs)]
    by_name = {s["name"]: s for s in summaries}
    assert by_name["first"]["state"] == "finished" and by_name["third"]["state"] == "queued"
    assert by_name["first"]["model"] == "tiny-model" and by_name["first"]["setting"] == "cls"
    assert by_name["third"]["splits"] == [] and by_name["third"]["tasks"] == {}
    rows = split_rows(summaries)
    assert len(rows) == len(EXPECTED_CHOICE) + 3
    assert sorted((r["run_id"], r["method"], r["task"], r["seed"]) for r in rows) == _expected_split_keys(export_runs)
    for r in rows:
        assert set(r) == set(SPLIT_COLUMNS)
        assert (r["name"], r["model"], r["setting"], r["optimizer"]) in {
            ("first", "tiny-model", "cls", "adafactor"), ("second", "tiny-model", "cls", "adafactor")}
        assert (r["prompt_length"], r["steps"], r["batch_size"], r["best_step"]) == (16, 30, 8, 10)
        if r["name"] == "first":
            assert (r["learning_rate"], r["test"]) == EXPECTED_CHOICE[(r["method"], r["task"], r["seed"])]


def test_table_rows_with_mean(export_runs):
    summaries = RunIndex(export_runs).all()
    rows = table_rows(summaries)
    first = [r for r in rows if r["name"] == "first"]
    assert [(r["method"], r["task"]) for r in first] == [  # PT first, as in every rendering of the report
        ("pt", "task-a"), ("pt", "task-b"), ("pt", "task-c"), ("pt", "MEAN"),
        ("mpt", "task-a"), ("mpt", "MEAN")]
    pt_mean = next(r for r in first if (r["method"], r["task"]) == ("pt", "MEAN"))
    assert pt_mean["mean"] == pytest.approx(0.5) and pt_mean["n"] == 3 and pt_mean["gain_over_pt"] == 0.0
    mpt_mean = next(r for r in first if (r["method"], r["task"]) == ("mpt", "MEAN"))
    assert mpt_mean["gain_over_pt"] == pytest.approx((mpt_mean["mean"] - 0.5) / 0.5)
    second = [r for r in rows if r["name"] == "second"]
    assert [(r["task"], round(r["mean"], 6)) for r in second] == [("task-b", 0.4), ("MEAN", 0.4)]
    assert not [r for r in rows if r["name"] == "third"]


SPLIT_HEADER = ["run_id", "name", "state", "model", "setting", "prompt_length", "optimizer", "steps", "batch_size",
                "method", "task", "metric", "seed", "learning_rate", "best_step", "dev", "test"]
TABLE_HEADER = ["run_id", "name", "model", "setting", "method", "task", "metric", "mean", "std", "n", "gain_over_pt",
                "delta_vs_pt", "delta_ci_low", "delta_ci_high", "p_value", "p_test", "df", "p_holm", "p_rank",
                "rank_test", "n_pairs", "n_unpaired", "no_interval"]


def _parse_csv(text: str) -> tuple[list[str], list[dict]]:
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


def test_to_csv_one_row_per_split(export_runs):
    text = to_csv(split_rows(RunIndex(export_runs).all()), SPLIT_COLUMNS)
    header, rows = _parse_csv(text)
    assert header == SPLIT_HEADER
    assert len(rows) == len(EXPECTED_CHOICE) + 3
    assert sorted((r["run_id"], r["method"], r["task"], int(r["seed"])) for r in rows) == \
        _expected_split_keys(export_runs)
    nan_row = next(r for r in rows if r["task"] == "task-c")
    assert float(nan_row["dev"]) == pytest.approx(0.2) and float(nan_row["learning_rate"]) == 0.1


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MPT_TUI_RUNS_DIR", None)
    return subprocess.run([sys.executable, "-m", "mpt_tui.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_export_splits_csv(export_runs, tmp_path):
    out = tmp_path / "splits.csv"
    result = _cli("export", "--format", "csv", "--out", str(out), "--runs-dir", str(export_runs), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    summaries = [summarize(run) for run in list_runs(export_runs)]
    assert text == to_csv(split_rows(summaries), SPLIT_COLUMNS)
    header, rows = _parse_csv(text)
    assert header == SPLIT_HEADER and len(rows) == len(EXPECTED_CHOICE) + 3
    assert f"wrote {len(rows)} rows" in result.stderr
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_export_tasks_table(export_runs, tmp_path):
    out = tmp_path / "tasks.csv"
    result = _cli("export", "--format", "csv", "--table", "tasks", "--out", str(out),
                  "--runs-dir", str(export_runs), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, rows = _parse_csv(out.read_text(encoding="utf-8"))
    assert header == TABLE_HEADER
    assert len(rows) == 6 + 2
    means = [r for r in rows if r["task"] == "MEAN"]
    assert {(r["name"], r["method"]): float(r["mean"]) for r in means} == {
        ("first", "mpt"): pytest.approx(0.2), ("first", "pt"): pytest.approx(0.5),
        ("second", "pt"): pytest.approx(0.4)}
    task_a = next(r for r in rows if (r["name"], r["method"], r["task"]) == ("first", "pt", "task-a"))
    assert float(task_a["mean"]) == pytest.approx(0.8)
    assert float(task_a["std"]) == pytest.approx(statistics.pstdev([0.8, 0.7, 0.9]))
    assert int(task_a["n"]) == 3 and task_a["metric"] == "accuracy"


def test_cli_export_to_stdout_and_run_filter(export_runs, tmp_path):
    first = next(p.name for p in export_runs.iterdir() if p.is_dir() and Run(p).config()["preset"]["name"] == "first")
    result = _cli("export", "--run", first, "--runs-dir", str(export_runs), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, rows = _parse_csv(result.stdout)
    assert header == SPLIT_HEADER and len(rows) == len(EXPECTED_CHOICE)
    assert {r["run_id"] for r in rows} == {first}
    bad = _cli("export", "--run", "no-such-run", "--runs-dir", str(export_runs), cwd=tmp_path)
    assert bad.returncode == 2 and "no-such-run" in bad.stderr


def test_cli_export_missing_runs_dir(tmp_path):
    result = _cli("export", "--runs-dir", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == 2
    assert str(tmp_path / "nope") in result.stderr


# ---- export_document: CSV, JSON, Markdown, LaTeX --------------------------------------------------

import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402

from engine.results.export import FORMATS, TABLE_COLUMNS, export_document  # noqa: E402
from engine.results.report import Column, build_report, p_text  # noqa: E402


def _paper_summaries() -> list[dict]:
    """One run, three targets with underscores in their names, PT and two methods over five splits."""
    pt = {"hate_speech18": [0.48, 0.47, 0.475, 0.479, 0.478], "poem_sentiment": [0.25, 0.27, 0.26, 0.24, 0.27],
          "tweet_eval-stance_atheism": [0.26, 0.24, 0.29, 0.25, 0.27]}
    offsets = {"mtl": [0.01, -0.02, 0.03, 0.0, -0.01], "reptile": [0.05, 0.07, 0.06, 0.04, 0.08]}
    cells = []
    for method, rise in [("pt", [0.0] * 5), *offsets.items()]:
        for task, scores in pt.items():
            for seed, score, d in zip([13, 21, 42, 87, 100], scores, rise):
                if (method, task, seed) == ("mtl", "poem_sentiment", 100):
                    continue  # one split missing: unpaired
                cells.append({"method": method, "task": task, "seed": seed, "lr": 0.3, "dev": 0.5,
                              "test": score + d, "metric": "Classification-F1", "best_step": 10})
    results = select_and_aggregate(cells)
    return [{"run_id": "20260101-000000-paper", "name": "paper", "state": "finished", "model": "m",
             "setting": "class_to_class", **results}]


def _md_cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_csv_through_export_document_is_todays_csv(export_runs):
    summaries = RunIndex(export_runs).all()
    assert export_document(summaries, "csv", "splits") == to_csv(split_rows(summaries), SPLIT_COLUMNS)
    assert export_document(summaries, "csv", "tasks") == to_csv(table_rows(summaries), TABLE_COLUMNS)
    scaled = list(csv.DictReader(io.StringIO(export_document(summaries, "csv", "splits", metric_scale=100))))
    plain = list(csv.DictReader(io.StringIO(export_document(summaries, "csv", "splits"))))
    assert [float(r["test"]) for r in scaled] == pytest.approx([100 * float(r["test"]) for r in plain])
    with pytest.raises(ValueError, match="unknown export format 'xlsx'"):
        export_document(summaries, "xlsx")
    with pytest.raises(ValueError, match="unknown export table"):
        export_document(summaries, "csv", "cells")


def test_csv_tasks_table_carries_the_paired_comparison(export_runs):
    rows = table_rows(RunIndex(export_runs).all())
    first = {(r["method"], r["task"]): r for r in rows if r["name"] == "first"}
    # mpt has task-a seed 13 only; PT has task-a x3, task-b x3, task-c x1: one pair, six splits unpaired
    assert first[("mpt", "task-a")]["n_pairs"] == 1 and first[("mpt", "task-a")]["n_unpaired"] == 2
    assert first[("mpt", "MEAN")]["n_pairs"] == 1 and first[("mpt", "MEAN")]["n_unpaired"] == 6
    assert first[("mpt", "MEAN")]["delta_vs_pt"] == pytest.approx(0.2 - 0.8)
    # one pair: no spread, so no interval and no t test p (the reason says so); the rank test's p is 1
    assert first[("mpt", "MEAN")]["p_test"] == "t" and first[("mpt", "MEAN")]["p_value"] == ""
    assert first[("mpt", "MEAN")]["no_interval"].startswith("one paired split per task")
    assert first[("mpt", "MEAN")]["rank_test"] == "wilcoxon" and first[("mpt", "MEAN")]["p_rank"] == pytest.approx(1.0)
    assert first[("pt", "MEAN")]["delta_vs_pt"] == "" and first[("pt", "task-a")]["p_value"] == ""


def test_json_is_a_structured_document_with_numbers():
    summaries = _paper_summaries()
    doc = json.loads(export_document(summaries, "json", "tasks", metric_scale=100))
    report = build_report(summaries)
    assert doc["table"] == "tasks" and doc["metric_scale"] == 100
    assert [(c["run_id"], c["method"]) for c in doc["columns"]] == [(c.run_id, c.method) for c in report.columns]
    assert [r["task"] for r in doc["rows"]] == report.tasks
    for row in doc["rows"]:
        for cell, column in zip(row["cells"], report.columns):
            agg = report.score(row["task"], column)
            assert isinstance(cell["mean"], float) and cell["mean"] == pytest.approx(100 * agg["mean"])
            assert cell["std"] == pytest.approx(100 * agg["std"]) and cell["n"] == agg["n"]
        assert report.columns[row["best"]] == report.best_column(row["task"])
    reptile = next(c for c in doc["columns"] if c["method"] == "reptile")
    paired = report.paired(Column("20260101-000000-paper", "reptile"))
    assert reptile["paired"]["mean_difference"] == pytest.approx(100 * paired.mean)
    assert reptile["paired"]["ci_low"] == pytest.approx(100 * paired.low)
    assert reptile["paired"]["p_value"] == pytest.approx(paired.p)  # never scaled
    assert reptile["paired"]["n_pairs"] == 15 and reptile["paired"]["test"] == "t"
    assert reptile["paired"]["p_holm"] == pytest.approx(paired.p_holm) and reptile["paired"]["rank_test"] == "wilcoxon"
    mtl = next(c for c in doc["columns"] if c["method"] == "mtl")
    assert (mtl["paired"]["n_pairs"], mtl["paired"]["n_unpaired"]) == (14, 1)
    assert doc["columns"][0]["paired"] is None and doc["columns"][0]["gain_over_pt"] == 0.0
    splits = json.loads(export_document(summaries, "json", "splits"))
    assert len(splits["rows"]) == 3 * 5 * 3 - 1 and isinstance(splits["rows"][0]["test"], float)


def test_json_has_no_nan(export_runs):
    summaries = RunIndex(export_runs).all()
    for table in ("tasks", "splits"):
        text = export_document(summaries, "json", table)
        json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))


def test_markdown_is_the_papers_table():
    summaries = _paper_summaries()
    report = build_report(summaries)
    text = export_document(summaries, "markdown", metric_scale=100)
    rows = [line for line in text.splitlines() if line.startswith("|")]
    widths = {len(_md_cells(line)) for line in rows}
    assert widths == {2 + len(report.columns)}  # every row: target task, metric, one cell per column
    header, rule, *body = rows
    assert _md_cells(header) == ["target task", "metric", "PT", "MTL", "Reptile"]
    by_task = {_md_cells(line)[0]: _md_cells(line) for line in body}
    for task in report.tasks:
        cells = by_task[task]
        bold = [i for i, c in enumerate(cells[2:]) if c.startswith("**")]
        assert bold == [report.columns.index(report.best_column(task))]  # one bold cell: the best mean
        agg = report.score(task, report.columns[0])
        assert cells[2] == f"{100 * agg['mean']:.1f} ± {100 * agg['std']:.1f}"  # metric_scale applied
    assert by_task["mean"][2:] == [f"{100 * report.means[c]:.1f}" for c in report.columns]
    assert by_task["gain over PT"][2] == "+0.0%"
    assert by_task["Δ vs PT [95% CI]"][2] == "-" and by_task["Δ vs PT [95% CI]"][4].startswith("+6.0 [")
    mtl = report.paired(Column("20260101-000000-paper", "mtl"))
    assert by_task["p (pairs)"][3] == p_text(mtl) == f"{mtl.p_holm:.3f} (14, Holm)"  # 4 methods vs PT: Holm
    assert "1 split that only one of the two has" in text  # the unpaired split is said
    unscaled = export_document(summaries, "markdown")
    assert f"{report.means[report.columns[0]]:.3f}" in unscaled  # metric_scale 1: three decimals
    split_rows_md = [line for line in export_document(summaries, "markdown", "splits").splitlines()
                     if line.startswith("|")]
    assert {len(_md_cells(line)) for line in split_rows_md} == {2 + len(report.columns)}
    assert len(split_rows_md) == 2 + 15


def _latex_rows(text: str) -> list[str]:
    """The tabular's rows (without the rules), one string each."""
    body = text.split(r"\begin{tabular}", 1)[1].split(r"\end{tabular}", 1)[0]
    return [line for line in body.splitlines()[1:] if line.endswith(r"\\")]


def test_latex_is_a_booktabs_table():
    summaries = _paper_summaries()
    report = build_report(summaries)
    text = export_document(summaries, "latex", metric_scale=100)
    assert text.count(r"\begin{table}") == text.count(r"\end{table}") == 1
    assert text.count(r"\begin{tabular}") == text.count(r"\end{tabular}") == 1
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in text
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", text).group(1)
    assert spec == "ll" + "r" * len(report.columns)
    rows = _latex_rows(text)
    for row in rows:
        assert len(re.findall(r"(?<!\\)&", row)) == len(spec) - 1, row
    assert r"hate\_speech18" in text and r"tweet\_eval-stance\_atheism" in text
    assert not re.search(r"(?<!\\)_", text.replace(r"\label{tab:mpt-results}", ""))  # every underscore escaped
    task_rows = [r for r in rows if r.split(" & ")[0].replace("\\_", "_") in report.tasks]
    assert len(task_rows) == len(report.tasks)
    for row in task_rows:
        task = row.split(" & ")[0].replace("\\_", "_")
        assert row.count(r"\textbf") == 1
        cells = row.removesuffix(r" \\").split(" & ")
        best = report.columns.index(report.best_column(task))
        agg = report.score(task, report.best_column(task))
        assert cells[2 + best] == rf"\textbf{{{100 * agg['mean']:.1f} $\pm$ {100 * agg['std']:.1f}}}"
    assert r"$\Delta$ vs PT [95\% CI]" in text and r"+0.0\%" in text
    splits = export_document(summaries, "latex", "splits", metric_scale=100)
    assert len(_latex_rows(splits)) == 1 + 15 and r"\label{tab:mpt-splits}" in splits


@pytest.mark.skipif(not shutil.which("pdflatex"), reason="no pdflatex on this machine (the structure is checked above)")
def test_latex_compiles(tmp_path):
    summaries = _paper_summaries()
    two_runs = summaries + [{**summaries[0], "run_id": "20260102-000000-again"}]
    body = export_document(two_runs, "latex", metric_scale=100) + export_document(summaries, "latex", "splits")
    (tmp_path / "t.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                    + body + "\\end{document}\n", encoding="utf-8")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "t.pdf").stat().st_size > 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_of_an_empty_selection(fmt):
    assert isinstance(export_document([], fmt), str)
