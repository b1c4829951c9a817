"""One module per screen."""

from mpt_tui.screens.analysis import AnalysisScreen
from mpt_tui.screens.help import HelpScreen
from mpt_tui.screens.launch import LaunchScreen
from mpt_tui.screens.results import ResultsScreen
from mpt_tui.screens.runs import RunsScreen

__all__ = ["AnalysisScreen", "HelpScreen", "LaunchScreen", "ResultsScreen", "RunsScreen"]
