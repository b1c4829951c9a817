"""The `mpt-tui` command.

    mpt-tui --preset NAME_OR_PATH [--set key=value ...] [--data-dir DIR]   run a preset headless
    mpt-tui presets | runs | export | models pull NAME | data build ... | data tasks | index rebuild

Exit codes: 0 success, 1 a run failed while running, 2 bad input (nothing was run
and no run directory was left behind). Torch and transformers are imported only
by the commands that need them.
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
    from engine.runs import default_runs_root

    return Path(args.runs_dir).expanduser() if args.runs_dir else default_runs_root()


# ---- --preset -----------------------------------------------------------------------

def run_preset(args) -> int:
    from rich.console import Console

    from engine.config import PresetError
    from engine.prepare import check_preset, prepare_run
    from engine.runs import RunsDirError

    try:
        prepared = check_preset(args.preset, args.set or [], args.data_dir)
        run = prepare_run(_runs_root(args), prepared)
    except (PresetError, RunsDirError) as exc:
        raise CliError(str(exc)) from None
    for warning in prepared.plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)

    from engine.report import build_report
    from engine.stopping import RunCancelled
    from engine.worker import execute
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
        print(f"run {run.id} cancelled; resume with: python -m engine.worker {run.path}", file=sys.stderr)
        return 130
    except Exception as exc:
        reporter.close()
        print(f"run {run.id} failed: {type(exc).__name__}: {exc} (log: {run.log_path})", file=sys.stderr)
        return EXIT_RUN_FAILED
    reporter.close()
    report = build_report([{"run_id": run.id, **results}])
    console.print(results_table(report, title=f"{prepared.preset.name}: test scores x100, mean ± std over "
                                              f"{len(prepared.plan.seeds)} splits (run {run.id})"))
    return 0


# ---- other commands ---------------------------------------------------------------------

def cmd_presets(args) -> int:
    from engine.config import PresetError, builtin_presets_dir, list_builtin_presets, load_preset

    if getattr(args, "presets_command", None) == "show":
        from engine.paper import annotated_toml

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
    from engine.models import EMBEDDED_MODELS, ModelNotFoundError, embedded_model_dir, is_pulled, pull_model

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
        from engine.databuild import DataBuildError, build_splits

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
    from engine.config import DATA_DIR_ENV
    from engine.data import TaskData, TaskDataError

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


def cmd_runs(args) -> int:
    from engine.report import build_report, means_line
    from engine.runs import list_runs, read_json

    for run in list_runs(_runs_root(args)):
        st = run.status()
        progress = st.get("progress")
        pct = f"{100 * progress:5.1f}%" if isinstance(progress, (int, float)) else "     -"
        results = read_json(run.results_path) if st["state"] == "finished" else None
        scores = means_line(build_report([{"run_id": run.id, **results}])) if isinstance(results, dict) else ""
        print(f"{run.id:45s} {st['state']:10s} {pct} {st.get('stage', ''):14s} {scores}".rstrip())
    return 0


def cmd_export(args) -> int:
    from engine.export import SPLIT_COLUMNS, TABLE_COLUMNS, split_rows, table_rows, to_csv
    from engine.store import RunIndex

    root = _runs_root(args)
    if not root.is_dir():
        raise CliError(f"runs directory {root} does not exist")
    summaries = RunIndex(root).all()
    if args.run:
        wanted = set(args.run)
        unknown = wanted - {s["run_id"] for s in summaries}
        if unknown:
            raise CliError(f"--run: unknown run id(s) {', '.join(sorted(unknown))} in {root}")
        summaries = [s for s in summaries if s["run_id"] in wanted]
    if args.table == "splits":
        text = to_csv(split_rows(summaries), SPLIT_COLUMNS)
    else:
        text = to_csv(table_rows(summaries), TABLE_COLUMNS)
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(out.name + ".tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, out)
        except OSError as exc:
            raise CliError(f"--out {out}: cannot write ({exc.strerror})") from None
        print(f"wrote {text.count(chr(10)) - 1} rows to {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_index(args) -> int:
    from engine.store import RunIndex

    count = RunIndex(_runs_root(args)).rebuild()
    print(f"index rebuilt from {count} run directories")
    return 0


# ---- parser -------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from engine.data import PAPER_SEEDS

    parser = argparse.ArgumentParser(prog="mpt-tui", description="Meta prompt tuning experiment manager.")
    parser.add_argument("--preset", help="run this preset (built-in name or TOML file) headless")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset key (repeatable)")
    parser.add_argument("--data-dir", help="task data directory (default: the preset's, or $MPT_TUI_DATA_DIR)")
    parser.add_argument("--runs-dir", help="runs root (default: $MPT_TUI_RUNS_DIR or the user data directory)")
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
    common(sub.add_parser("runs", help="list runs with their state"), "runs-dir")

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
    export.add_argument("--format", choices=["csv"], default="csv")
    export.add_argument("--out", help="output file (default: stdout)")
    export.add_argument("--table", choices=["splits", "tasks"], default="splits",
                        help="splits: one row per (run, method, task, seed); tasks: the aggregated table")
    export.add_argument("--run", action="append", help="only this run id (repeatable)")
    common(export, "runs-dir")

    index = sub.add_parser("index", help="the run index")
    isub = index.add_subparsers(dest="index_command", required=True)
    common(isub.add_parser("rebuild", help="rebuild the index from the run directories"), "runs-dir")
    return parser


COMMANDS = {"presets": cmd_presets, "models": cmd_models, "data": cmd_data, "runs": cmd_runs,
            "export": cmd_export, "index": cmd_index}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.preset:
            if args.command:
                raise CliError("--preset runs a preset; it cannot be combined with a subcommand")
            return run_preset(args)
        if args.command:
            return COMMANDS[args.command](args)
    except CliError as exc:
        print(f"mpt-tui: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from mpt_tui.app import run_app
    from engine.runs import RunsDirError, ensure_writable_root

    try:
        root = ensure_writable_root(_runs_root(args))
    except RunsDirError as exc:
        print(f"mpt-tui: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run_app(root, args.data_dir)


if __name__ == "__main__":
    sys.exit(main())
