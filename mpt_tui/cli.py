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
    mpt-tui presets | export | models pull NAME | data build ... | data tasks | index rebuild

Every command takes --runs-dir (before or after the subcommand); ID is a run id or
a unique prefix of one. Exit codes: 0 success, 1 a run failed while running, 2 bad
input (an unknown or ambiguous run id, a running run to resume or delete, a bad
preset: one line; nothing was run, no run directory was left behind or changed).
Torch and transformers are imported only by the commands that run a model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2


class CliError(Exception):
    """Bad input: printed as one line, exit code 2."""


def _runs_root(args) -> Path:
    from engine.store.run_dir import default_runs_root

    return Path(args.runs_dir).expanduser() if args.runs_dir else default_runs_root()


# ---- --preset -----------------------------------------------------------------------

def run_preset(args) -> int:
    from engine.experiment.config import PresetError
    from engine.runner.prepare import check_preset, prepare_run
    from engine.store.run_dir import RunsDirError

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
    from engine.runner.estimate import dry_run as plan_run
    from engine.runner.estimate import render

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


def _command_for(args, *words: str) -> str:
    """An `mpt-tui` command line to suggest, with the --runs-dir this one was given."""
    import shlex

    runs_dir = ["--runs-dir", args.runs_dir] if getattr(args, "runs_dir", None) else []
    return shlex.join(["mpt-tui", *words, *runs_dir])


def start_detached(args, run, verb: str) -> int:
    """Start (or resume) the run with the app's detached worker; print its id and log, return at once."""
    from engine.runner.launch import launch

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

    from engine.results.report import build_report
    from engine.base.stopping import RunCancelled
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
    _print_analysis(console, run)
    return 0


def _print_analysis(console, run) -> None:
    """The run's task similarity analysis under its table, when its last stage computed one."""
    from engine.results.analysis import read_analysis, render_text

    doc = read_analysis(run)
    if doc:
        console.print(render_text(doc), markup=False, highlight=False, soft_wrap=True, end="")


# ---- a run's lifecycle: show, resume, cancel, delete, logs ---------------------------------

def _find_run(args):
    """The run named by args.run_id (an id or a unique prefix); bad input is one line, exit 2."""
    from engine.store.run_dir import RunsDirError, find_run

    try:
        return find_run(_runs_root(args), args.run_id)
    except RunsDirError as exc:
        raise CliError(str(exc)) from None


def _state(run) -> str:
    return run.status()["state"]


def _dumps(obj) -> str:
    import json

    return json.dumps(obj, indent=1, allow_nan=False)


def cmd_show(args) -> int:
    from engine.results.overview import overview
    from engine.store.run_dir import RunsDirError

    run = _find_run(args)
    try:
        view, partial, report = overview(run, log_lines=args.lines)
    except RunsDirError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(_dumps(view))
        return 0
    _print_overview(view, partial, report)
    return 0


def _device_text(view: dict) -> str:
    """"cuda:0 (NVIDIA H100 80GB HBM3), bf16", "cpu (2 cores), fp32", and a Ray run's workers."""
    from mpt_tui.headless import workers_line

    device, name = view.get("device") or "-", view.get("device_name")
    if device == "ray":
        text = f"ray, workers on {name}" if name else device
    else:
        text = name if name and name.startswith(device) else (f"{device} ({name})" if name else device)
    if view.get("precision"):
        text += f", {view['precision']}"
    if view.get("cluster") and view.get("state") in ("queued", "running"):  # after the run: all idle
        text += f"; {workers_line(view['cluster'])}"
    return text


def _print_overview(view: dict, partial, report) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from engine.experiment.methods import label
    from engine.results.overview import partial_note
    from engine.results.report import format_duration
    from mpt_tui.headless import results_table

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    p, res = view["preset"], view["results"]
    progress = view["progress"]
    pct = f"{100 * progress:.1f}%" if isinstance(progress, (int, float)) else "-"
    lines = [f"[b]{view['run_id']}[/b]  {view['state']}" + (f"  ({escape(view['stage'])})" if view["stage"] else ""),
             f"progress   {pct}, {res['cells']['done']}/{res['cells']['total']} grid cells; elapsed "
             f"{format_duration(view['elapsed_s']) if view['elapsed_s'] is not None else '-'}"
             + (f", ETA {format_duration(view['eta_s'])}" if view["eta_s"] is not None else ""),
             f"device     {escape(_device_text(view))}" + (f" (pid {view['pid']})" if view["pid"] else ""),
             f"preset     {escape(p['name'])}",
             f"model      {escape(str(p['model']))}",
             f"tasks      {escape(p['setting'] or 'hand-picked')}: {len(p['sources'])} source, "
             f"{len(p['targets'])} target tasks x {len(p['seeds'])} splits {p['seeds']}",
             f"methods    {', '.join(label(m) for m in p['methods'])}"
             + (f"; {p['upstream_steps']} upstream steps" if p["upstream_steps"] is not None else ""),
             f"prompt     length {p['prompt_length']}",
             f"downstream learning rates {p['learning_rates']}, {p['steps']} steps, batch {p['batch_size']}, "
             f"{p['optimizer']}",
             f"path       {escape(view['path'])}"]
    if view["error"]:
        lines.append(f"[red]error      {escape(str(view['error']))}[/red]")
    for warning in view["warnings"]:
        lines.append(f"[yellow]warning    {escape(warning)}[/yellow]")
    console.print("\n".join(lines))
    what = "so far, complete splits only" if not partial.complete else f"mean ± std over {partial.splits_total} splits"
    console.print(results_table(report, title=f"test scores x100 ({what})"))
    if not partial.complete:
        console.print(partial_note(partial), highlight=False)
        table = Table()
        table.add_column("complete splits", no_wrap=True)
        for method in report.columns:
            table.add_column(report.header(method), justify="right")
        for task in report.tasks:
            table.add_row(task, *[f"{partial.splits_done[c.method][task]}/{partial.splits_total}"
                                  for c in report.columns])
        console.print(table)
    if view["log_tail"]:
        console.print(f"[dim]last {len(view['log_tail'])} log lines ({escape(view['log_path'])}):[/dim]")
        for line in view["log_tail"]:
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def cmd_resume(args) -> int:
    from engine.runner.launch import resume_refusal
    from engine.results.overview import run_plan
    from engine.store.run_dir import RunsDirError

    run = _find_run(args)
    state = _state(run)
    refusal = resume_refusal(run)
    if refusal:
        raise CliError(refusal)
    try:
        preset, plan = run_plan(run)
    except RunsDirError as exc:
        raise CliError(str(exc)) from None
    if args.detach:
        return start_detached(args, run, f"({state}) resumed")
    return run_foreground(args, run, preset.get("name", run.id), len(plan.seeds))


def cmd_cancel(args) -> int:
    import time

    from engine.runner.launch import cancel
    from engine.store.run_dir import ACTIVE_STATES

    run = _find_run(args)
    if not cancel(run):
        raise CliError(f"run {run.id} is {_state(run)}: nothing to cancel")
    print(f"cancelling run {run.id}: it checkpoints, then stops", flush=True)
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while (state := _state(run)) in ACTIVE_STATES:
        if time.monotonic() > deadline:
            print(f"run {run.id} is still {state} after {args.timeout:g} s", file=sys.stderr)
            return EXIT_RUN_FAILED
        time.sleep(0.2)
    print(f"run {run.id} {state}")
    return 0


def cmd_delete(args) -> int:
    from engine.runner.launch import delete_run
    from engine.store.run_dir import ACTIVE_STATES, RunsDirError

    run = _find_run(args)
    state = _state(run)
    if state in ACTIVE_STATES:
        raise CliError(f"run {run.id} is {state}: cancel it first")
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError(f"run {run.id} not deleted: pass --yes to delete without a terminal")
        try:
            answer = input(f"delete run {run.id} ({state}) and everything in {run.path}? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("not deleted")
            return 0
    try:
        delete_run(run)
    except RunsDirError as exc:
        raise CliError(str(exc)) from None
    print(f"deleted run {run.id}")
    return 0


def cmd_logs(args) -> int:
    import time

    from engine.store.run_dir import ACTIVE_STATES, pid_alive, read_json

    run = _find_run(args)
    out = sys.stdout.buffer
    offset = 0

    def pump() -> None:
        nonlocal offset
        try:
            with run.log_path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except OSError:
            return
        if chunk:
            offset += len(chunk)
            out.write(chunk)
            out.flush()

    pump()
    if not args.follow:
        return 0
    try:
        followed = False
        while _state(run) in ACTIVE_STATES:
            followed = True
            time.sleep(0.5)
            pump()
        if followed:  # the worker logs its last line just after its final status: wait for it to exit
            status = read_json(run.status_path) or {}
            end = time.monotonic() + 10.0
            while pid_alive(status.get("pid"), status.get("host")) and time.monotonic() < end:
                time.sleep(0.1)
        pump()
    except KeyboardInterrupt:
        return 130
    return 0


# ---- other commands ---------------------------------------------------------------------

def cmd_presets(args) -> int:
    from engine.experiment.config import PresetError, builtin_presets_dir, list_builtin_presets, load_preset

    if getattr(args, "presets_command", None) == "show":
        from engine.experiment.paper import annotated_toml

        try:
            preset, path = load_preset(args.name, args.set or [], args.data_dir, require_data_dir=False)
        except PresetError as exc:
            raise CliError(str(exc)) from None
        print(f"# {path}, every key resolved; '# paper:' marks a value that is not the authors' "
              f"(docs/paper-fidelity.md)")
        print(annotated_toml(preset.to_dict()), end="")
        return 0
    print(f"built-in presets ({builtin_presets_dir()}):")
    for name in list_builtin_presets():
        description = load_preset(name, require_data_dir=False)[0].description
        print(f"  {name:<30} {description}")
    return 0


def cmd_models(args) -> int:
    from engine.store.models import EMBEDDED_MODELS, ModelNotFoundError, embedded_model_dir, is_pulled
    from engine.compute.models import pull_model

    if args.models_command == "pull":
        try:
            path = pull_model(args.name, force=args.force)
        except ModelNotFoundError as exc:
            raise CliError(str(exc)) from None
        print(path)
        return 0
    for name in sorted(EMBEDDED_MODELS):
        state = f"pulled: {embedded_model_dir(name)}" if is_pulled(name) else "not pulled"
        print(f"{name:16s} {EMBEDDED_MODELS[name].requirement:22s} {state}")
    return 0


def cmd_data(args) -> int:
    if args.data_command == "build":
        from engine.experiment.databuild import DataBuildError, build_splits

        seeds = tuple(int(s) for s in args.seeds.split(","))
        try:
            written = build_splits(args.source, Path(args.out), args.task, k=args.k, seeds=seeds,
                                   input_column=args.input_column, output_column=args.output_column,
                                   task_type=args.task_type, train_split=args.train_split,
                                   test_split=None if args.test_split == "none" else args.test_split,
                                   max_test=args.max_test, data_format=args.format,
                                   progress=lambda m: print(m, file=sys.stderr))
        except DataBuildError as exc:
            raise CliError(str(exc)) from None
        print(f"wrote {len(written)} files under {Path(args.out) / args.task}")
        return 0
    from engine.experiment.config import DATA_DIR_ENV
    from engine.experiment.data import TaskData, TaskDataError

    data_dir = args.data_dir or os.environ.get(DATA_DIR_ENV)
    if not data_dir:
        raise CliError(f"pass --data-dir DIR or set ${DATA_DIR_ENV}")
    try:
        data = TaskData(Path(data_dir))
        for task in data.tasks():
            info = data.task_info(task)
            test = "test" if data.has_test(task, args.k) else "no test"
            print(f"{task:45s} {info.task_type:15s} {test:8s} seeds {data.seeds(task, args.k)}")
    except TaskDataError as exc:
        raise CliError(str(exc)) from None
    return 0


def _state_filter(values: list[str] | None) -> set[str] | None:
    from engine.store.run_dir import STATES

    if not values:
        return None
    wanted = {v.strip() for value in values for v in value.split(",") if v.strip()}
    known = (*STATES, "damaged")
    unknown = sorted(wanted - set(known))
    if unknown:
        raise CliError(f"--state: unknown state(s) {', '.join(unknown)} (known: {', '.join(known)})")
    return wanted


def _preset_matches(config: dict, name: str) -> bool:
    """--preset NAME: the preset's name, or the file (path or stem) it was read from."""
    preset_file = str(config.get("preset_file") or "")
    return name in (config.get("preset", {}).get("name"), preset_file, Path(preset_file).stem if preset_file else None)


def cmd_runs(args) -> int:
    from engine.results.overview import json_safe
    from engine.results.report import build_report, means_line
    from engine.store.run_dir import list_runs, read_json
    from engine.store.index import summarize

    states = _state_filter(args.state)
    rows = []
    root = _runs_root(args)
    if root.exists():  # none yet: an empty list; a file or an unreadable directory: bad input
        root = _readable_runs_root(args)
    for run in list_runs(root):
        st = run.status()
        if states is not None and st["state"] not in states:
            continue
        config = read_json(run.config_path)
        config = config if isinstance(config, dict) else {}
        if args.preset_filter and not _preset_matches(config, args.preset_filter):
            continue
        if args.json:
            summary = summarize(run)
            summary.pop("splits", None)
            rows.append({**summary, "state": st["state"], "stage": st.get("stage", ""),
                         "progress": st.get("progress"), "eta_s": st.get("eta_s"), "device": st.get("device"),
                         "path": str(run.path)})
            continue
        progress = st.get("progress")
        pct = f"{100 * progress:5.1f}%" if isinstance(progress, (int, float)) else "     -"
        results = read_json(run.results_path) if st["state"] == "finished" else None
        scores = means_line(build_report([{"run_id": run.id, **results}])) if isinstance(results, dict) else ""
        print(f"{run.id:45s} {st['state']:10s} {pct} {st.get('stage', ''):14s} {scores}".rstrip())
    if args.json:
        print(_dumps(json_safe(rows)))
    return 0


def cmd_export(args) -> int:
    from engine.results.export import export_document, load_analyses
    from engine.store.run_dir import RunsDirError, find_run
    from engine.store.index import RunIndex

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


def cmd_plot(args) -> int:
    from engine.store.run_dir import RunsDirError, find_run
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


def _readable_runs_root(args) -> Path:
    """The runs root a reading command lists: a file, or a directory it cannot read, is bad input."""
    root = _runs_root(args)
    if not root.exists():
        raise CliError(f"runs directory {root} does not exist")
    if not root.is_dir():
        raise CliError(f"runs directory {root} is not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise CliError(f"runs directory {root} is not readable")
    return root


def cmd_index(args) -> int:
    from engine.store.index import RunIndex

    count = RunIndex(_runs_root(args)).rebuild()
    print(f"index rebuilt from {count} run directories")
    return 0


# ---- parser -------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from engine.experiment.data import PAPER_SEEDS

    parser = argparse.ArgumentParser(prog="mpt-tui", description="Meta prompt tuning experiment manager.")
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
    sub = parser.add_subparsers(dest="command")

    def common(p: argparse.ArgumentParser, *names: str) -> None:
        # accepted after the subcommand too; SUPPRESS keeps a value given before it
        for name in names:
            p.add_argument(f"--{name}", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    presets = sub.add_parser("presets", help="list the built-in presets")
    psub = presets.add_subparsers(dest="presets_command")
    show = psub.add_parser("show", help="print a preset with every key resolved, marking values that differ "
                                        "from the paper's (the authors' code)")
    show.add_argument("name", help="built-in name or TOML file")
    show.add_argument("--set", action="append", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                      help="override a preset key (repeatable)")
    common(show, "data-dir")
    runs = sub.add_parser("runs", help="list runs with their state")
    runs.add_argument("--state", action="append", metavar="STATE",
                      help="only runs in this state (repeatable, or a comma list: running,crashed)")
    runs.add_argument("--preset", dest="preset_filter", metavar="NAME",
                      help="only runs of this preset (its name, or the file it was read from)")
    runs.add_argument("--json", action="store_true", help="one JSON document (a list of run summaries)")
    common(runs, "runs-dir")

    def run_command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("run_id", metavar="ID", help="a run id, or a unique prefix of one")
        common(p, "runs-dir")
        return p

    show_run = run_command("show", "a run's state, progress, settings, table so far and log tail")
    show_run.add_argument("--json", action="store_true", help="one JSON document with the same content")
    show_run.add_argument("--lines", type=int, default=10, metavar="N", help="log lines to show (default 10)")
    resume = run_command("resume", "resume a crashed, cancelled or failed run (foreground, or --detach)")
    resume.add_argument("--detach", action="store_true", default=argparse.SUPPRESS,
                        help="resume in the background, print its id and log, return at once")
    cancel = run_command("cancel", "ask a running run to checkpoint and stop")
    cancel.add_argument("--wait", action="store_true", help="wait until the run has stopped")
    cancel.add_argument("--timeout", type=float, default=600.0, metavar="S",
                        help="with --wait: give up after S seconds (exit 1; default 600)")
    delete = run_command("delete", "delete a run that is not running (asks first)")
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask (needed without a terminal)")
    logs = run_command("logs", "print a run's log")
    logs.add_argument("-f", "--follow", action="store_true", help="follow the log until the run ends")

    models = sub.add_parser("models", help="embedded models")
    msub = models.add_subparsers(dest="models_command")
    pull = msub.add_parser("pull", help="download and convert an embedded model")
    pull.add_argument("name")
    pull.add_argument("--force", action="store_true", help="convert again even if present")
    msub.add_parser("list", help="list embedded models")

    data = sub.add_parser("data", help="task data")
    dsub = data.add_subparsers(dest="data_command", required=True)
    build = dsub.add_parser("build", help="build k-shot splits (CrossFit layout) from a datasets data set")
    build.add_argument("source", help="local file/directory (csv, json, jsonl, parquet) or hub data set name[:config]")
    build.add_argument("--task", required=True, help="task name (folder name)")
    build.add_argument("--out", required=True, help="output data directory")
    build.add_argument("--k", type=int, default=16)
    build.add_argument("--seeds", default=",".join(map(str, PAPER_SEEDS)))
    build.add_argument("--input-column", default="input")
    build.add_argument("--output-column", default="output")
    build.add_argument("--task-type", default="classification", choices=["classification", "free-form"])
    build.add_argument("--train-split", default="train")
    build.add_argument("--test-split", default="test", help="split used as test; 'none' for no test file")
    build.add_argument("--max-test", type=int, default=None)
    build.add_argument("--format", default=None, help="force the file format (csv, json, parquet)")
    tasks = dsub.add_parser("tasks", help="list the tasks of a data directory")
    tasks.add_argument("--k", type=int, default=16)
    common(tasks, "data-dir")

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

    plot = sub.add_parser("plot", help="a paper figure of runs (needs pip install 'mpt-tui[plots]')")
    plot.add_argument("ids", nargs="+", metavar="ID", help="run ids or unique prefixes")
    plot.add_argument("--out", required=True, help="figure file: .pdf, .png or .svg")
    plot.add_argument("--kind", choices=["runs", "similarity", "gain-vs-similarity"], default="runs",
                      help="runs: losses, dev and test scores (default); similarity: the task similarity matrices "
                           "of a run's analysis as heatmaps; gain-vs-similarity: each method's gain over PT per "
                           "target against the target's similarity to its sources (needs `mpt-tui analyse` first)")
    common(plot, "runs-dir")

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

    index = sub.add_parser("index", help="the run index")
    isub = index.add_subparsers(dest="index_command", required=True)
    common(isub.add_parser("rebuild", help="rebuild the index from the run directories"), "runs-dir")
    return parser


COMMANDS = {"presets": cmd_presets, "models": cmd_models, "data": cmd_data, "runs": cmd_runs,
            "export": cmd_export, "index": cmd_index, "show": cmd_show, "resume": cmd_resume, "cancel": cmd_cancel,
            "delete": cmd_delete, "logs": cmd_logs, "plot": cmd_plot,
            "analyse": cmd_analyse}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.preset:
            if args.command:
                raise CliError("--preset runs a preset; it cannot be combined with a subcommand")
            return run_preset(args)
        if args.detach and args.command != "resume":
            raise CliError("--detach goes with --preset or resume")
        if args.command:
            return COMMANDS[args.command](args)
    except BrokenPipeError:  # `mpt-tui show ID --json | head`: the reader has gone, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except CliError as exc:
        print(f"mpt-tui: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from engine.store.run_dir import RunsDirError, ensure_writable_root
    from mpt_tui.app import run_app

    try:
        root = ensure_writable_root(_runs_root(args))
    except RunsDirError as exc:
        print(f"mpt-tui: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run_app(root, args.data_dir)


if __name__ == "__main__":
    sys.exit(main())
