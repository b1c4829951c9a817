"""One module per screen."""

from mpt_tui.screens.help import HelpScreen
from mpt_tui.screens.launch import LaunchScreen
from mpt_tui.screens.results import ResultsScreen
from mpt_tui.screens.runs import RunsScreen

__all__ = ["HelpScreen", "LaunchScreen", "ResultsScreen", "RunsScreen"]
