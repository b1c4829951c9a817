"""`mpt-tui` with no command: open the app (mpt_tui.app) on the runs root, created if need be."""

from __future__ import annotations

import sys

from mpt_tui.cli.common import EXIT_BAD_INPUT, _runs_root


def open_app(args) -> int:
    from engine.store import RunsDirError, ensure_writable_root
    from mpt_tui.app import run_app

    try:
        root = ensure_writable_root(_runs_root(args))
    except RunsDirError as exc:
        print(f"mpt-tui: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run_app(root, args.data_dir)
