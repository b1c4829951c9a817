"""Exports from the run index: CSV (one row per (run, method, target task, seed), or the aggregated table),
JSON, and the paper's table as Markdown or LaTeX.

`export_document(summaries, fmt, table, metric_scale)` is the one entry point (the CLI's
`mpt-tui export` and the app's Results screen call it):

- `table="splits"`: the chosen cell (best-dev learning rate) of every (run, method, target
  task, seed); `table="tasks"`: the report of `engine.results.report.build_report` (target tasks x
  (run, method) columns, mean ± std over splits, the mean row, the gain over PT, and the
  paired comparison with PT: per task and, on the MEAN rows / summary rows, over all targets).
- `metric_scale` multiplies every score (test, dev, mean, std, the paired Δ and its interval;
  never p-values, counts or the relative gain): 100 gives the paper's percentages.
- Markdown and LaTeX tables are the paper's layout: a row per target task, a column per
  (run, method) as the report orders them, "mean ± std" cells with the best mean of each task in
  bold, then the mean, gain-over-PT, Δ-vs-PT and p rows. LaTeX is a `table` with a `tabular`
  and booktabs rules (the document needs `\\usepackage{booktabs}`); task names are escaped.
- Runs whose setting is one of the paper's ("qin2023:NAME") get the authors' reported numbers
  (`engine.results.reference`): a "reported" section in Markdown/LaTeX (their mean ± std per task for
  each column's method, their mean, ours − reported over the targets both have), rows with run_id
  "reported" and task DIFF_VS_REPORTED in the tasks CSV, and a "reported" list in the tasks JSON.
- JSON is a structured document with numbers, never formatted strings (NaN becomes null).
- `table="similarity"` (CSV and JSON only): each run's task similarity analysis (analysis.json,
  `engine.execution.analysis`; `analyses` maps run ids to the documents, `load_analyses` reads them): CSV one
  row per (run, embedding kind, target, source) with the cosine and the source's rank for that
  target (1: most similar; empty for a source named like the target), JSON every run's whole
  document (matrices, nearest sources, gains, correlations, note). Runs without an analysis are
  left out.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re

from engine.experiment.methods import PT
from engine.experiment.records import SPLITS, CellRecord
from engine.results import reference
from engine.results.report import (CONFIDENCE, DELTA_LABEL, INTERVAL, P_LABEL, Paired, Report, build_report,
                                   delta_text, p_text)

FORMATS = ("csv", "json", "markdown", "latex")
TABLES = ("tasks", "splits", "similarity")
EXTENSIONS = {"csv": "csv", "json": "json", "markdown": "md", "latex": "tex"}

SPLIT_COLUMNS = ["run_id", "name", "state", "model", "setting", "prompt_length", "optimizer", "steps",
                 "batch_size", "method", "task", "metric", "seed", "learning_rate", "best_step", "dev", "test"]
PAIRED_COLUMNS = ["delta_vs_pt", "delta_ci_low", "delta_ci_high", "p_value", "p_test", "df", "p_holm", "p_rank",
                  "rank_test", "n_pairs", "n_unpaired", "no_interval"]
SIMILARITY_COLUMNS = ["run_id", "kind", "target", "source", "similarity", "rank"]
TABLE_COLUMNS = ["run_id", "name", "model", "setting", "method", "task", "metric", "mean", "std", "n",
                 "gain_over_pt", *PAIRED_COLUMNS]


def _scaled(value, scale: float):
    return value * scale if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def split_rows(summaries: list[dict], metric_scale: float = 1.0) -> list[dict]:
    rows = []
    for s in summaries:
        for cell in map(CellRecord.from_dict, s.get(SPLITS, [])):
            rows.append({
                "run_id": s["run_id"], "name": s.get("name", ""), "state": s.get("state", ""),
                "model": s.get("model", ""), "setting": s.get("setting", ""),
                "prompt_length": s.get("prompt_length"), "optimizer": s.get("optimizer", ""),
                "steps": s.get("steps"), "batch_size": s.get("batch_size"),
                "method": cell.method, "task": cell.task, "metric": "" if "metric" in cell.missing else cell.metric,
                "seed": cell.seed, "learning_rate": cell.lr, "best_step": cell.best_step,
                "dev": _scaled(cell.dev, metric_scale), "test": _scaled(cell.test, metric_scale),
            })
    return rows


def _paired_fields(paired: Paired | None, scale: float) -> dict:
    if paired is None:
        return dict.fromkeys(PAIRED_COLUMNS, "")
    return {"delta_vs_pt": _or_blank(paired.mean, scale), "delta_ci_low": _or_blank(paired.low, scale),
            "delta_ci_high": _or_blank(paired.high, scale), "p_value": _or_blank(paired.p, 1.0),
            "p_test": paired.test, "df": _or_blank(paired.df, 1.0), "p_holm": _or_blank(paired.p_holm, 1.0),
            "p_rank": _or_blank(paired.rank_p, 1.0), "rank_test": paired.rank_test, "n_pairs": paired.n,
            "n_unpaired": paired.unpaired, "no_interval": paired.reason}


def _or_blank(value: float | None, scale: float):
    return "" if value is None else value * scale


def table_rows(summaries: list[dict], metric_scale: float = 1.0) -> list[dict]:
    """The report's table, run by run: a row per (method, task) with its paired comparison with PT,
    then the method's MEAN row with its gain over PT and the paired comparison over all targets."""
    rows = []
    for s in summaries:
        report = build_report([s])
        base = {"run_id": s["run_id"], "name": s.get("name", ""), "model": s.get("model", ""),
                "setting": s.get("setting", "")}
        for column in report.columns:
            tasks = [t for t in report.tasks if report.score(t, column)]
            for task in tasks:
                agg = report.score(task, column)
                rows.append({**base, "method": column.method, "task": task, "metric": agg.get("metric", ""),
                             "mean": agg["mean"] * metric_scale, "std": agg["std"] * metric_scale, "n": agg["n"],
                             "gain_over_pt": "", **_paired_fields(report.paired(column, task), metric_scale)})
            if tasks:
                gain, mean = report.gains[column], report.means[column]
                rows.append({**base, "method": column.method, "task": "MEAN", "metric": "",
                             "mean": mean * metric_scale if mean is not None else "", "std": "", "n": len(tasks),
                             "gain_over_pt": gain if gain is not None else "",
                             **_paired_fields(report.paired(column), metric_scale)})
    return rows


def load_analyses(root, summaries: list[dict]) -> dict[str, dict]:
    """{run_id: analysis document} of the summaries' runs that have one (the index keeps only a pointer)."""
    from pathlib import Path

    from engine.results.analysis import read_analysis
    from engine.store.run_dir import Run

    docs = {s["run_id"]: read_analysis(Run(Path(root) / s["run_id"])) for s in summaries if s.get("analysis")}
    return {run_id: doc for run_id, doc in docs.items() if doc}


def similarity_rows(analyses: dict[str, dict]) -> list[dict]:
    rows = []
    for run_id, doc in analyses.items():
        for kind, body in doc["kinds"].items():
            for target, row in zip(doc["targets"], body["matrix"]):
                order = sorted((j for j, s in enumerate(doc["sources"]) if s != target), key=lambda j: -row[j])
                rank = {j: r for r, j in enumerate(order, start=1)}
                rows.extend({"run_id": run_id, "kind": kind, "target": target, "source": source, "similarity": sim,
                             "rank": rank.get(j, "")} for j, (source, sim) in enumerate(zip(doc["sources"], row)))
    return rows


def to_csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# ---- one entry point for every format ----------------------------------------------------------

def export_document(summaries: list[dict], fmt: str = "csv", table: str = "tasks", metric_scale: float = 1.0,
                    digits: int | None = None, analyses: dict[str, dict] | None = None) -> str:
    """The export of `summaries` (index documents, `engine.store.index.summarize`) as text.

    fmt: "csv", "json", "markdown" or "latex"; table: "tasks" (the aggregated report) or "splits"
    (the chosen cell per split); metric_scale: multiplies every score (100: percentages);
    digits: decimals of the Markdown/LaTeX numbers (default 1 when metric_scale >= 10, else 3).
    analyses: {run_id: analysis.json document} for table "similarity" (`load_analyses`).
    An unknown fmt or table is a ValueError with a one-line message.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}' (known: {', '.join(FORMATS)})")
    if table not in TABLES:
        raise ValueError(f"unknown export table '{table}' (known: {', '.join(TABLES)})")
    if table == "similarity":
        if fmt not in ("csv", "json"):
            raise ValueError(f"the similarity table exports as csv or json, not {fmt}")
        analyses = {s["run_id"]: analyses[s["run_id"]] for s in summaries if s["run_id"] in (analyses or {})}
        if fmt == "csv":
            return to_csv(similarity_rows(analyses), SIMILARITY_COLUMNS)
        doc = {"format": "mpt-tui similarity", "version": 1,
               "runs": [{"run_id": run_id, "analysis": a} for run_id, a in analyses.items()]}
        return json.dumps(_no_nan(doc), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if digits is None:
        digits = 1 if metric_scale >= 10 else 3
    if fmt == "csv":
        return (to_csv(split_rows(summaries, metric_scale), SPLIT_COLUMNS) if table == "splits"
                else to_csv(table_rows(summaries, metric_scale) + reference.csv_rows(summaries, metric_scale),
                            TABLE_COLUMNS))
    if fmt == "json":
        doc = _json_splits(summaries, metric_scale) if table == "splits" else _json_tasks(summaries, metric_scale)
        return json.dumps(_no_nan(doc), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if table == "splits":
        grid = _splits_grid(summaries, metric_scale, digits)
    else:
        report = build_report(summaries)
        grid = _tasks_grid(report, metric_scale, digits)
        _add_reported(grid, report, summaries, metric_scale, digits)
    return _markdown(grid) if fmt == "markdown" else _latex(grid)


# ---- JSON ----------------------------------------------------------------------------------------

def _run_meta(s: dict) -> dict:
    return {"run_id": s["run_id"], "name": s.get("name", ""), "model": s.get("model", ""),
            "setting": s.get("setting", ""), "state": s.get("state", ""), "seeds": s.get("seeds", []),
            "prompt_length": s.get("prompt_length"), "optimizer": s.get("optimizer", ""),
            "steps": s.get("steps"), "batch_size": s.get("batch_size")}


def _paired_json(paired: Paired | None, scale: float) -> dict | None:
    if paired is None:
        return None
    return {"mean_difference": _times(paired.mean, scale), "ci_low": _times(paired.low, scale),
            "ci_high": _times(paired.high, scale), "p_value": paired.p, "test": paired.test or None,
            "df": paired.df, "p_holm": paired.p_holm, "rank_p_value": paired.rank_p,
            "rank_test": paired.rank_test or None, "n_pairs": paired.n, "n_unpaired": paired.unpaired,
            "single_split_tasks": paired.single, "no_interval": paired.reason or None}


def _times(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale


def _json_tasks(summaries: list[dict], scale: float) -> dict:
    report = build_report(summaries)
    columns = [{"run_id": c.run_id, "method": c.method, "label": report.header(c),
                "mean": _times(report.means[c], scale), "gain_over_pt": report.gains[c],
                "paired": _paired_json(report.paired(c), scale)} for c in report.columns]
    rows = []
    for task in report.tasks:
        best = report.best_column(task)
        cells = []
        for c in report.columns:
            agg = report.score(task, c)
            cells.append(None if agg is None else {
                "mean": agg["mean"] * scale, "std": agg["std"] * scale, "n": agg["n"],
                "paired": _paired_json(report.paired(c, task), scale)})
        rows.append({"task": task, "metric": report.metrics[task], "cells": cells,
                     "best": report.columns.index(best) if best is not None else None})
    return {"format": "mpt-tui results", "version": 1, "table": "tasks", "metric_scale": scale,
            "paired": {"baseline": PT, "confidence": CONFIDENCE, "interval": INTERVAL,
                       "method": "method minus PT per split; mean over splits, then over tasks; "
                                 "t interval with Welch-Satterthwaite df and the same two-sided t test "
                                 "(p_holm: Holm-adjusted over a run's methods, mean rows); rank_p: Wilcoxon "
                                 "signed-rank over all pairs (the exact sign test where it is undefined)"},
            "runs": [_run_meta(s) for s in summaries], "columns": columns, "rows": rows, "notes": report.notes,
            "reported": reference.json_block(summaries)}


def _json_splits(summaries: list[dict], scale: float) -> dict:
    return {"format": "mpt-tui results", "version": 1, "table": "splits", "metric_scale": scale,
            "runs": [_run_meta(s) for s in summaries],
            "rows": [{k: r[k] for k in ("run_id", "method", "task", "metric", "seed", "learning_rate", "best_step",
                                        "dev", "test")} for r in split_rows(summaries, scale)]}


def _no_nan(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value


# ---- Markdown and LaTeX: one grid, two renderings ---------------------------------------------

# A grid: {"caption": str, "header": [str], "align": "l"/"r" per column, "sections": [[row]], "notes": [str]};
# a row is a list of (text, bold) cells, text plain (each renderer escapes and marks it up).


def _num(value: float | None, digits: int, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _tasks_grid(report: Report, scale: float, digits: int) -> dict:
    columns = report.columns
    several = len(columns) > 1
    task_rows = []
    for task in report.tasks:
        best = report.best_column(task) if several else None
        row = [(task, False), (report.metrics[task], False)]
        for c in columns:
            agg = report.score(task, c)
            text = "-" if agg is None else f"{_num(agg['mean'] * scale, digits)} ± {_num(agg['std'] * scale, digits)}"
            row.append((text, agg is not None and c == best))
        task_rows.append(row)
    summary = [[("mean", False), ("", False)] +
               [(_num(None if report.means[c] is None else report.means[c] * scale, digits), False) for c in columns]]
    if several and any(report.gains[c] is not None for c in columns):
        summary.append([("gain over PT", False), ("", False)] +
                       [("-" if report.gains[c] is None else f"{100 * report.gains[c]:+.1f}%", False)
                        for c in columns])
    if report.has_paired():
        summary.append([(DELTA_LABEL, False), ("", False)] + [(_delta(report.paired(c), scale, digits), False)
                                                              for c in columns])
        summary.append([(P_LABEL, False), ("", False)] + [(_p(report.paired(c)), False) for c in columns])
    scale_text = "" if scale == 1 else f" ×{scale:g}"
    caption = (f"Test scores{scale_text}, mean ± std over the splits; bold: the best mean per task; gain: relative "
               f"to PT's mean.")
    if report.has_paired():
        caption += (f" Δ: the score minus PT's on the same split{scale_text}, mean over splits, then over tasks, "
                    f"with its 95% t interval (Welch-Satterthwaite df; tasks fixed, splits random); p: the same "
                    f"two-sided t test (the number of pairs in brackets; Holm: adjusted over the run's methods).")
    return {"caption": caption, "header": ["target task", "metric"] + [report.header(c) for c in columns],
            "align": ["l", "l"] + ["r"] * len(columns), "sections": [task_rows, summary], "notes": report.notes,
            "label": "tab:mpt-results"}


def _add_reported(grid: dict, report: Report, summaries: list[dict], scale: float, digits: int) -> None:
    """The authors' reported numbers (engine.results.reference) as a last section, when the runs share a
    "qin2023:" setting."""
    found = reference.comparisons(summaries)
    if len(found) == 1:
        rows, notes = reference.grid_section(found[0][1], report, scale, digits)
        grid["sections"].append(rows)
        grid["notes"] = list(grid["notes"]) + notes


def _delta(paired: Paired | None, scale: float, digits: int) -> str:
    return delta_text(paired, scale, digits)


def _p(paired: Paired | None) -> str:
    return p_text(paired)


def _splits_grid(summaries: list[dict], scale: float, digits: int) -> dict:
    report = build_report(summaries)
    columns = report.columns
    keys = sorted({(t, seed) for (t, c), by_seed in report.split_scores.items() for seed in by_seed},
                  key=lambda ts: (ts[0], ts[1]))
    rows = []
    for task, seed in keys:
        row = [(task, False), (str(seed), False)]
        for c in columns:
            value = report.split_scores.get((task, c), {}).get(seed)
            row.append(("-" if value is None else _num(value * scale, digits), False))
        rows.append(row)
    scale_text = "" if scale == 1 else f" ×{scale:g}"
    return {"caption": f"Test scores{scale_text} per split, at the learning rate chosen on dev.",
            "header": ["target task", "seed"] + [report.header(c) for c in columns],
            "align": ["l", "r"] + ["r"] * len(columns), "sections": [rows], "notes": [], "label": "tab:mpt-splits"}


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")


def _markdown(grid: dict) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    out = [grid["caption"], "", line([_md_escape(h) for h in grid["header"]]),
           "|" + "|".join("---:" if a == "r" else "---" for a in grid["align"]) + "|"]
    for section in grid["sections"]:
        for row in section:
            out.append(line([(f"**{_md_escape(t)}**" if bold else _md_escape(t)) for t, bold in row]))
    if grid["notes"]:
        out += [""] + [f"Note: {n}." for n in grid["notes"]]
    return "\n".join(out) + "\n"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "±": r"$\pm$", "Δ": r"$\Delta$", "×": r"$\times$", "<": r"$<$", ">": r"$>$"}


def latex_escape(text: str) -> str:
    """Plain text as LaTeX (pdflatex-safe: the few non-ASCII signs the tables use become math)."""
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_cell(text: str) -> str:
    """Escaped; a lone "-" (no value) becomes an en dash, a number's minus sign a math minus."""
    if text == "-":
        return "--"
    return re.sub(r"(?<![\w.])-(?=\d)", "$-$", latex_escape(text))


def _latex(grid: dict) -> str:
    def line(cells: list[str]) -> str:
        first = "{}" if cells and cells[0].startswith("[") else ""  # "\\" then "[" would read as an argument
        return first + " & ".join(cells) + r" \\"

    spec = "".join(grid["align"])
    out = [r"% mpt-tui export; needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small",
           rf"\begin{{tabular}}{{{spec}}}", r"\toprule", line([_latex_cell(h) for h in grid["header"]])]
    for section in grid["sections"]:
        out.append(r"\midrule")
        for row in section:
            out.append(line([rf"\textbf{{{_latex_cell(t)}}}" if bold else _latex_cell(t) for t, bold in row]))
    caption = grid["caption"] + "".join(f" Note: {n}." for n in grid["notes"])
    out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{latex_escape(caption)}}}", rf"\label{{{grid['label']}}}",
            r"\end{table}"]
    return "\n".join(out) + "\n"
