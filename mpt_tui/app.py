"""The Textual app: the researcher's cockpit over run directories.

The app never imports torch or transformers: runs execute in detached worker
processes (`engine.runner.launch`), and everything shown here is read from their run
directories by Textual workers (threads) on a timer, so a run started by
`mpt-tui --preset` in another shell shows up the same way, and a slow disk or
a locked run index never freezes the keys (see `mpt_tui.messages`).
"""

from __future__ import annotations

import gc
from pathlib import Path

from textual.app import App
from textual.binding import Binding
from textual.command import Hit, Hits, Provider

from mpt_tui.messages import ReportWorkerErrors
from mpt_tui.screens import AnalysisScreen, HelpScreen, LaunchScreen, ResultsScreen, RunsScreen
from mpt_tui.screens.results import SplitDetail
from mpt_tui.screens.runs import ConfirmDelete


class ActionCommands(Provider):
    """Every app action in the command palette."""

    COMMANDS = [
        ("Show runs", "switch_mode('runs')", "live runs: progress, curves, log"),
        ("Show results", "switch_mode('results')", "the comparison table of finished runs"),
        ("Launch a run", "switch_mode('launch')", "start a preset in the background"),
        ("Show the similarity analysis", "switch_mode('analysis')", "task similarity: heatmap, nearest sources, correlations"),
        ("Plot view: next", "plot_view", "Runs: the chosen cell, the methods compared, the upstream losses"),
        ("Export results to CSV", "export_results('csv')", "per-split rows and the aggregated table"),
        ("Export results to JSON", "export_results('json')", "per-split rows and the aggregated table"),
        ("Export results to Markdown", "export_results('markdown')", "the paper's table: tasks x methods, x100"),
        ("Export results to LaTeX", "export_results('latex')", "the paper's table (booktabs): tasks x methods, x100"),
        ("Cancel the selected run", "cancel_run", "checkpoint and stop"),
        ("Resume the selected run", "resume_run", "continue from its last checkpoint"),
        ("Help", "help", "the keys"),
    ]

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, action, help_text in self.COMMANDS:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), lambda a=action: self.app.run_action(a), help=help_text)


class MptApp(ReportWorkerErrors, App):
    TITLE = "mpt-tui"
    SUB_TITLE = "meta prompt tuning"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {ActionCommands}
    BINDINGS = [
        Binding("1", "switch_mode('runs')", "Runs", id="runs", tooltip="live runs: progress, curves, log"),
        Binding("2", "switch_mode('results')", "Results", id="results",
                tooltip="the comparison table of finished runs"),
        Binding("3", "switch_mode('launch')", "Launch", id="launch", tooltip="start a preset in the background"),
        Binding("4", "switch_mode('analysis')", "Analysis", id="analysis",
                tooltip="task similarity: heatmap, nearest sources, correlation with the gains"),
        Binding("question_mark", "help", "Help", id="help", tooltip="this list of keys"),
        Binding("q", "quit", "Quit", id="quit", tooltip="runs go on in the background"),
    ]
    MODES = {"runs": RunsScreen, "results": ResultsScreen, "launch": LaunchScreen, "analysis": AnalysisScreen}
    DIALOGS = {"delete dialog": ConfirmDelete, "per-split dialog": SplitDetail, "help": HelpScreen}  # for the help
    DEFAULT_MODE = "runs"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]  # app.tcss lays some screens out wider at 110+

    def __init__(self, runs_root: Path, data_dir: str | None = None, refresh_hz: float = 4.0):
        super().__init__()
        self.runs_root = Path(runs_root)
        self.data_dir = data_dir
        self.refresh_interval = 1.0 / refresh_hz

    def on_mount(self) -> None:
        # The objects alive once the first screen is up (Textual's and Rich's, the modules) live as long as the
        # app: keep them out of the cyclic GC's full passes, which otherwise took 300-500 ms on a busy 2-core
        # machine with a paper-scale run shown (bench/app_responsiveness.py). Refcounting still frees them.
        self.call_after_refresh(gc.freeze)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_export_results(self, fmt: str = "csv") -> None:
        self.switch_mode("results")
        self.call_after_refresh(lambda: isinstance(self.screen, ResultsScreen) and self.screen.request_export(fmt))

    def action_cancel_run(self) -> None:
        if isinstance(self.screen, RunsScreen):
            self.screen.action_cancel()

    def action_plot_view(self) -> None:
        self.switch_mode("runs")
        self.call_after_refresh(lambda: isinstance(self.screen, RunsScreen) and self.screen.action_next_view())

    def action_resume_run(self) -> None:
        if isinstance(self.screen, RunsScreen):
            self.screen.action_resume()


def run_app(runs_root: Path, data_dir: str | None = None) -> int:
    # Textual replaces stderr with an object whose fileno() is -1; nothing here uses
    # multiprocessing, and workers are plain detached subprocesses writing to their logs.
    MptApp(runs_root, data_dir).run()
    return 0
