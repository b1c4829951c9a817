"""Task data: `mpt-tui data build` writes k-shot splits (CrossFit layout) from a data set; `data tasks` lists
the tasks of a data directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mpt_tui.cli.common import CliError, common


def add_parser(sub) -> None:
    from engine.experiment import PAPER_SEEDS

    data = sub.add_parser("data", help="task data")
    data.set_defaults(handler=cmd_data)
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


def cmd_data(args) -> int:
    if args.data_command == "build":
        from engine.experiment import DataBuildError, build_splits

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
    from engine.experiment import DATA_DIR_ENV
    from engine.experiment import TaskData, TaskDataError

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
