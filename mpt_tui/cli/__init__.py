"""The `mpt-tui` command.

    mpt-tui --preset NAME_OR_PATH [--set key=value ...] [--data-dir DIR] [--detach]
                                                     run a preset headless (or in the background)
    mpt-tui runs [--state S[,S]] [--preset NAME] [--json]   list runs
    mpt-tui show ID [--json]                          state, progress, settings, the table so far, log tail
    mpt-tui resume ID [--detach]                      resume a crashed, cancelled or failed run
    mpt-tui cancel ID [--wait [--timeout S]]          the worker checkpoints, then stops
    mpt-tui delete ID [--yes]                         delete a run that is not running
    mpt-tui logs ID [-f]                              print (or follow) a run's log
    mpt-tui analyse ID [ID ...] [--similarity prompt,text] [--steps N] [--lr X] [--top-k K] [--json]
                                                     task similarity analysis of finished runs (engine.execution.analysis)
    mpt-tui plot ID [ID ...] --out FILE [--kind runs|similarity|gain-vs-similarity]
    mpt-tui reference NAME [--json]                   the authors' reported table for a paper setting
    mpt-tui presets | export | models pull NAME | data build ... | data tasks | index rebuild

Every command takes --runs-dir (before or after the subcommand); ID is a run id or
a unique prefix of one. Exit codes: 0 success, 1 a run failed while running, 2 bad
input (an unknown or ambiguous run id, a running run to resume or delete, a bad
preset: one line; nothing was run, no run directory was left behind or changed).
Torch and transformers are imported only by the commands that run a model.

One module per command group, each declaring its options beside its handlers
(`add_parser(subparsers)`, the handler set as `handler`): run (--preset, the
top-level options), runs (runs, show, resume, cancel, delete, logs), presets,
models, data, results (export, plot), analysis (analyse), reference, index, app (no command:
the app); common holds what they share (CliError, the exit codes, the runs root).
"""

from __future__ import annotations

import argparse
import os
import sys

from mpt_tui.cli import analysis, app, data, index, models, presets, reference, results, run, runs
from mpt_tui.cli.common import EXIT_BAD_INPUT, EXIT_RUN_FAILED, CliError

__all__ = ["EXIT_BAD_INPUT", "EXIT_RUN_FAILED", "CliError", "build_parser", "main"]

# in this order: `mpt-tui --help` lists the subcommands as they are added
GROUPS = (presets, runs, models, data, results, analysis, reference, index)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpt-tui", description="Meta prompt tuning experiment manager.")
    run.add_arguments(parser)
    sub = parser.add_subparsers(dest="command")
    for group in GROUPS:
        group.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.preset:
            if args.command:
                raise CliError("--preset runs a preset; it cannot be combined with a subcommand")
            return run.run_preset(args)
        if args.detach and args.command != "resume":
            raise CliError("--detach goes with --preset or resume")
        if args.command:
            return args.handler(args)
    except BrokenPipeError:  # `mpt-tui show ID --json | head`: the reader has gone, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except CliError as exc:
        print(f"mpt-tui: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return app.open_app(args)
