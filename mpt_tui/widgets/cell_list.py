"""The selected run's grid cells as a filterable table: method, task, seed, lr, state, dev, test.

The rows are the run's grid (from its config, in grid order) plus any cell its metrics
name that the grid lacks. `show(view)` updates only the rows whose cell logged since the
last call (each cell carries the index's revision of its last event), so a run with
1,400 cells costs a comparison per row per refresh, not a redraw of the table. The
filter (every word must appear in the row) rebuilds the table once per edit; a rebuild
(another run, a new filter) adds the first rows at once and the rest in batches with pauses
between them for the keys, so a key press that shows another run is not held up by 1,400 rows.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Input

from engine.experiment import label, parse_cell_id  # noqa: F401  (parse_cell_id: formatted and parsed next to Cell.id)
from mpt_tui.events_index import CellEvents
from mpt_tui.watch import RunView

COLUMNS = ("method", "task", "seed", "lr", "state", "dev", "test")
FIRST_ROWS = 40  # added at once on a rebuild: a screenful
BATCH_ROWS = 100  # then this many at a time, with a pause for keys between batches
BATCH_PAUSE_S = 0.02


def _score(value) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) and value == value else "-"


def cell_row(cell_id: str, events: CellEvents | None, live: bool) -> tuple[str, ...]:
    method, task, seed, lr = parse_cell_id(cell_id)
    if events is None:
        state, dev, test = "pending", "-", "-"
    elif events.done is not None:
        state, dev, test = "done", _score(events.done.get("dev")), _score(events.done.get("test"))
    else:
        state, dev, test = ("training" if live else "stopped"), _score(events.last_dev()), "-"
    return label(method) if method != "?" else method, task, seed, lr, state, dev, test


class CellList(Vertical):
    """A filter box over the cell table; the screen reads the highlighted cell from `DataTable.RowHighlighted`."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.run_id: str | None = None
        self.shown: dict[str, tuple[int, tuple]] = {}  # cell id -> (rev drawn, row drawn)
        self.order: list[str] = []
        self.view: RunView | None = None
        self.pending: list[str] = []  # rows of a rebuild not added yet (in order)
        self.rebuilds = 0

    def compose(self) -> ComposeResult:
        yield Input(placeholder="/ filter cells: method task seed state", id="cell-filter", compact=True)
        yield DataTable(id="cell-table", cursor_type="row", zebra_stripes=True, cell_padding=1)

    def on_mount(self) -> None:
        table = self.query_one("#cell-table", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)

    @property
    def table(self) -> DataTable:
        return self.query_one("#cell-table", DataTable)

    @property
    def highlighted(self) -> str | None:
        table = self.table
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def _matches(self, row: tuple) -> bool:
        words = self.query_one("#cell-filter", Input).value.lower().split()
        text = " ".join(row).lower()
        return all(w in text for w in words)

    def show(self, view: RunView | None, rebuild: bool = False) -> None:
        """Rows for `view`'s cells: rebuilt for another run or a new filter, else only the changed ones updated."""
        table = self.table
        self.view = view
        if view is None:
            if self.run_id is not None:
                table.clear()
                self.shown, self.order, self.run_id = {}, [], None
            return
        index, live = view.index, view.is_active()
        cells = dict.fromkeys([c.id for c in view.grid] + list(index.cells))
        if rebuild or view.id != self.run_id or len(cells) != len(self.order):
            self.run_id, self.order, self.shown = view.id, list(cells), {}
            table.clear()
            self.rebuilds += 1
            self.pending = list(self.order)
            self._add_pending(FIRST_ROWS)
            return
        for cell_id, (rev, row) in list(self.shown.items()):
            events = index.cells.get(cell_id)
            new_rev = events.rev if events else -1
            if new_rev == rev and (row[4] != "training" or live):
                continue
            new_row = cell_row(cell_id, events, live)
            self.shown[cell_id] = (new_rev, new_row)
            if cell_id in table.rows:
                for column, old, value in zip(COLUMNS, row, new_row):
                    if old != value:
                        table.update_cell(cell_id, column, value)
            elif self._matches(new_row):
                table.add_row(*new_row, key=cell_id)  # now matches the filter ("training", "done"): at the end

    def _add_pending(self, n: int) -> None:
        """Add the next `n` rows of a rebuild (their current state), then schedule the rest."""
        view, table = self.view, self.table
        if view is None:
            return
        batch, self.pending = self.pending[:n], self.pending[n:]
        live = view.is_active()
        for cell_id in batch:
            events = view.index.cells.get(cell_id)
            row = cell_row(cell_id, events, live)
            self.shown[cell_id] = (events.rev if events else -1, row)
            if self._matches(row):
                table.add_row(*row, key=cell_id)
        if self.pending:
            rebuild = self.rebuilds
            self.set_timer(BATCH_PAUSE_S, lambda: self.rebuilds == rebuild and self._add_pending(BATCH_ROWS))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.show(self.view, rebuild=True)

    def row_count(self) -> int:
        return self.table.row_count
