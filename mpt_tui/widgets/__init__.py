"""Widgets shared by the screens."""

from mpt_tui.widgets.run_detail import RunDetail

__all__ = ["RunDetail"]
