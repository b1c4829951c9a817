"""`mpt-tui models [list]` lists the embedded models; `models pull NAME` downloads and converts one."""

from __future__ import annotations

from mpt_tui.cli.common import CliError


def add_parser(sub) -> None:
    models = sub.add_parser("models", help="embedded models")
    models.set_defaults(handler=cmd_models)
    msub = models.add_subparsers(dest="models_command")
    pull = msub.add_parser("pull", help="download and convert an embedded model")
    pull.add_argument("name")
    pull.add_argument("--force", action="store_true", help="convert again even if present")
    msub.add_parser("list", help="list embedded models")


def cmd_models(args) -> int:
    from engine.store import EMBEDDED_MODELS, ModelNotFoundError, embedded_model_dir, is_pulled
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
