"""The Textual app: the researcher's cockpit over run directories.

The app never imports torch or transformers: runs execute in detached worker
processes (`engine.launch`), and everything shown here is read from their run
directories on a timer, so a run started by `mpt-tui --preset` in another
shell shows up the same way.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.binding import Binding
from textual.command import Hit, Hits, Provider

from mpt_tui.screens import HelpScreen, LaunchScreen, ResultsScreen, RunsScreen


class ActionCommands(Provider):
    """Every app action in the command palette."""

    COMMANDS = [
        ("Show runs", "show_runs", "live runs: progress, curves, log"),
        ("Show results", "show_results", "the comparison table of finished runs"),
        ("Launch a run", "show_launch", "start a preset in the background"),
        ("Export results to CSV", "export_csv", "per-split rows and the aggregated table"),
        ("Cancel the selected run", "cancel_run", "checkpoint and stop"),
        ("Resume the selected run", "resume_run", "continue from its last checkpoint"),
        ("Help", "show_help", "the keys"),
    ]

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, action, help_text in self.COMMANDS:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), lambda a=action: self.app.run_action(a), help=help_text)


class MptApp(App):
    TITLE = "mpt-tui"
    SUB_TITLE = "meta prompt tuning"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {ActionCommands}
    BINDINGS = [
        Binding("1", "show_runs", "Runs", id="runs"),
        Binding("2", "show_results", "Results", id="results"),
        Binding("3", "show_launch", "Launch", id="launch"),
        Binding("question_mark", "show_help", "Help", id="help"),
        Binding("q", "quit", "Quit", id="quit"),
    ]
    MODES = {"runs": RunsScreen, "results": ResultsScreen, "launch": LaunchScreen}
    DEFAULT_MODE = "runs"

    def __init__(self, runs_root: Path, data_dir: str | None = None, refresh_hz: float = 4.0):
        super().__init__()
        self.runs_root = Path(runs_root)
        self.data_dir = data_dir
        self.refresh_interval = 1.0 / refresh_hz

    def action_show_runs(self) -> None:
        self.switch_mode("runs")

    def action_show_results(self) -> None:
        self.switch_mode("results")

    def action_show_launch(self) -> None:
        self.switch_mode("launch")

    def action_show_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_export_csv(self) -> None:
        self.switch_mode("results")
        self.call_after_refresh(lambda: self.screen.action_export())

    def action_cancel_run(self) -> None:
        if isinstance(self.screen, RunsScreen):
            self.screen.action_cancel()

    def action_resume_run(self) -> None:
        if isinstance(self.screen, RunsScreen):
            self.screen.action_resume()


def run_app(runs_root: Path, data_dir: str | None = None) -> int:
    # Textual replaces stderr with an object whose fileno() is -1; nothing here uses
    # multiprocessing, and workers are plain detached subprocesses writing to their logs.
    MptApp(runs_root, data_dir).run()
    return 0
