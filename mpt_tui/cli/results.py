"""Stored results out of the runs root: `mpt-tui export` (csv, json, the paper's markdown and latex tables)
and `mpt-tui plot` (paper figures, mpt_tui/plots.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mpt_tui.cli.common import CliError, _readable_runs_root, common


def add_parser(sub) -> None:
    export = sub.add_parser("export", help="export stored results")
    export.add_argument("--format", choices=["csv", "json", "markdown", "latex"], default="csv",
                        help="markdown and latex: the paper's table (target tasks x methods, mean ± std, mean and "
                             "gain rows, paired difference to PT, best in bold)")
    export.add_argument("--out", help="output file (default: stdout)")
    export.add_argument("--table", choices=["splits", "tasks", "similarity"], default=None,
                        help="splits: one row per (run, method, task, seed); tasks: the aggregated table "
                             "(default: splits for csv and json, tasks for markdown and latex); similarity "
                             "(csv, json): the runs' task similarity matrices (`mpt-tui analyse`)")
    export.add_argument("--run", action="append", help="only this run (id or unique prefix; repeatable)")
    export.add_argument("--metric-scale", type=float, default=None,
                        help="multiply scores (e.g. 100); default 1 for csv and json, 100 for markdown and latex")
    common(export, "runs-dir")
    export.set_defaults(handler=cmd_export)

    plot = sub.add_parser("plot", help="a paper figure of runs (needs pip install 'mpt-tui[plots]')")
    plot.add_argument("ids", nargs="+", metavar="ID", help="run ids or unique prefixes")
    plot.add_argument("--out", required=True, help="figure file: .pdf, .png or .svg")
    plot.add_argument("--kind", choices=["runs", "similarity", "gain-vs-similarity"], default="runs",
                      help="runs: losses, dev and test scores (default); similarity: the task similarity matrices "
                           "of a run's analysis as heatmaps; gain-vs-similarity: each method's gain over PT per "
                           "target against the target's similarity to its sources (needs `mpt-tui analyse` first)")
    common(plot, "runs-dir")
    plot.set_defaults(handler=cmd_plot)


def cmd_export(args) -> int:
    from engine.results import export_document, load_analyses
    from engine.store import RunsDirError, find_run
    from engine.store import RunIndex

    root = _readable_runs_root(args)
    summaries = RunIndex(root).all()
    if args.run:
        try:
            wanted = {find_run(root, ref).id for ref in args.run}
        except RunsDirError as exc:
            raise CliError(f"--run: {exc}") from None
        summaries = [s for s in summaries if s["run_id"] in wanted]
    paper = args.format in ("markdown", "latex")
    table = args.table or ("tasks" if paper else "splits")
    scale = args.metric_scale if args.metric_scale is not None else (100.0 if paper else 1.0)
    try:
        analyses = load_analyses(root, summaries) if table == "similarity" else None
        text = export_document(summaries, args.format, table=table, metric_scale=scale, analyses=analyses)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.out:
        _write_output(Path(args.out), text)
        rows = f"{text.count(chr(10)) - 1} rows, " if args.format == "csv" else ""
        print(f"wrote {rows}{args.format} ({table}) to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _write_output(out: Path, text: str) -> None:
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True) if tmp.parent.is_dir() else None
        raise CliError(f"--out {out}: cannot write ({exc.strerror})") from None


def cmd_plot(args) -> int:
    from engine.store import RunsDirError, find_run
    from mpt_tui.plots import PlotError, write_figure

    root = _readable_runs_root(args)
    try:
        runs = [find_run(root, ref) for ref in args.ids]
        written = write_figure(runs, Path(args.out), kind=args.kind)
    except (RunsDirError, PlotError) as exc:
        raise CliError(str(exc)) from None
    for note in written.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {written.path} ({', '.join(written.panels)})")
    return 0
