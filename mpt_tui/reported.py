"""The authors' reported numbers beside a run's table (`engine.results.reference`): the headless run's
final table and `mpt-tui show` print this block under the run's own table when its setting is one of the
paper's ("qin2023:NAME")."""

from __future__ import annotations

from rich.table import Table

from engine.results import Report, compare, reference_notes, reference_rows


def reported_table(report: Report, summaries: list[dict]):
    """A rich Table aligned with `report`'s columns (their reported mean ± std per target, their mean
    over the targets each column has, ours − reported), captioned with what differs; None when the run's
    setting has no reported numbers."""
    comparison = compare(report, summaries)
    if comparison is None or not report.columns:
        return None
    table = Table(title=f"reported: Qin et al. 2023, {comparison.table.key} (x100, mean ± std over their splits)",
                  caption="; ".join(reference_notes(comparison)))
    table.add_column("target task", no_wrap=True)
    table.add_column("metric")
    for column in report.columns:
        table.add_column(report.header(column), justify="right", no_wrap=True)
    rows = reference_rows(comparison, report)
    for label, cells in rows[:-2]:
        table.add_row(label, "", *cells)
    table.add_section()
    for label, cells in rows[-2:]:
        table.add_row(label, "", *cells, style="bold")
    return table


def print_reported(console, report: Report, summaries: list[dict]) -> None:
    table = reported_table(report, summaries)
    if table is not None:
        console.print(table)
