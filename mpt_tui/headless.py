"""Running a preset without the Textual app: validation, progress, and the final table."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


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

    def close(self) -> None:
        pass


METHOD_ORDER = ("pt", "mtl", "maml", "fomaml", "reptile")
METHOD_LABELS = {"pt": "PT", "mtl": "MTL", "maml": "MAML", "fomaml": "FoMAML", "reptile": "Reptile"}


def results_table(results: dict, title: str = "") -> Table:
    """Target tasks x methods, mean ± std over splits (x100), the mean row, and gains over PT."""
    found = results.get("tasks", {})
    methods = [m for m in METHOD_ORDER if m in found] + sorted(m for m in found if m not in METHOD_ORDER)
    tasks = sorted({t for m in methods for t in results["tasks"][m]})
    table = Table(title=title or None)
    table.add_column("target task", no_wrap=True)
    table.add_column("metric")
    for method in methods:
        table.add_column(METHOD_LABELS.get(method, method), justify="right", no_wrap=True)
    for task in tasks:
        metric = next(results["tasks"][m][task]["metric"] for m in methods if task in results["tasks"][m])
        cells = []
        for m in methods:
            agg = results["tasks"][m].get(task)
            cells.append(f"{100 * agg['mean']:.1f} ± {100 * agg['std']:.1f}" if agg else "-")
        table.add_row(task, metric, *cells)
    table.add_section()
    table.add_row("mean", "", *[f"{100 * results['mean'][m]:.1f}" for m in methods], style="bold")
    if "pt" in methods and len(methods) > 1 and results["mean"]["pt"]:
        base = results["mean"]["pt"]
        table.add_row("gain over PT", "", *[f"{100 * (results['mean'][m] - base) / abs(base):+.1f}%" for m in methods])
    return table
