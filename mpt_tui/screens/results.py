"""Results: the paper's comparison table for the finished runs the user selects, from the index.

The table is `engine.results.report.build_report`'s, the same report the CLI prints: each
column's mean is over its own run's targets and its gain over its own run's PT; the
last two rows compare each method with PT split by split over all targets (the mean
paired difference with its 95% t interval, and the same t test's p-value, Holm-adjusted
over the run's methods, with the number of pairs; `engine.results.report` says how); `enter` on a task shows the same per task.
The index is read in a worker: another process holding its lock never freezes the app.
The best method per task is bold and marked ▲ (a marker that survives a monochrome
terminal); under the table, a bar chart of each column's mean ± std: of the task under
the cursor (std over its splits), or on a summary row of all targets (the mean over the
column's targets; std over splits of the per-split mean over targets).

`x` exports in the chosen format (`f` cycles CSV, JSON, Markdown, LaTeX): both tables,
`<stamp>-splits.<ext>` and `<stamp>-tasks.<ext>` under `<runs>/exports/`
(`engine.results.export.export_document`; CSV and JSON in raw scores as the CLI writes them,
Markdown and LaTeX x100 as the table here). The footer shows the one format `x` writes.
"""

from __future__ import annotations

import math
import statistics
import time

from filelock import Timeout
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Label
from textual.worker import get_current_worker

from engine.results import EXTENSIONS, FORMATS, export_document
from engine.experiment import label
from engine.results import (DELTA_LABEL, P_LABEL, Column, Report, build_report, delta_text, gain_text, mean_text,
                            p_text, paired_line, prepare_statistics, score_text)
from engine.store import RunsDirError
from engine.store import RunIndex
from mpt_tui.messages import IndexBusy, IndexLoaded, ReportWorkerErrors, deliver
from mpt_tui.widgets import BarChart
from mpt_tui.widgets.bar_chart import BEST

INDEX_WAIT_S = 120.0  # as long as the engine's own index users wait
INDEX_POLL_S = 0.25  # the worker re-tries the lock this often, so a cancelled read ends soon
FORMAT_NAMES = {"csv": "CSV", "json": "JSON", "markdown": "Markdown", "latex": "LaTeX"}
FORMAT_KEYS = {"csv": "CSV", "json": "JSON", "markdown": "MD", "latex": "LaTeX"}  # short, for the footer
FORMAT_SCALE = {"csv": 1.0, "json": 1.0, "markdown": 100.0, "latex": 100.0}
EXPORT_TIPS = {
    "csv": "per-split rows and the aggregated table (with the paired comparison), under <runs>/exports",
    "json": "the same two tables as structured JSON, under <runs>/exports",
    "markdown": "the paper's table (x100, best in bold, paired Δ and p) and the per-split table, under <runs>/exports",
    "latex": "the paper's table as a booktabs table (x100, best in bold) and the per-split table, under <runs>/exports",
}


def overall_spread(report: Report, column: Column) -> float:
    """Std over splits of the column's per-split mean over its targets (x100; 0 without per-split scores)."""
    by_task = {t: s for (t, c), s in report.split_scores.items() if c == column}
    seeds = set.intersection(*(set(s) for s in by_task.values())) if by_task else set()
    per_seed = [statistics.fmean(s[seed] for s in by_task.values()) for seed in sorted(seeds)]
    per_seed = [v for v in per_seed if math.isfinite(v)]
    return 100 * statistics.pstdev(per_seed) if len(per_seed) > 1 else 0.0


def chart_rows(report: Report, task: str | None) -> list[tuple[str, float | None, float]]:
    """(header, mean x100, std x100) per column: on `task`, or over all targets (task None)."""
    rows = []
    for column in report.columns:
        if task is None:
            mean = report.means[column]
            rows.append((report.header(column), None if mean is None else 100 * mean, overall_spread(report, column)))
        else:
            agg = report.score(task, column)
            rows.append((report.header(column), 100 * agg["mean"] if agg else None, 100 * agg["std"] if agg else 0.0))
    return rows


class SplitDetail(ModalScreen):
    """Per-split scores and the chosen learning rate of one task, and each method's paired comparison with PT on it."""

    BINDINGS = [Binding("escape,enter", "dismiss", "Close", id="close-detail")]
    DEFAULT_CSS = "#split-paired { height: auto; margin-bottom: 1; } #split-table { height: 1fr; }"

    def __init__(self, task: str, summaries: list[dict]):
        super().__init__()
        self.task_name = task  # not self.task: Textual's message pumps have a read-only `task`
        self.summaries = summaries

    def compose(self) -> ComposeResult:
        with Vertical(id="detail-box"):
            yield Label(f"[b]{self.task_name}[/b]: the learning rate chosen on dev, per split")
            yield Label("", id="split-paired")
            yield DataTable(id="split-table", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("run", "method", "seed", "lr", "best step", "dev", "test")
        for s in self.summaries:
            for c in s.get("splits", []):
                if c["task"] == self.task_name:
                    table.add_row(s["run_id"], label(c["method"]), c["seed"], f"{c['lr']:g}",
                                  c.get("best_step", ""), f"{100 * c['dev']:.1f}", f"{100 * c['test']:.1f}")
        report = build_report(self.summaries)
        lines = [f"{report.header(c)}: {paired_line(report.paired(c, self.task_name))}" for c in report.compared()
                 if report.score(self.task_name, c)]
        paired = self.query_one("#split-paired", Label)
        paired.update(Text("\n".join(lines)))  # plain text: "[95% CI]"-like brackets are no markup
        paired.display = bool(lines)


class ResultsScreen(ReportWorkerErrors, Screen):
    BINDINGS = [
        Binding("space", "toggle_run", "Select run", id="toggle-run",
                tooltip="add the run under the cursor to the table, or remove it"),
        Binding("s", "sort", "Sort", id="sort", tooltip="the tasks, by the next column (best first)"),
        # one x per format, only the chosen one active (check_action), so the footer names what x writes
        *[Binding("x", f"export('{fmt}')", f"Export {FORMAT_KEYS[fmt]}",
                  id="export" if fmt == "csv" else f"export-{fmt}", tooltip=EXPORT_TIPS[fmt]) for fmt in FORMATS],
        Binding("f", "next_format", "Export format", id="export-format", show=False,
                tooltip="the export format x writes: CSV, JSON, Markdown, LaTeX in turn"),
        Binding("enter", "detail", "Per split", id="detail", show=False,
                tooltip="per-split scores and chosen learning rates of the task under the cursor"),
    ]

    export_format = "csv"

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="results-body"):
            yield Label("Finished runs (space selects):", id="runs-label")
            yield DataTable(id="finished-runs", cursor_type="row")
            yield Label(f"Test scores x100, mean ± std over splits ({BEST} bold: the best per task):", id="table-label")
            yield DataTable(id="comparison", cursor_type="row", zebra_stripes=True)
            yield Label("", id="report-notes")
            yield BarChart(id="chart")
        yield Footer()

    def on_mount(self) -> None:
        self.summaries: list[dict] = []
        self.selected_ids: list[str] = []
        self.loaded = False
        self.export_pending, self.pending_format = False, "csv"
        self.sort_column = -1
        self.report = build_report([])
        self.query_one("#finished-runs", DataTable).add_columns(" ", "run", "name", "model", "targets", "methods")
        self.query_one("#runs-label", Label).update("Finished runs: reading the run index…")
        self.query_one("#report-notes", Label).display = False

    def on_screen_resume(self) -> None:
        self.load_index()

    # ---- the index, read in a worker -------------------------------------------------------

    @work(thread=True, exclusive=True, group="read-index", exit_on_error=False)
    def load_index(self) -> None:
        worker = get_current_worker()
        index = RunIndex(self.app.runs_root, timeout_s=INDEX_POLL_S)
        deadline = time.monotonic() + INDEX_WAIT_S
        told = False
        while True:
            try:
                summaries = index.all()
                break
            except Timeout:
                if worker.is_cancelled:
                    return
                if time.monotonic() > deadline:
                    raise RunsDirError(f"the run index {index.path} stayed locked for {INDEX_WAIT_S:.0f} s") from None
                if not told:
                    told = deliver(self, IndexBusy(str(index.lock.lock_file)))
        finished = [s for s in summaries if s.get("state") == "finished"]
        if finished:
            prepare_statistics()  # SciPy's import (about a second) here, not on the UI thread at the first draw
        deliver(self, IndexLoaded(finished))

    def on_index_busy(self, message: IndexBusy) -> None:
        self.query_one("#runs-label", Label).update(
            f"Finished runs: waiting for the run index ({message.lock_file} is held by another process)…")

    def on_index_loaded(self, message: IndexLoaded) -> None:
        self.summaries = message.summaries
        self.loaded = True
        known = {s["run_id"] for s in self.summaries}
        self.selected_ids = [r for r in self.selected_ids if r in known]
        if not self.selected_ids and self.summaries:
            self.selected_ids = [self.summaries[-1]["run_id"]]  # the newest by default
        self.query_one("#runs-label", Label).update("Finished runs (space selects):")
        self.show()
        if self.export_pending:
            self.export_pending = False
            self.action_export(self.pending_format)

    # ---- drawing ---------------------------------------------------------------------

    @property
    def chosen(self) -> list[dict]:
        return [s for s in self.summaries if s["run_id"] in self.selected_ids]

    def show(self) -> None:
        table = self.query_one("#finished-runs", DataTable)
        cursor = table.cursor_row
        table.clear()
        for s in self.summaries:
            mark = "✓" if s["run_id"] in self.selected_ids else ""
            table.add_row(mark, s["run_id"], s.get("name", ""), s.get("model", ""), len(s.get("targets", [])),
                          " ".join(label(m) for m in s.get("methods", [])), key=s["run_id"])
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))
        self.draw_table()

    def draw_table(self) -> None:
        report = self.report = build_report(self.chosen)
        columns = report.columns
        table = self.query_one("#comparison", DataTable)
        table.clear(columns=True)
        body = []
        for task in report.tasks:
            best = report.best_column(task) if len(columns) > 1 else None
            body.append((task, *[Text(score_text(report.score(task, c)) + f" {BEST}", style="bold green")
                                 if c == best else Text(score_text(report.score(task, c))) for c in columns]))
        headers = [report.header(c) for c in columns]
        summary = []
        if columns:
            summary.append(("mean", *[mean_text(report.means[c]) for c in columns], "__mean__"))
            if len(columns) > 1 and any(report.gains[c] is not None for c in columns):
                summary.append(("gain over PT", *[gain_text(report.gains[c]) for c in columns], "__gain__"))
            if report.has_paired():  # over all targets, split by split against the run's own PT
                summary.append((DELTA_LABEL, *[delta_text(report.paired(c)) for c in columns], "__delta__"))
                summary.append((P_LABEL, *[p_text(report.paired(c)) for c in columns], "__p__"))
        # explicit widths: the table is rebuilt on every change and must never cut a score
        width = lambda i, text: max([len(text), 12] + [len(str(row[i])) for row in body + summary])  # noqa: E731
        table.add_column("target task", key="task", width=width(0, "target task"))
        for i, (column, header) in enumerate(zip(columns, headers), 1):
            table.add_column(header, key=f"{column.run_id}/{column.method}", width=width(i, header))
        if 0 <= self.sort_column < len(columns):
            column = columns[self.sort_column]
            body.sort(key=lambda row: -((report.score(row[0], column) or {"mean": -1})["mean"]))
        for row in body:
            table.add_row(*row, key=row[0])
        notes = self.query_one("#report-notes", Label)
        notes.update("; ".join(report.notes))
        notes.display = bool(report.notes)
        for *row, key in summary:
            table.add_row(*row, key=key)
        self.draw_chart()

    def draw_chart(self) -> None:
        """The bar chart of the row under the cursor: its task, or all targets on a summary row."""
        table = self.query_one("#comparison", DataTable)
        task = None
        if table.row_count:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            task = key if key and not key.startswith("__") else None
        chart = self.query_one("#chart", BarChart)
        chart.display = bool(self.report.columns)
        what = f"{task}" if task else "all targets (std over splits of the mean over targets)"
        chart.plot(chart_rows(self.report, task), f"{what}: test x100, mean ± std")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "comparison":
            self.draw_chart()

    # ---- actions ------------------------------------------------------------------

    def action_toggle_run(self) -> None:
        table = self.query_one("#finished-runs", DataTable)
        if not table.row_count:
            return
        run_id = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        if run_id in self.selected_ids:
            self.selected_ids.remove(run_id)
        else:
            self.selected_ids.append(run_id)
        self.show()

    def action_sort(self) -> None:
        n = len(self.report.columns)
        self.sort_column = (self.sort_column + 1) if self.sort_column + 1 < n else -1
        self.draw_table()
        what = "task name" if self.sort_column < 0 else f"column {self.sort_column + 1} (best first)"
        self.notify(f"sorted by {what}")

    def action_detail(self) -> None:
        table = self.query_one("#comparison", DataTable)
        if not table.row_count:
            return
        task = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        if task and not task.startswith("__"):
            self.app.push_screen(SplitDetail(task, self.chosen))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "comparison":
            self.action_detail()
        else:
            self.action_toggle_run()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "export":  # the x of the chosen format only
            return (parameters[0] if parameters else "csv") == self.export_format
        return True

    def action_next_format(self) -> None:
        self.export_format = FORMATS[(FORMATS.index(self.export_format) + 1) % len(FORMATS)]
        self.refresh_bindings()
        self.notify(f"x exports {FORMAT_NAMES[self.export_format]} now")

    def request_export(self, fmt: str = "csv") -> None:
        """Export now, or as soon as the index has been read (the palette's "Export results to ...")."""
        if self.loaded:
            self.action_export(fmt)
        else:
            self.export_pending, self.pending_format = True, fmt

    def action_export(self, fmt: str | None = None) -> None:
        fmt = fmt or self.export_format
        if not self.chosen:
            self.notify("no finished run selected" if self.loaded else "the run index is still being read",
                        severity="warning")
            return
        out_dir = self.app.runs_root / "exports"
        out_dir.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        written = []
        for table in ("splits", "tasks"):
            path = out_dir / f"{stamp}-{table}.{EXTENSIONS[fmt]}"
            path.write_text(export_document(self.chosen, fmt, table, metric_scale=FORMAT_SCALE[fmt]), encoding="utf-8")
            written.append(path)
        self.last_export = tuple(written)
        self.notify(f"exported {written[0].name} and {written[1].name} ({FORMAT_NAMES[fmt]}) to {out_dir}")
