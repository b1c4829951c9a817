"""`mpt-tui presets` lists the built-in presets; `presets show NAME` prints one with every key resolved."""

from __future__ import annotations

import argparse

from mpt_tui.cli.common import CliError, common


def add_parser(sub) -> None:
    presets = sub.add_parser("presets", help="list the built-in presets")
    presets.set_defaults(handler=cmd_presets)
    psub = presets.add_subparsers(dest="presets_command")
    show = psub.add_parser("show", help="print a preset with every key resolved, marking values that differ "
                                        "from the paper's (the authors' code)")
    show.add_argument("name", help="built-in name or TOML file")
    show.add_argument("--set", action="append", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                      help="override a preset key (repeatable)")
    common(show, "data-dir")


def cmd_presets(args) -> int:
    from engine.experiment import PresetError, builtin_presets_dir, list_builtin_presets, load_preset

    if getattr(args, "presets_command", None) == "show":
        from engine.experiment import annotated_toml

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
