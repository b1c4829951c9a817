"""Running a preset without the Textual app: validation, progress, and the final table."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from engine.results import (DELTA_LABEL, P_LABEL, PAIRED_EXPLANATION, Report, delta_text, format_duration, gain_text,
                            mean_text, p_text, score_text)


def workers_line(cluster: dict) -> str:
    """A Ray run's workers in one line: each one's node, device and unit, and the cluster's GPUs in use."""
    workers = "; ".join(f"{w['id']} {w['node']} {w['device']}: {w['unit']}" for w in cluster.get("workers", []))
    gpus = f", GPUs {cluster['gpus_in_use']:g}/{cluster['gpus_total']:g} in use" if cluster.get("gpus_total") else ""
    return f"ray workers{gpus}: {workers or 'none yet'}"


class TerminalReporter:
    """A progress bar with ETA, for an interactive terminal."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("steps"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=console, transient=False)
        self.task = None

    def start(self, total_steps: int, done_steps: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("prompt tuning", total=total_steps, completed=done_steps)

    def advance(self, done_steps: int, text: str) -> None:
        self.progress.update(self.task, completed=done_steps, description=text)

    def message(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/dim]")

    def workers(self, cluster: dict) -> None:
        self.console.print(f"[dim]{workers_line(cluster)}[/dim]", highlight=False)

    def close(self) -> None:
        self.progress.stop()


class LineReporter:
    """Plain, timestamped log lines for logs and cron jobs: at most one progress line every few seconds."""

    def __init__(self, stream=sys.stdout, every_s: float = 10.0):
        self.stream, self.every_s = stream, every_s
        self.total = self.first = 0
        self.t0 = self.last = 0.0

    def _line(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", file=self.stream, flush=True)

    def start(self, total_steps: int, done_steps: int) -> None:
        self.total, self.first = total_steps, done_steps
        self.t0 = self.last = time.time()
        self._line(f"start: {total_steps} steps in all, {done_steps} already done")

    def advance(self, done_steps: int, text: str) -> None:
        now = time.time()
        if now - self.last < self.every_s and done_steps < self.total:
            return
        self.last = now
        rate = (done_steps - self.first) / max(now - self.t0, 1e-9)
        eta = (self.total - done_steps) / rate if rate > 0 else None
        pct = 100.0 * done_steps / max(self.total, 1)
        self._line(f"progress {pct:5.1f}% ({done_steps}/{self.total} steps) ETA {format_duration(eta)}: {text}")

    def message(self, text: str) -> None:
        self._line(text)

    def workers(self, cluster: dict) -> None:
        self._line(workers_line(cluster))

    def close(self) -> None:
        pass


def results_table(report: Report, title: str = "") -> Table:
    """Target tasks x methods, mean ± std over splits (x100), the mean row, gains over PT, and the paired
    comparison with PT over all targets (Δ with its 95% t interval; the same t test's p, Holm-adjusted over several methods, and the pair count)."""
    paired = report.has_paired()
    caption = "; ".join(report.notes + ([PAIRED_EXPLANATION] if paired else []))
    table = Table(title=title or None, caption=caption or None)
    table.add_column("target task", no_wrap=True)
    table.add_column("metric")
    for column in report.columns:
        table.add_column(report.header(column), justify="right", no_wrap=True)
    for task in report.tasks:
        best = report.best_column(task)
        table.add_row(task, report.metrics[task], *[
            f"[bold]{score_text(report.score(task, c))}[/bold]" if c == best and len(report.columns) > 1
            else score_text(report.score(task, c)) for c in report.columns])
    table.add_section()
    table.add_row("mean", "", *[mean_text(report.means[c]) for c in report.columns], style="bold")
    if any(report.gains[c] is not None for c in report.columns) and len(report.columns) > 1:
        table.add_row("gain over PT", "", *[gain_text(report.gains[c]) for c in report.columns])
    if paired:
        # the interval on a second line keeps the columns as narrow as the scores
        table.add_row(DELTA_LABEL.replace(" [", "\n["), "",
                      *[delta_text(report.paired(c)).replace(" [", "\n[") for c in report.columns])
        table.add_row(P_LABEL, "", *[p_text(report.paired(c)) for c in report.columns])
    return table
