"""The selected run's detail: a plot, its scores, its Ray workers (when it has any) and its log tail.

`run` is reactive: setting another run redraws at once (`watch_run`). The data itself
is read by the Runs screen's worker (`RunWatcher.refresh`, through the run's
`EventIndex`), so the screen calls `sync()` on each refresh tick, which redraws only
when something changed: redraws are bound by the refresh timer (a few a second), not by
how fast a run writes.

The plot has three views (`v` cycles them):
    cell      the chosen cell's train loss and dev score (no cell chosen: the one training now)
    compare   for the chosen cell's target task and split, the dev curves of PT and each
              initialisation (per method the learning rate it selects on dev: its finished
              cell with the best final dev score, else the chosen cell's learning rate)
    upstream  each method's meta-training loss
"""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import Static
from textual_plotext import PlotextPlot

from engine.experiment import label, parse_cell_id
from mpt_tui.watch import RunView

EMPTY = "No runs yet: press 3 to launch one."
VIEWS = ("cell", "compare", "upstream")


def compared_cells(view: RunView, cell_id: str) -> list[tuple[str, str]]:
    """(method, cell id) per method for the task and split of `cell_id`: the cell its dev selection picks."""
    method, task, seed, lr = parse_cell_id(cell_id)
    candidates: dict[str, list[str]] = {}
    for cid in dict.fromkeys([c.id for c in view.grid] + list(view.index.cells)):
        m, t, s, _ = parse_cell_id(cid)
        if (t, s) == (task, seed):
            candidates.setdefault(m, []).append(cid)
    chosen = []
    for m, cids in candidates.items():
        done = [(view.index.cells[c].done.get("dev"), c) for c in cids
                if c in view.index.cells and view.index.cells[c].done is not None]
        done = [(d, c) for d, c in done if isinstance(d, (int, float)) and d == d]
        if done:
            best = max(d for d, _ in done)
            chosen.append((m, next(c for d, c in done if d == best)))  # ties: the first lr, as the protocol
        else:
            same_lr = [c for c in cids if parse_cell_id(c)[3] == lr]
            chosen.append((m, (same_lr or cids)[0]))
    return chosen


def cluster_lines(cluster: dict) -> list[str]:
    """A Ray run's cluster (status.json "cluster"): the address, GPUs in use, one line per worker."""
    lines = [f"[b]{escape(str(cluster.get('backend', '?')))}[/b] {escape(str(cluster.get('address', '')))}  "
             f"GPUs {cluster.get('gpus_in_use', '?')}/{cluster.get('gpus_total', '?')}"]
    for w in cluster.get("workers") or []:
        if isinstance(w, dict):
            lines.append(escape(f"{w.get('id', '?')} {w.get('node', '?')} {w.get('device', '?')} "
                                f"pid {w.get('pid', '?')}: {w.get('unit', '?')}"))
    return lines


class RunDetail(Vertical):
    run: reactive[RunView | None] = reactive(None, init=False)
    cell: reactive[str | None] = reactive(None, init=False)  # the chosen cell; None: the one training now
    view: reactive[str] = reactive("cell", init=False)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._drawn: tuple | None = None
        self.redraws = 0
        self.plotted: dict[str, tuple[list, list]] = {}  # what the plot shows now: label -> (x, y)
        self.plot_title = ""

    def compose(self) -> ComposeResult:
        yield Static("", id="plot-title")
        yield PlotextPlot(id="run-plot")
        with Vertical(id="run-side"):
            yield Static(EMPTY, id="run-scores")
            yield Static("", id="run-log")

    def watch_run(self, old: RunView | None, new: RunView | None) -> None:
        self.sync()

    def watch_cell(self) -> None:
        self.sync()

    def watch_view(self) -> None:
        self.sync()

    def signature(self, view: RunView) -> tuple:
        return (view.id, view.index.events, view.state, view.status.get("error"), view.log, self.cell, self.view,
                repr(view.status.get("cluster")))

    def sync(self) -> None:
        """Redraw if the run (or the chosen cell, or the view) changed since the last drawing."""
        view = self.run
        if view is None:
            if self._drawn != ():
                self._drawn = ()
                self.plotted, self.plot_title = {}, ""
                self.query_one("#run-plot", PlotextPlot).plt.clear_data()
                self.query_one("#plot-title", Static).update("")
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
        total = len(view.grid) or view.status.get("total_cells", "?")
        lines = [f"[b]{view.id}[/b]  {view.state}  cells done {len(done)}/{total}"]
        if view.index.behind:  # a big metrics file is indexed over several refreshes
            lines.append(f"reading its metrics: {view.index.events:,} events so far")
        if view.status.get("error"):
            lines.append(f"[red]{escape(str(view.status['error']))}[/red]")
        cluster = view.status.get("cluster")
        if isinstance(cluster, dict):
            lines += cluster_lines(cluster)
        self.query_one("#run-scores", Static).update("\n".join(lines))
        log = view.log.splitlines()
        self.query_one("#run-log", Static).update(Text("\n".join(log[-(14 if view.state == "crashed" else 8):])))

    def shown_cell(self, view: RunView) -> str | None:
        return self.cell if self.cell is not None else view.last_cell()

    def _draw_plot(self, view: RunView) -> None:
        plot = self.query_one("#run-plot", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        cell = self.shown_cell(view)
        upstream = view.upstream_curves()
        mode = self.view
        if mode != "upstream" and not cell:
            mode = "upstream"  # nothing downstream yet: the meta-training is what there is to see
        curves: dict[str, tuple[list, list]] = {}
        if mode == "cell":
            (lx, ly), (dx, dy) = view.cell_curves(cell)
            title = f"{cell}: loss, dev (right)"
            curves = {"train loss": (lx, ly), "dev score": (dx, dy)}
        elif mode == "compare":
            _, task, seed, _ = parse_cell_id(cell)
            title = f"{task} split {seed}: dev per method"
            for method, cid in compared_cells(view, cell):
                curves[f"{label(method)} lr {parse_cell_id(cid)[3]}"] = view.cell_curves(cid)[1]
        else:
            title = "upstream: meta-training loss" if upstream else "waiting for metrics"
            curves = {label(method): curve for method, curve in upstream.items()}
        self.query_one("#plot-title", Static).update(Text(title))
        for name, (xs, ys) in curves.items():
            if xs:
                plt.plot(xs, ys, label=name, **({"yside": "right"} if name == "dev score" else {}))
        self.plotted = {name: xy for name, xy in curves.items() if xy[0]}
        self.plot_title = title
        plot.refresh()
