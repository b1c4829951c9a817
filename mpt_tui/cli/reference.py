"""`mpt-tui reference NAME [--json]`: the authors' reported table for a paper setting (Qin et al. 2023, their
released result files: target tasks x methods, mean ± std over their splits, the mean over targets, full
fine-tuning as an extra column, and where every number and task list comes from)."""

from __future__ import annotations

import sys

from mpt_tui.cli.common import CliError, _dumps


def add_parser(sub) -> None:
    ref = sub.add_parser("reference", help="the authors' reported numbers for a paper setting (Qin et al. 2023)")
    ref.add_argument("name", metavar="NAME", help="a paper setting, e.g. class_to_class (or qin2023:class_to_class)")
    ref.add_argument("--json", action="store_true", help="the table as JSON")
    ref.set_defaults(handler=cmd_reference)


def cmd_reference(args) -> int:
    from engine.results import ReferenceError, reference_table

    try:
        table = reference_table(args.name)
    except ReferenceError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(_dumps(table.to_dict()))
        return 0
    from rich.console import Console

    console = Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 160)
    console.print(reference_rich_table(table))
    for line in reference_footer(table):
        console.print(line, markup=False)
    return 0


def reference_rich_table(table):
    from rich.table import Table

    from engine.results import method_label, reported_mean_text, reported_text

    out = Table(title=f"{table.key}: reported by Qin et al. 2023 (x100, mean ± std over their splits)")
    out.add_column("target task", no_wrap=True)
    for method in table.methods:
        out.add_column(method_label(method), justify="right", no_wrap=True)
    for task in table.tasks:
        out.add_row(task, *[reported_text(table.score(task, m)) for m in table.methods])
    out.add_section()
    out.add_row("mean", *[reported_mean_text(table.means[m]) + ("" if table.counts[m] == len(table.tasks)
                                                                else f" ({table.counts[m]})")
                          for m in table.methods], style="bold")
    if table.common_tasks != table.tasks:
        out.add_row(f"common mean ({len(table.common_tasks)})",
                    *[reported_mean_text(table.common_means[m]) for m in table.methods])
    return out


def reference_footer(table) -> list[str]:
    lines = [f"their model: {table.model}; their data: {table.data}",
             "full FT: their full fine-tuning of the model (every weight), a labelled extra beside the prompt methods",
             f"metric: {table.metric}",
             f"files ({table.repository}@{table.commit[:10]}):"]
    from engine.results import method_label

    for method in table.methods:
        f = table.files[method]
        shared = f" (shared with {f['shared_with']})" if f.get("shared_with") else ""
        lines.append(f"  {method_label(method)}: {f['file']}{shared}")
    lines.append(f"task lists ({table.n_sources} sources, {len(table.tasks)} targets): {table.sources}")
    for row in table.left_out:
        lines.append(f"left out: {row['file']} group {row['task']} ({len(row['rows'])} rows): {row['why']}")
    lines += [f"note: {n}" for n in table.notes]
    return lines
