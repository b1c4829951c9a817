"""Widgets shared by the screens."""

from mpt_tui.widgets.bar_chart import BarChart
from mpt_tui.widgets.cell_list import CellList
from mpt_tui.widgets.run_detail import RunDetail

__all__ = ["BarChart", "CellList", "RunDetail"]
