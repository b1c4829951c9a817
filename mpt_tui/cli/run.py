"""Running a preset: `mpt-tui --preset NAME_OR_PATH [--set key=value ...] [--data-dir DIR] [--dry-run [--json]
[--no-probe]] [--detach]`, in the foreground (progress, then the results table) or in the background. The
top-level options are declared here; --data-dir and --runs-dir also serve the app and every command.
`resume` (cli/runs.py) runs a run again through start_detached and run_foreground."""

from __future__ import annotations

import argparse
import sys

from mpt_tui.cli.common import EXIT_RUN_FAILED, CliError, _command_for, _dumps, _runs_root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The top-level options (no subcommand): run a preset; --data-dir and --runs-dir also open the app."""
    parser.add_argument("--preset", help="run this preset (built-in name or TOML file) headless")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset key (repeatable)")
    parser.add_argument("--data-dir", help="task data directory (default: the preset's, or $MPT_TUI_DATA_DIR)")
    parser.add_argument("--runs-dir", help="runs root (default: $MPT_TUI_RUNS_DIR or the user data directory)")
    parser.add_argument("--dry-run", action="store_true",
                        help="with --preset: check everything, print the plan and its estimated time, run nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run: one JSON document")
    parser.add_argument("--no-probe", action="store_true",
                        help="with --dry-run: estimate from stored timings only (no model load)")
    parser.add_argument("--detach", action="store_true",
                        help="with --preset (or resume): start the run in the background, print its id and log, "
                             "return at once")


def run_preset(args) -> int:
    from engine.experiment import PresetError
    from engine.runner import check_preset, prepare_run
    from engine.store import RunsDirError

    try:
        prepared = check_preset(args.preset, args.set or [], args.data_dir, runs_root=_runs_root(args))
        if args.dry_run:
            return dry_run(args, prepared)
        run = prepare_run(_runs_root(args), prepared)
    except (PresetError, RunsDirError) as exc:
        raise CliError(str(exc)) from None
    for warning in prepared.plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.detach:
        return start_detached(args, run, "started")
    return run_foreground(args, run, prepared.preset.name, len(prepared.plan.seeds))


def dry_run(args, prepared) -> int:
    """--dry-run: the plan and its estimated time; nothing is written (engine.runner.estimate)."""
    from engine.runner import dry_run as plan_run
    from engine.runner import render

    for warning in prepared.plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    root = _runs_root(args)
    if root.exists() and not root.is_dir():
        raise CliError(f"runs directory {root} is not a directory")
    result = plan_run(prepared.preset, prepared.plan, root, probe=not args.no_probe)
    if args.json:
        print(_dumps(result.to_dict()))
    else:
        print(render(result))
    return 0


def start_detached(args, run, verb: str) -> int:
    """Start (or resume) the run with the app's detached worker; print its id and log, return at once."""
    from engine.runner import launch

    try:
        pid = launch(run)
    except OSError as exc:  # the run directory stays, failed and resumable: it may hold finished work
        run.update_status(state="failed", error=f"the worker could not be started: {exc}")
        print(f"run {run.id} failed: the worker could not be started ({exc})", file=sys.stderr)
        return EXIT_RUN_FAILED
    print(f"run {run.id} {verb} in the background (pid {pid})")
    print(f"log: {run.log_path}")
    print(f"follow it: {_command_for(args, 'show', run.id)}; {_command_for(args, 'logs', run.id, '-f')}",
          file=sys.stderr)
    return 0


def run_foreground(args, run, name: str, n_splits: int) -> int:
    """Run or resume `run` in this process: progress on the terminal (or log lines), then the results table."""
    from rich.console import Console

    from engine.results import build_report
    from engine.base import RunCancelled
    from engine.runner.lifecycle import execute
    from mpt_tui.headless import LineReporter, TerminalReporter, results_table

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # logs and pipes: never wrap the results table
    print(f"run {run.id} in {run.path}", flush=True)
    reporter = TerminalReporter(console) if console.is_terminal else LineReporter()
    try:
        results = execute(run, reporter)
    except (RunCancelled, KeyboardInterrupt):
        reporter.close()
        print(f"run {run.id} cancelled; resume with: {_command_for(args, 'resume', run.id)}", file=sys.stderr)
        return 130
    except Exception as exc:
        reporter.close()
        print(f"run {run.id} failed: {type(exc).__name__}: {exc} (log: {run.log_path})", file=sys.stderr)
        return EXIT_RUN_FAILED
    reporter.close()
    report = build_report([{"run_id": run.id, **results}])
    console.print(results_table(report, title=f"{name}: test scores x100, mean ± std over "
                                              f"{n_splits} splits (run {run.id})"))
    from engine.store import summarize
    from mpt_tui.reported import print_reported

    print_reported(console, report, [{**summarize(run), "run_id": run.id}])
    _print_analysis(console, run)
    return 0


def _print_analysis(console, run) -> None:
    """The run's task similarity analysis under its table, when its last stage computed one."""
    from engine.results import read_analysis, render_text

    doc = read_analysis(run)
    if doc:
        console.print(render_text(doc), markup=False, highlight=False, soft_wrap=True, end="")
