"""CSV export from the run index: one row per (run, method, target task, seed), or the aggregated table."""

from __future__ import annotations

import csv
import io

from engine.report import build_report

SPLIT_COLUMNS = ["run_id", "name", "state", "model", "setting", "prompt_length", "optimizer", "steps",
                 "batch_size", "method", "task", "metric", "seed", "learning_rate", "best_step", "dev", "test"]
TABLE_COLUMNS = ["run_id", "name", "model", "setting", "method", "task", "metric", "mean", "std", "n", "gain_over_pt"]


def split_rows(summaries: list[dict]) -> list[dict]:
    rows = []
    for s in summaries:
        for cell in s.get("splits", []):
            rows.append({
                "run_id": s["run_id"], "name": s.get("name", ""), "state": s.get("state", ""),
                "model": s.get("model", ""), "setting": s.get("setting", ""),
                "prompt_length": s.get("prompt_length"), "optimizer": s.get("optimizer", ""),
                "steps": s.get("steps"), "batch_size": s.get("batch_size"),
                "method": cell["method"], "task": cell["task"], "metric": cell.get("metric", ""),
                "seed": cell["seed"], "learning_rate": cell["lr"], "best_step": cell.get("best_step"),
                "dev": cell["dev"], "test": cell["test"],
            })
    return rows


def table_rows(summaries: list[dict]) -> list[dict]:
    """The report's table, run by run: a row per (method, task), then the method's MEAN row with its gain over PT."""
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
                             "mean": agg["mean"], "std": agg["std"], "n": agg["n"], "gain_over_pt": ""})
            if tasks:
                gain = report.gains[column]
                rows.append({**base, "method": column.method, "task": "MEAN", "metric": "",
                             "mean": report.means[column], "std": "", "n": len(tasks),
                             "gain_over_pt": gain if gain is not None else ""})
    return rows


def to_csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
