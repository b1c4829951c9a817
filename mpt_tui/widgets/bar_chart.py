"""A horizontal bar chart of mean ± std, drawn with block characters (readable on a monochrome terminal).

Each row: the label, a bar to the mean (solid to mean - std, shaded from there to the mean,
light shade to mean + std: the ± std band), then the numbers. The marker (▲) of the best
row is text, so it survives a terminal without colour.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.widgets import Static

BEST = "▲"


def bar_chart(rows: list[tuple[str, float | None, float]], width: int, title: str = "") -> Text:
    """`rows`: (label, mean, std) in the unit shown (x100 scores); None means no score."""
    text = Text()
    if title:
        text.append(title + "\n", style="bold")
    scored = [(lbl, m, s) for lbl, m, s in rows if m is not None and math.isfinite(m)]
    if not scored:
        text.append("no scores to chart")
        return text
    best = max(m for _, m, _ in scored)
    top = max(m + (s if math.isfinite(s) else 0) for _, m, s in scored)
    top = max(10.0, math.ceil(top / 10) * 10)  # a round full scale
    name_w = max(len(lbl) for lbl, _, _ in rows)
    bar_w = max(10, width - name_w - 18)
    for i, (lbl, mean, std) in enumerate(rows):
        text.append(f"{lbl:<{name_w}} ")
        if mean is None or not math.isfinite(mean):
            text.append("-\n" if i < len(rows) - 1 else "-")
            continue
        std = std if math.isfinite(std) else 0.0
        cells = lambda v: max(0, min(bar_w, round(bar_w * v / top)))  # noqa: E731
        low, mid, high = cells(mean - std), cells(mean), cells(mean + std)
        is_best = mean == best
        style = "bold green" if is_best else ""
        text.append("█" * low, style=style)
        text.append("▓" * (mid - low), style=style)
        text.append("░" * (high - mid), style="dim")
        text.append(" " * (bar_w - high))
        text.append(f" {mean:5.1f} ± {std:4.1f}", style="bold" if is_best else "")
        text.append(f" {BEST}" if is_best else "", style="bold")
        if i < len(rows) - 1:
            text.append("\n")
    return text


class BarChart(Static):
    """Shows `bar_chart` at the widget's width; `rows` and `chart_title` set with `plot`."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.rows: list[tuple[str, float | None, float]] = []
        self.chart_title = ""

    def plot(self, rows: list[tuple[str, float | None, float]], title: str) -> None:
        self.rows, self.chart_title = rows, title
        self.update(bar_chart(rows, max(self.size.width, 40), title))

    def on_resize(self) -> None:
        self.update(bar_chart(self.rows, max(self.size.width, 40), self.chart_title))
