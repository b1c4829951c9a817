"""The selected run's detail: its curves, finished cells and log tail.

`run` is reactive: setting another run redraws at once (`watch_run`). The data
itself is read by the Runs screen's worker (`RunWatcher.refresh`), so the screen
calls `sync()` on each refresh tick, which redraws only when something changed:
redraws are bound by the refresh timer (a few a second), not by how fast a run
writes. The curves come from engine.runs' metrics readers, via the `RunView`.
"""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Static
from textual_plotext import PlotextPlot

from engine.methods import label
from mpt_tui.watch import RunView

EMPTY = "No runs yet: press 3 to launch one."


class RunDetail(Horizontal):
    run: reactive[RunView | None] = reactive(None, init=False)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._drawn: tuple | None = None
        self.redraws = 0

    def compose(self) -> ComposeResult:
        yield PlotextPlot(id="run-plot")
        with Vertical(id="run-side"):
            yield Static(EMPTY, id="run-scores")
            yield Static("", id="run-log")

    def watch_run(self, old: RunView | None, new: RunView | None) -> None:
        self._drawn = None
        self.sync()

    @staticmethod
    def signature(view: RunView) -> tuple:
        return view.id, len(view.events), view.state, view.status.get("error"), view.log

    def sync(self) -> None:
        """Redraw if the run changed since the last drawing."""
        view = self.run
        if view is None:
            if self._drawn != ():
                self._drawn = ()
                self.query_one("#run-plot", PlotextPlot).plt.clear_data()
                self.query_one("#run-scores", Static).update(EMPTY)
                self.query_one("#run-log", Static).update("")
            return
        signature = self.signature(view)
        if signature == self._drawn:
            return
        self._drawn = signature
        self.redraws += 1
        self._draw_plot(view)
        done = view.finished_cells()
        lines = [f"[b]{view.id}[/b]  {view.state}  cells done: {len(done)}/{view.status.get('total_cells', '?')}"]
        if view.status.get("error"):
            lines.append(f"[red]{escape(str(view.status['error']))}[/red]")
        for cell in done[-3:]:
            lines.append(f"{cell['cell']}: dev {cell['dev']:.3f} test {cell['test']:.3f}")
        self.query_one("#run-scores", Static).update("\n".join(lines))
        lines = view.log.splitlines()
        self.query_one("#run-log", Static).update(Text("\n".join(lines[-(14 if view.state == "crashed" else 8):])))

    def _draw_plot(self, view: RunView) -> None:
        plot = self.query_one("#run-plot", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        cell = view.last_cell()
        upstream = view.upstream_curves()
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
                plt.plot(xs, ys, label=label(method))
        else:
            plt.title("waiting for metrics")
        plot.refresh()
