"""Runs: every run with its state and progress, live curves, scores and log of the selected one."""

from __future__ import annotations

import shutil

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Header, Label, Static
from textual_plotext import PlotextPlot

from engine.launch import cancel, launch
from mpt_tui.headless import format_duration
from mpt_tui.watch import RunView, RunWatcher

COLUMNS = ("run", "name", "state", "stage", "progress", "ETA", "elapsed")


class ConfirmDelete(ModalScreen[bool]):
    BINDINGS = [Binding("escape", "dismiss(False)", "Keep", id="keep")]

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Label(f"Delete run {self.run_id} and all its files?")
            with Horizontal():
                yield Button("Delete", variant="error", id="yes")
                yield Button("Keep", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class RunsScreen(Screen):
    BINDINGS = [
        Binding("c", "cancel", "Cancel run", id="cancel"),
        Binding("u", "resume", "Resume run", id="resume"),
        Binding("d", "delete", "Delete run", id="delete"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="runs-body"):
            yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
            with Horizontal(id="run-detail"):
                yield PlotextPlot(id="run-plot")
                with Vertical(id="run-side"):
                    yield Static("", id="run-scores")
                    yield Static("", id="run-log")
        yield Footer()

    def on_mount(self) -> None:
        self.watcher = RunWatcher(self.app.runs_root)
        table = self.query_one("#runs-table", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self._drawn: tuple | None = None
        self.refresh_runs()
        self.set_interval(self.app.refresh_interval, self.refresh_runs)

    # ---- data --------------------------------------------------------------------

    @property
    def selected(self) -> RunView | None:
        table = self.query_one("#runs-table", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.watcher.views.get(key)

    def refresh_runs(self) -> None:
        """Redraw from what changed since the last tick: the timer bounds the redraw rate."""
        views = self.watcher.refresh()
        table = self.query_one("#runs-table", DataTable)
        keys = {row.value for row in table.rows}
        for view in views:
            cells = self._row(view)
            if view.id in keys:
                for column, value in zip(COLUMNS, cells):
                    table.update_cell(view.id, column, value)
            else:
                table.add_row(*cells, key=view.id)
        for gone in keys - {v.id for v in views}:
            table.remove_row(gone)
        self._draw_detail()

    @staticmethod
    def _row(view: RunView) -> tuple:
        st = view.status
        progress = st.get("progress")
        eta = st.get("eta_s") if view.state == "running" else None
        return (view.id, view.name, view.state, st.get("stage", ""),
                f"{100 * progress:5.1f}%" if isinstance(progress, (int, float)) else "-",
                format_duration(eta) if eta is not None else "-",
                format_duration(view.elapsed_s()) if view.elapsed_s() is not None else "-")

    def _draw_detail(self) -> None:
        view = self.selected
        plot = self.query_one("#run-plot", PlotextPlot)
        if view is None:
            self.query_one("#run-scores", Static).update("No runs yet: press 3 to launch one.")
            return
        signature = (view.id, len(view.events), view.state)
        if signature == self._drawn:
            return
        self._drawn = signature
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        upstream = view.upstream_curves()
        cell = view.last_cell()
        if cell:
            (lx, ly), (dx, dy) = view.cell_curves(cell)
            plt.title(f"{cell}: train loss, dev score")
            if lx:
                plt.plot(lx, ly, label="train loss")
            if dx:
                plt.plot(dx, dy, label="dev score", yside="right")
        elif upstream:
            plt.title("upstream loss")
            for method, (xs, ys) in upstream.items():
                plt.plot(xs, ys, label=method)
        else:
            plt.title("waiting for metrics")
        plot.refresh()
        done = [e for e in view.events if e.get("event") == "cell_done"]
        lines = [f"[b]{view.id}[/b]  {view.state}  cells done: {len(done)}"
                 f"/{view.status.get('total_cells', '?')}"]
        if view.status.get("error"):
            lines.append(f"[red]{view.status['error']}[/red]")
        for e in done[-3:]:
            lines.append(f"{e['cell']}: dev {e['dev']:.3f} test {e['test']:.3f}")
        self.query_one("#run-scores", Static).update("\n".join(lines))
        tail = view.log_tail(8 if view.state != "crashed" else 14)
        self.query_one("#run-log", Static).update(tail)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._drawn = None
        self._draw_detail()

    # ---- actions ------------------------------------------------------------------

    def action_cancel(self) -> None:
        view = self.selected
        if view and cancel(view.run):
            self.notify(f"cancelling {view.id}: it checkpoints, then stops")
        elif view:
            self.notify(f"{view.id} is {view.state}: nothing to cancel", severity="warning")

    def action_resume(self) -> None:
        view = self.selected
        if view is None:
            return
        if view.state in ("running", "queued", "finished", "damaged"):
            self.notify(f"{view.id} is {view.state}: nothing to resume", severity="warning")
            return
        launch(view.run)
        self.notify(f"resuming {view.id} in the background")

    def action_delete(self) -> None:
        view = self.selected
        if view is None:
            return
        if view.state in ("running", "queued"):
            self.notify(f"{view.id} is {view.state}: cancel it first", severity="warning")
            return

        def done(confirmed: bool | None) -> None:
            if confirmed:
                from engine.store import RunIndex

                shutil.rmtree(view.run.path, ignore_errors=True)
                RunIndex(self.app.runs_root).remove(view.id)
                self.notify(f"deleted {view.id}")
                self.refresh_runs()

        self.app.push_screen(ConfirmDelete(view.id), done)
