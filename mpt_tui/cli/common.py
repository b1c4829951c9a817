"""What every `mpt-tui` command shares: bad input (CliError, exit 2), the exit codes, the runs root, a run by
id or prefix, JSON output, and the options accepted after a subcommand too."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2


class CliError(Exception):
    """Bad input: printed as one line, exit code 2."""


def _runs_root(args) -> Path:
    from engine.store import default_runs_root

    return Path(args.runs_dir).expanduser() if args.runs_dir else default_runs_root()


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


def _find_run(args):
    """The run named by args.run_id (an id or a unique prefix); bad input is one line, exit 2."""
    from engine.store import RunsDirError, find_run

    try:
        return find_run(_runs_root(args), args.run_id)
    except RunsDirError as exc:
        raise CliError(str(exc)) from None


def _state(run) -> str:
    return run.status()["state"]


def _dumps(obj) -> str:
    import json

    return json.dumps(obj, indent=1, allow_nan=False)


def _command_for(args, *words: str) -> str:
    """An `mpt-tui` command line to suggest, with the --runs-dir this one was given."""
    import shlex

    runs_dir = ["--runs-dir", args.runs_dir] if getattr(args, "runs_dir", None) else []
    return shlex.join(["mpt-tui", *words, *runs_dir])


def common(p: argparse.ArgumentParser, *names: str) -> None:
    # accepted after the subcommand too; SUPPRESS keeps a value given before it
    for name in names:
        p.add_argument(f"--{name}", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
