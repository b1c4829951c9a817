"""`mpt-tui analyse ID [ID ...]`: the task similarity analysis of finished runs, run as the first run's
analysis stage (engine.execution.analysis) and stored in its directory."""

from __future__ import annotations

import sys

from mpt_tui.cli.common import EXIT_RUN_FAILED, CliError, _command_for, _dumps, _readable_runs_root, _state, common


def add_parser(sub) -> None:
    analyse = sub.add_parser("analyse", help="task similarity analysis of finished runs (same backbone and data): "
                                             "similarity matrices, nearest sources, gain-vs-similarity correlations")
    analyse.add_argument("ids", nargs="+", metavar="ID",
                         help="run ids or unique prefixes; the analysis is stored in the first run's directory")
    analyse.add_argument("--similarity", metavar="KINDS",
                         help="comma list of prompt, text (default: the run's [analysis] similarity, else both)")
    analyse.add_argument("--steps", type=int, help="steps of each embedding job (default: analysis.embedding_steps)")
    analyse.add_argument("--lr", type=float, help="learning rate of each embedding job (default: analysis.embedding_lr)")
    analyse.add_argument("--top-k", type=int, help="nearest sources kept per target (default: analysis.top_k)")
    analyse.add_argument("--json", action="store_true", help="print the stored analysis.json document")
    common(analyse, "runs-dir")
    analyse.set_defaults(handler=cmd_analyse)


def _analysis_settings(args, preset):
    """The run's [analysis] keys with the command line's overrides; prompt and text when it has none."""
    import dataclasses
    import math

    from engine.results import KINDS

    settings = preset.analysis
    kinds = [k.strip() for k in args.similarity.split(",") if k.strip()] if args.similarity \
        else (settings.similarity or list(KINDS))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise CliError(f"--similarity: unknown kind(s) {', '.join(unknown) or '(none)'} (known: {', '.join(KINDS)})")
    if args.steps is not None and args.steps < 1:
        raise CliError(f"--steps: must be at least 1, got {args.steps}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise CliError(f"--lr: must be a positive number, got {args.lr}")
    if args.top_k is not None and args.top_k < 1:
        raise CliError(f"--top-k: must be at least 1, got {args.top_k}")
    return dataclasses.replace(settings, similarity=kinds,
                               embedding_steps=args.steps if args.steps is not None else settings.embedding_steps,
                               embedding_lr=args.lr if args.lr is not None else settings.embedding_lr,
                               top_k=args.top_k if args.top_k is not None else settings.top_k)


def cmd_analyse(args) -> int:
    """The task similarity analysis of finished runs, run now as the first run's analysis stage by the
    worker's lifecycle in this process: status, heartbeat, `show`, `cancel` and the app see it like any
    stage, and a cancelled one goes on with `resume` (or this command again) where its jobs stopped."""
    from engine.base import RunCancelled
    from engine.results import AnalysisError, check_analysable, check_together, read_analysis, render_text, \
        request_analysis, run_part
    from engine.runner.lifecycle import RunLocked, execute, run_locked
    from engine.store import ACTIVE_STATES, RunsDirError, find_run
    from mpt_tui.headless import LineReporter

    root = _readable_runs_root(args)
    try:
        runs = [find_run(root, ref) for ref in args.ids]
        for run in runs:
            state = _state(run)
            if state in ACTIVE_STATES or run_locked(run):
                raise CliError(f"run {run.id} is {state}: analyse it once it has finished")
            run_part(run)
        preset, _ = check_together(runs)
        settings = _analysis_settings(args, preset)
        check_analysable(runs, settings)
    except (RunsDirError, AnalysisError) as exc:
        raise CliError(str(exc)) from None
    request_analysis(runs[0], settings, runs[1:])  # what the stage (and a later resume) computes
    print(f"analysing {', '.join(r.id for r in runs)} as a stage of run {runs[0].id} (log: {runs[0].log_path})",
          file=sys.stderr, flush=True)
    try:
        execute(runs[0], LineReporter(sys.stderr), stages=["analysis"])
    except RunLocked as exc:
        raise CliError(str(exc)) from None
    except (RunCancelled, KeyboardInterrupt):
        print(f"analysis of {runs[0].id} cancelled; go on with: {_command_for(args, 'resume', runs[0].id)}",
              file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"analysis of {runs[0].id} failed: {type(exc).__name__}: {exc} (log: {runs[0].log_path})",
              file=sys.stderr)
        return EXIT_RUN_FAILED
    doc = read_analysis(runs[0])
    if args.json:
        print(_dumps(doc))
    else:
        sys.stdout.write(render_text(doc))
    return 0
