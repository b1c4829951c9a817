"""Stored runs: `mpt-tui runs` lists them; `show`, `resume`, `cancel`, `delete` and `logs` act on one (ID is
a run id or a unique prefix of one)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mpt_tui.cli.common import (EXIT_RUN_FAILED, CliError, _dumps, _find_run, _readable_runs_root, _runs_root,
                                _state, common)
from mpt_tui.cli.run import run_foreground, start_detached


def add_parser(sub) -> None:
    runs = sub.add_parser("runs", help="list runs with their state")
    runs.add_argument("--state", action="append", metavar="STATE",
                      help="only runs in this state (repeatable, or a comma list: running,crashed)")
    runs.add_argument("--preset", dest="preset_filter", metavar="NAME",
                      help="only runs of this preset (its name, or the file it was read from)")
    runs.add_argument("--json", action="store_true", help="one JSON document (a list of run summaries)")
    common(runs, "runs-dir")
    runs.set_defaults(handler=cmd_runs)

    def run_command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("run_id", metavar="ID", help="a run id, or a unique prefix of one")
        common(p, "runs-dir")
        return p

    show_run = run_command("show", "a run's state, progress, settings, table so far and log tail")
    show_run.add_argument("--json", action="store_true", help="one JSON document with the same content")
    show_run.add_argument("--lines", type=int, default=10, metavar="N", help="log lines to show (default 10)")
    show_run.set_defaults(handler=cmd_show)
    resume = run_command("resume", "resume a crashed, cancelled or failed run (foreground, or --detach)")
    resume.add_argument("--detach", action="store_true", default=argparse.SUPPRESS,
                        help="resume in the background, print its id and log, return at once")
    resume.set_defaults(handler=cmd_resume)
    cancel = run_command("cancel", "ask a running run to checkpoint and stop")
    cancel.add_argument("--wait", action="store_true", help="wait until the run has stopped")
    cancel.add_argument("--timeout", type=float, default=600.0, metavar="S",
                        help="with --wait: give up after S seconds (exit 1; default 600)")
    cancel.set_defaults(handler=cmd_cancel)
    delete = run_command("delete", "delete a run that is not running (asks first)")
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask (needed without a terminal)")
    delete.set_defaults(handler=cmd_delete)
    logs = run_command("logs", "print a run's log")
    logs.add_argument("-f", "--follow", action="store_true", help="follow the log until the run ends")
    logs.set_defaults(handler=cmd_logs)


# ---- runs -----------------------------------------------------------------------------------

def _state_filter(values: list[str] | None) -> set[str] | None:
    from engine.store import STATES

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
    from engine.results import json_safe
    from engine.results import build_report, means_line
    from engine.store import list_runs, read_json
    from engine.store import summarize

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


# ---- a run's lifecycle: show, resume, cancel, delete, logs ---------------------------------

def cmd_show(args) -> int:
    from engine.results import overview
    from engine.store import RunsDirError

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


def _analysis_text(summary: dict) -> str:
    """"prompt, text" for an analysis of the run's own [analysis]; one added later says when and how."""
    kinds = ", ".join(summary["kinds"]) if summary["done"] else "not finished"
    later = summary.get("added_later")
    if not later:
        return kinds
    import time

    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(later.get("at", 0)))
    others = f", with {len(later.get('others', []))} other run(s)" if later.get("others") else ""
    return f"{kinds} (added after the run by `mpt-tui analyse` on {when}{others})"


def _print_overview(view: dict, partial, report) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from engine.experiment import label
    from engine.results import partial_note
    from engine.results import format_duration
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
    if view.get("analysis"):
        lines.append(f"analysis   {escape(_analysis_text(view['analysis']))}")
    if view["error"]:
        lines.append(f"[red]error      {escape(str(view['error']))}[/red]")
    for warning in view["warnings"]:
        lines.append(f"[yellow]warning    {escape(warning)}[/yellow]")
    console.print("\n".join(lines))
    what = "so far, complete splits only" if not partial.complete else f"mean ± std over {partial.splits_total} splits"
    console.print(results_table(report, title=f"test scores x100 ({what})"))
    from mpt_tui.reported import print_reported

    print_reported(console, report, [{"run_id": view["run_id"], "setting": p["setting"], "model": p["model"],
                                      "seeds": p["seeds"]}])
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
    from engine.runner import resume_refusal
    from engine.results import run_plan
    from engine.store import RunsDirError

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

    from engine.runner import cancel
    from engine.store import ACTIVE_STATES

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
    from engine.runner import delete_run
    from engine.store import ACTIVE_STATES, RunsDirError

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

    from engine.store import ACTIVE_STATES, pid_alive, read_json

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
