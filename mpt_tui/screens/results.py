"""Results: the paper's comparison table for the finished runs the user selects, from the index."""

from __future__ import annotations

import statistics
import time

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Label

from engine.export import SPLIT_COLUMNS, TABLE_COLUMNS, split_rows, table_rows, to_csv
from engine.store import RunIndex
from mpt_tui.headless import METHOD_LABELS, METHOD_ORDER


def comparison(summaries: list[dict]) -> tuple[list[tuple[str, str]], dict[str, dict[tuple[str, str], dict]]]:
    """Columns (run id, method) and, per target task, the aggregate of each column."""
    columns: list[tuple[str, str]] = []
    rows: dict[str, dict[tuple[str, str], dict]] = {}
    for s in summaries:
        methods = [m for m in METHOD_ORDER if m in s.get("tasks", {})]
        methods += sorted(m for m in s.get("tasks", {}) if m not in METHOD_ORDER)
        for method in methods:
            columns.append((s["run_id"], method))
            for task, agg in s["tasks"][method].items():
                rows.setdefault(task, {})[(s["run_id"], method)] = agg
    return columns, rows


def score_text(agg: dict | None) -> str:
    return f"{100 * agg['mean']:.1f} ± {100 * agg['std']:.1f}" if agg else "-"


class SplitDetail(ModalScreen):
    """Per-split scores and the chosen learning rate of one task."""

    BINDINGS = [Binding("escape,enter", "dismiss", "Close", id="close-detail")]

    def __init__(self, task: str, summaries: list[dict]):
        super().__init__()
        self.task = task
        self.summaries = summaries

    def compose(self) -> ComposeResult:
        with Vertical(id="detail-box"):
            yield Label(f"[b]{self.task}[/b]: the learning rate chosen on dev, per split")
            yield DataTable(id="split-table", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("run", "method", "seed", "lr", "best step", "dev", "test")
        for s in self.summaries:
            for c in s.get("splits", []):
                if c["task"] == self.task:
                    table.add_row(s["run_id"], METHOD_LABELS.get(c["method"], c["method"]), c["seed"],
                                  f"{c['lr']:g}", c.get("best_step", ""), f"{100 * c['dev']:.1f}",
                                  f"{100 * c['test']:.1f}")


class ResultsScreen(Screen):
    BINDINGS = [
        Binding("space", "toggle_run", "Select run", id="toggle-run"),
        Binding("s", "sort", "Sort", id="sort"),
        Binding("x", "export", "Export CSV", id="export"),
        Binding("enter", "detail", "Per split", id="detail", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="results-body"):
            yield Label("Finished runs (space selects):", id="runs-label")
            yield DataTable(id="finished-runs", cursor_type="row")
            yield Label("Test scores x100, mean ± std over splits:", id="table-label")
            yield DataTable(id="comparison", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.selected_ids: list[str] = []
        self.sort_column = -1
        runs = self.query_one("#finished-runs", DataTable)
        runs.add_columns(" ", "run", "name", "model", "targets", "methods")
        self.reload()

    def on_screen_resume(self) -> None:
        self.reload()

    def reload(self) -> None:
        self.summaries = [s for s in RunIndex(self.app.runs_root).all() if s.get("state") == "finished"]
        if not self.selected_ids and self.summaries:
            self.selected_ids = [self.summaries[-1]["run_id"]]  # the newest by default
        table = self.query_one("#finished-runs", DataTable)
        cursor = table.cursor_row
        table.clear()
        for s in self.summaries:
            mark = "✓" if s["run_id"] in self.selected_ids else ""
            table.add_row(mark, s["run_id"], s.get("name", ""), s.get("model", ""), len(s.get("targets", [])),
                          " ".join(METHOD_LABELS.get(m, m) for m in s.get("methods", [])), key=s["run_id"])
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))
        self.draw_table()

    @property
    def chosen(self) -> list[dict]:
        return [s for s in self.summaries if s["run_id"] in self.selected_ids]

    def draw_table(self) -> None:
        table = self.query_one("#comparison", DataTable)
        table.clear(columns=True)
        columns, rows = comparison(self.chosen)
        several = len(self.chosen) > 1
        body = []
        for task in sorted(rows):
            body.append((task, *[score_text(rows[task].get(col)) for col in columns]))
        # explicit widths: the table is rebuilt on every change and must never cut a score
        labels = [METHOD_LABELS.get(m, m) + (f" ({r[-12:]})" if several else "") for r, m in columns]
        width = lambda i, label: max([len(label), 12] + [len(str(row[i])) for row in body])  # noqa: E731
        table.add_column("target task", key="task", width=width(0, "target task"))
        for i, ((run_id, method), label) in enumerate(zip(columns, labels), 1):
            table.add_column(label, key=f"{run_id}/{method}", width=width(i, label))
        if 0 <= self.sort_column < len(columns):
            col = columns[self.sort_column]
            body.sort(key=lambda r: -(rows[r[0]].get(col) or {"mean": -1})["mean"])
        for row in body:
            table.add_row(*row, key=row[0])
        if not columns:
            return
        means = {}
        for col in columns:
            values = [rows[t][col]["mean"] for t in rows if col in rows[t]]
            means[col] = statistics.fmean(values) if values else None
        table.add_row("mean", *[f"{100 * means[c]:.1f}" if means[c] is not None else "-" for c in columns],
                      key="__mean__")
        base = next((means[c] for c in columns if c[1] == "pt" and means[c]), None)
        if base:
            table.add_row("gain over PT", *[f"{100 * (means[c] - base) / abs(base):+.1f}%" if means[c] is not None
                                            else "-" for c in columns], key="__gain__")

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
        self.reload()

    def action_sort(self) -> None:
        columns, _ = comparison(self.chosen)
        self.sort_column = (self.sort_column + 1) if self.sort_column + 1 < len(columns) else -1
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

    def action_export(self) -> None:
        if not self.chosen:
            self.notify("no finished run selected", severity="warning")
            return
        out_dir = self.app.runs_root / "exports"
        out_dir.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        splits = out_dir / f"{stamp}-splits.csv"
        tasks = out_dir / f"{stamp}-tasks.csv"
        splits.write_text(to_csv(split_rows(self.chosen), SPLIT_COLUMNS), encoding="utf-8")
        tasks.write_text(to_csv(table_rows(self.chosen), TABLE_COLUMNS), encoding="utf-8")
        self.last_export = (splits, tasks)
        self.notify(f"exported {splits.name} and {tasks.name} to {out_dir}")
