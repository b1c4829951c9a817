"""`mpt-tui index rebuild`: the run index (engine.store.index), rebuilt from the run directories."""

from __future__ import annotations

from mpt_tui.cli.common import _runs_root, common


def add_parser(sub) -> None:
    index = sub.add_parser("index", help="the run index")
    index.set_defaults(handler=cmd_index)
    isub = index.add_subparsers(dest="index_command", required=True)
    common(isub.add_parser("rebuild", help="rebuild the index from the run directories"), "runs-dir")


def cmd_index(args) -> int:
    from engine.store import RunIndex

    count = RunIndex(_runs_root(args)).rebuild()
    print(f"index rebuilt from {count} run directories")
    return 0
