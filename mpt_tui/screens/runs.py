"""Runs: every run with its state and progress; the selected run's cells, curves, scores, workers and log.

The table on top lists the runs; below, the selected run's grid cells (filterable) and
the plot of the chosen cell, the methods compared on its task and split, or the upstream
losses (`v`), with its scores, its Ray workers (status.json "cluster") and its log tail.
"""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label
from textual.worker import Worker, WorkerState

from engine.runner import cancel, delete_run, launch, resume_refusal
from engine.results import format_duration
from engine.store import Run, RunsDirError
from mpt_tui.messages import ReportWorkerErrors, RunDeleted, RunsRefreshed, deliver
from mpt_tui.watch import RunView, RunWatcher
from mpt_tui.widgets import CellList, RunDetail
from mpt_tui.widgets.run_detail import VIEWS

COLUMNS = ("run", "name", "state", "stage", "progress", "ETA", "elapsed")


class ConfirmDelete(ModalScreen[bool]):
    BINDINGS = [Binding("escape", "dismiss(False)", "Keep the run", id="keep")]

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


class RunsScreen(ReportWorkerErrors, Screen):
    BINDINGS = [
        Binding("c", "cancel", "Cancel run", id="cancel", tooltip="checkpoint the selected run, then stop it"),
        Binding("u", "resume", "Resume run", id="resume", tooltip="continue the selected run from its checkpoint"),
        Binding("d", "delete", "Delete run", id="delete", tooltip="delete the selected run (asks first)"),
        Binding("v", "next_view", "Plot view", id="plot-view",
                tooltip="the plot: the chosen cell, the methods compared on its task and split, the upstream losses"),
        Binding("slash", "filter_cells", "Filter cells", id="filter-cells",
                tooltip="type words that every listed cell must contain (method, task, seed, state)"),
        Binding("l", "latest_cell", "Follow latest", id="latest-cell", show=False,
                tooltip="plot the cell training now again, instead of the chosen one"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="runs-body"):
            yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
            with Horizontal(id="run-area"):
                yield CellList(id="cells")
                yield RunDetail(id="run-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.watcher = RunWatcher(self.app.runs_root)
        self.views: dict[str, RunView] = {}
        self._refreshing: Worker | None = None
        self._unshown = False  # a refresh's views not shown yet: the next refresh waits (no index read while drawn)
        self._shown: dict[str, tuple] = {}  # the cells shown per run: only changed cells are updated
        table = self.query_one("#runs-table", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.refresh_runs()
        self.set_interval(self.app.refresh_interval, self.refresh_runs)

    # ---- data: read in a worker, shown on the UI thread ----------------------------------

    @property
    def selected(self) -> RunView | None:
        table = self.query_one("#runs-table", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.views.get(key)

    def refresh_runs(self) -> None:
        """The timer's tick: read the run directories in a worker, unless the last read is still going."""
        worker = self._refreshing
        if worker is not None and (not worker.is_finished or (self._unshown and worker.state is WorkerState.SUCCESS)):
            return
        self._unshown = True
        selected = self.selected
        self._refreshing = self.read_runs(selected.id if selected else None)

    @work(thread=True, exclusive=True, group="read-runs", exit_on_error=False)
    def read_runs(self, detail: str | None) -> None:
        deliver(self, RunsRefreshed(self.watcher.refresh(detail)))

    def on_runs_refreshed(self, message: RunsRefreshed) -> None:
        self._unshown = False
        self.show_runs(message.views)

    def show_runs(self, views: list[RunView]) -> None:
        """Update the table in place and the detail (redrawn only when its run changed)."""
        self.views = {view.id: view for view in views}
        table = self.query_one("#runs-table", DataTable)
        keys = {row.value for row in table.rows}
        for view in views:
            cells = self._row(view)
            if view.id in keys:
                shown = self._shown.get(view.id, ())
                for i, (column, value) in enumerate(zip(COLUMNS, cells)):
                    if i >= len(shown) or shown[i] != value:
                        table.update_cell(view.id, column, value)
            else:
                table.add_row(*cells, key=view.id)
            self._shown[view.id] = cells
        for gone in keys - self.views.keys():
            table.remove_row(gone)
            self._shown.pop(gone, None)
        self.show_detail()

    def show_detail(self) -> None:
        view = self.selected
        cells = self.query_one(CellList)
        detail = self.query_one(RunDetail)
        cells.show(view)
        if detail.run is not view:
            detail.cell = None
        detail.run = view
        detail.sync()

    @staticmethod
    def _row(view: RunView) -> tuple:
        st = view.status
        progress = st.get("progress")
        eta = st.get("eta_s") if view.state == "running" else None
        elapsed = view.elapsed_s()
        return (view.id, view.name, view.state, st.get("stage", ""),
                f"{100 * progress:5.1f}%" if isinstance(progress, (int, float)) else "-",
                format_duration(eta) if eta is not None else "-",
                format_duration(elapsed) if elapsed is not None else "-")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "cell-table":
            if event.data_table.has_focus:  # the user chose it (not a row added under the cursor)
                self.query_one(RunDetail).cell = self.query_one(CellList).highlighted
            return
        if event.data_table.id != "runs-table":
            return
        view = self.selected
        self.show_detail()
        if view is not None and not view.index.events and not view.log:
            self.refresh_runs()  # its metrics and log are read with the next refresh: ask for them now

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "cell-table":
            self.query_one(RunDetail).cell = self.query_one(CellList).highlighted

    # ---- the plot -----------------------------------------------------------------

    def action_next_view(self) -> None:
        detail = self.query_one(RunDetail)
        detail.view = VIEWS[(VIEWS.index(detail.view) + 1) % len(VIEWS)]  # the plot's title says which

    def action_filter_cells(self) -> None:
        self.query_one("#cell-filter", Input).focus()

    def action_latest_cell(self) -> None:
        self.query_one(RunDetail).cell = None

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
        refusal = resume_refusal(view.run)  # the CLI's rule too: active, finished, damaged or locked
        if refusal:
            self.notify(refusal, severity="warning")
            return
        launch(view.run)
        self.notify(f"resuming {view.id} in the background")

    def action_delete(self) -> None:
        view = self.selected
        if view is None:
            return
        if view.is_active():
            self.notify(f"{view.id} is {view.state}: cancel it first", severity="warning")
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.delete(view.run)

        self.app.push_screen(ConfirmDelete(view.id), confirmed)

    @work(thread=True, group="delete-run", exit_on_error=False)
    def delete(self, run: Run) -> None:
        """engine.runner.launch.delete_run: it refuses an active run, and waits for the index lock."""
        try:
            delete_run(run)
        except RunsDirError as exc:
            self.post_message(RunDeleted(run.id, error=str(exc)))
            return
        self.post_message(RunDeleted(run.id))

    def on_run_deleted(self, message: RunDeleted) -> None:
        if message.error:
            self.notify(message.error, severity="warning")
        else:
            self.notify(f"deleted {message.run_id}")
        self.refresh_runs()
