"""Analysis: a run's task similarity analysis (RUN_DIR/analysis.json), as a heatmap, nearest sources, correlations.

analysis.json (written by `mpt-tui analyse RUN_ID` or a preset's `[analysis]` stage):
    {"version": 1, "sources": [...], "targets": [...],
     "kinds": {"prompt": {"matrix": [[cos(target_i, source_j), ...], ...], "nearest": {target: [[source, sim], ...]}},
               "text": {...}},
     "correlations": [{"similarity", "method", "aggregate", "level", "n", "rho", "p"}, ...],
     "gains": {method: {target: gain}}, "note": str}
The screen shows one similarity kind at a time (`k` cycles them): the target x source
matrix as a heatmap (colour, and the value printed in each cell so it reads without colour),
each target's nearest sources, and the rank correlations of similarity with each method's
gain over PT. A run without the file says how to compute it. Files are read in a worker.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, Static

from engine.experiment import label
from engine.store import list_runs, read_json
from mpt_tui.messages import AnalysisLoaded, ReportWorkerErrors, deliver

ANALYSIS_FILE = "analysis.json"
HOW_TO = ("No similarity analysis for this run. Compute it with `mpt-tui analyse {run_id}`, or add\n"
          "[analysis]\nsimilarity = [\"prompt\", \"text\"]\nto the preset so a comparison computes it as its last stage.")


def _colour(value: float, low: float, high: float) -> str:
    """A dark-blue to yellow ramp over [low, high]."""
    x = 0.5 if high <= low else (value - low) / (high - low)
    x = min(1.0, max(0.0, x))
    r, g, b = int(40 + 215 * x), int(40 + 180 * x), int(140 - 110 * x)
    return f"rgb({r},{g},{b})"


def heatmap(sources: list[str], targets: list[str], matrix: list[list[float]]) -> Text:
    """Targets as rows, sources as numbered columns (their names in a legend), each cell coloured and printed."""
    values = [v for row in matrix for v in row if isinstance(v, (int, float)) and math.isfinite(v)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    name_w = max([len(t) for t in targets] + [6])
    text = Text(f"{'target':<{name_w}}", style="bold")
    for j in range(len(sources)):
        text.append(f"{'s' + str(j + 1):>6}", style="bold")
    for target, row in zip(targets, matrix):
        text.append(f"\n{target:<{name_w}}")
        for value in row:
            if isinstance(value, (int, float)) and math.isfinite(value):
                text.append(" ")
                text.append(f"{value:5.2f}", style=f"black on {_colour(value, low, high)}")
            else:
                text.append(f"{'-':>6}")
    text.append(f"\ncosine similarity, low {low:.2f} (blue) to high {high:.2f} (yellow)\n", style="dim")
    text.append("  ".join(f"s{j + 1} {s}" for j, s in enumerate(sources)), style="dim")
    return text


def nearest_text(nearest: dict) -> Text:
    text = Text("nearest sources per target\n", style="bold")
    for target, pairs in nearest.items():
        shown = ", ".join(f"{s} ({sim:.2f})" for s, sim in pairs if isinstance(sim, (int, float)))
        text.append(f"{target}: ", style="bold")
        text.append(shown + "\n")
    text.rstrip()
    return text


def _number(value, digits: int = 3) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return "<0.001" if digits == 3 and 0 <= value < 0.001 else f"{value:.{digits}f}"


class AnalysisScreen(ReportWorkerErrors, Screen):
    AUTO_FOCUS = "#analysis-runs"
    BINDINGS = [
        Binding("k", "next_kind", "Similarity kind", id="similarity-kind",
                tooltip="show the next kind of task embedding: prompt (SPoT's), text (the frozen model's)"),
        Binding("r", "reload", "Reload", id="reload-analysis", tooltip="read the runs and analysis.json again"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="analysis-body"):
            yield Label("Runs (enter shows a run's analysis; at first the newest that has one):",
                        id="analysis-runs-label")
            yield DataTable(id="analysis-runs", cursor_type="row")
            yield Static("", id="analysis-title")
            with Horizontal(id="analysis-main"):  # side by side on a wide terminal (app.tcss: .-wide)
                yield Static("", id="heatmap")
                yield Static("", id="nearest")
            yield DataTable(id="correlations", cursor_type="row")
            yield Static("", id="analysis-note")
        yield Footer()

    def on_mount(self) -> None:
        self.analysis: dict | None = None
        self.run_id: str | None = None
        self.kind: str | None = None
        self.listed: list[tuple] = []
        self.query_one("#analysis-runs", DataTable).add_columns("run", "name", "state", "analysis")
        self.query_one("#correlations", DataTable).add_columns("similarity", "method", "aggregate", "level", "n",
                                                              "Spearman rho", "p")

    def on_screen_resume(self) -> None:
        self.load(self.run_id)

    # ---- data: the runs and one analysis.json, read in a worker --------------------------------

    @work(thread=True, exclusive=True, group="read-analysis", exit_on_error=False)
    def load(self, run_id: str | None) -> None:
        runs = []
        for run in reversed(list_runs(self.app.runs_root)):
            status = read_json(run.status_path)
            config = read_json(run.config_path)
            runs.append((run.id, (config or {}).get("preset", {}).get("name", "?") if isinstance(config, dict) else "?",
                         status.get("state", "?") if isinstance(status, dict) else "damaged",
                         (run.path / ANALYSIS_FILE).is_file()))
        if run_id is None or run_id not in {r[0] for r in runs}:
            run_id = next((r[0] for r in runs if r[3]), runs[0][0] if runs else None)  # the newest with an analysis
        analysis = None
        if run_id is not None:
            raw = read_json(self.app.runs_root / run_id / ANALYSIS_FILE)
            analysis = raw if isinstance(raw, dict) else None
        deliver(self, AnalysisLoaded(runs, run_id, analysis))

    def on_analysis_loaded(self, message: AnalysisLoaded) -> None:
        table = self.query_one("#analysis-runs", DataTable)
        rows = [(r[0], r[1], r[2], "yes" if r[3] else "-") for r in message.runs]
        if rows != self.listed:
            self.listed = rows
            table.clear()
            for row in rows:
                table.add_row(*row, key=row[0])
        if message.run_id is not None and message.run_id in table.rows:
            index = table.get_row_index(message.run_id)
            if table.cursor_row != index:
                table.move_cursor(row=index)
        self.run_id, self.analysis = message.run_id, message.analysis
        kinds = list((self.analysis or {}).get("kinds") or {})
        if self.kind not in kinds:
            self.kind = kinds[0] if kinds else None
        self.show()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "analysis-runs":
            self.load(event.row_key.value)

    # ---- drawing -------------------------------------------------------------------------------

    def show(self) -> None:
        title = self.query_one("#analysis-title", Static)
        heat, nearest = self.query_one("#heatmap", Static), self.query_one("#nearest", Static)
        correlations = self.query_one("#correlations", DataTable)
        note = self.query_one("#analysis-note", Static)
        data = self.analysis
        correlations.clear()
        if self.run_id is None:
            title.update("No runs yet: press 3 to launch one.")
            heat.update(""), nearest.update(""), note.update("")
            correlations.display = False
            return
        if data is None:
            title.update(Text(HOW_TO.format(run_id=self.run_id)))
            heat.update(""), nearest.update(""), note.update("")
            correlations.display = False
            return
        kinds = list(data.get("kinds") or {})
        kind = data.get("kinds", {}).get(self.kind) or {}
        others = f" (k: {', '.join(k for k in kinds if k != self.kind)})" if len(kinds) > 1 else ""
        title.update(Text(f"{self.run_id}: similarity of each target to each source, {self.kind} embeddings{others}",
                          style="bold"))
        heat.update(heatmap(data.get("sources", []), data.get("targets", []), kind.get("matrix") or []))
        nearest.update(nearest_text(kind.get("nearest") or {}))
        rows = [c for c in data.get("correlations", []) if isinstance(c, dict)]
        for c in sorted(rows, key=lambda c: c.get("similarity") != self.kind):  # the kind shown first
            correlations.add_row(c.get("similarity", "?"), label(c.get("method", "?")), c.get("aggregate", "?"),
                                 c.get("level", "?"), str(c.get("n", "-")), _number(c.get("rho"), 2),
                                 _number(c.get("p")))
        correlations.display = bool(rows)
        note.update(Text(str(data.get("note", "")), style="italic"))

    # ---- actions ---------------------------------------------------------------------------------

    def action_next_kind(self) -> None:
        kinds = list((self.analysis or {}).get("kinds") or {})
        if len(kinds) < 2:
            self.notify("this analysis has one similarity kind" if kinds else "no analysis to show",
                        severity="warning")
            return
        self.kind = kinds[(kinds.index(self.kind) + 1) % len(kinds)] if self.kind in kinds else kinds[0]
        self.show()

    def action_reload(self) -> None:
        self.load(self.run_id)
