"""`mpt-tui analyse ID [ID ...]`: the task similarity analysis of finished runs (engine.execution.analysis),
stored in the first run's directory."""

from __future__ import annotations

import sys

from mpt_tui.cli.common import EXIT_BAD_INPUT, EXIT_RUN_FAILED, CliError, _dumps, _readable_runs_root, _state, common


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


class _AnalysisEvents:
    """What `engine.execution.analysis.analyse_runs` reports, for the terminal: log lines (stderr) and the stop flag."""

    def __init__(self, stop):
        self.stop = stop

    def message(self, text: str) -> None:
        import time

        print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)

    def stage(self, stage: str, **fields) -> None:
        pass

    def should_stop(self) -> bool:
        return self.stop()


def _analysis_settings(args, preset):
    """The run's [analysis] keys with the command line's overrides; prompt and text when it has none."""
    import dataclasses
    import math

    from engine.results.analysis import KINDS

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
    """The task similarity analysis of finished runs, computed now (embedding jobs resume where they stopped)."""
    from engine.results.analysis import AnalysisError, check_together, render_text, run_part
    from engine.execution.analysis import analyse_runs
    from engine.runner.devices import acquire_device, candidate_devices
    from engine.store.run_dir import ACTIVE_STATES, RunsDirError, find_run
    from engine.base.stopping import RunCancelled, StopFlag
    from engine.store.index import RunIndex
    from engine.runner.lifecycle import RunLocked, hold_run_lock, run_locked

    root = _readable_runs_root(args)
    try:
        runs = [find_run(root, ref) for ref in args.ids]
        for run in runs:
            state = _state(run)
            if state in ACTIVE_STATES or run_locked(run):
                raise CliError(f"run {run.id} is {state}: analyse it once it has finished")
            run_part(run)
        preset, _ = check_together(runs)
    except (RunsDirError, AnalysisError) as exc:
        raise CliError(str(exc)) from None
    settings = _analysis_settings(args, preset)
    try:
        run_lock = hold_run_lock(runs[0])  # the embedding jobs write into it: no worker may resume it meanwhile
    except RunLocked as exc:
        raise CliError(str(exc)) from None
    stop = StopFlag()
    stop.install_signal_handlers()
    events = _AnalysisEvents(stop)
    device_lock = None
    try:
        waiting = []

        def check_stop() -> None:
            if stop():
                raise RunCancelled("cancelled while waiting for a device")
            if not waiting:  # said once: the device is busy (a run holds it)
                waiting.append(True)
                events.message(f"waiting for a device ({preset.model.device}): a run holds it")

        device, device_lock = acquire_device(root, candidate_devices(preset.model.device), on_wait=check_stop)
        events.message(f"loading {preset.model.name} on {device}")
        from engine.compute.backbone import Backbone
        from engine.compute.executor import Executor

        backbone = Backbone.from_preset(preset.model, device, progress=events.message, compile=False)
        doc = analyse_runs(runs, settings, Executor(backbone), events)
    except AnalysisError as exc:
        print(f"mpt-tui: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (RunCancelled, KeyboardInterrupt):
        print(f"analysis of {runs[0].id} cancelled; run the same command again to go on", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"analysis of {runs[0].id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED
    finally:
        if device_lock is not None:
            device_lock.release()
        run_lock.release()
    RunIndex(root).record(runs[0])
    if args.json:
        print(_dumps(doc))
    else:
        sys.stdout.write(render_text(doc))
    return 0
