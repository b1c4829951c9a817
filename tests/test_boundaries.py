"""The layers' boundaries, enforced (the contract an import linter would check).

- The engine never imports the app package (mpt_tui) or Textual.
- The app, and every engine module it uses (run directories, index, report, presets,
  preparing and launching runs), never imports torch or transformers: each is imported
  in a fresh interpreter and `sys.modules` is checked.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from conftest import REPO

HEAVY = ("torch", "transformers", "higher", "safetensors.torch")
TORCH_FREE = [
    "engine.store.checkpoint", "engine.experiment.config", "engine.experiment.data", "engine.runner.devices", "engine.results.export", "engine.base.fields",
    "engine.runner.launch", "engine.experiment.methods", "engine.experiment.metrics", "engine.runner.prepare", "engine.experiment.plan", "engine.results.report",
    "engine.store.run_dir", "engine.base.stopping", "engine.store.index", "engine.runner.lifecycle", "engine.results.overview", "engine.runner.estimate",
    "engine.experiment.paper", "engine.base.durable", "engine.base.faults", "mpt_tui.plots",
    "mpt_tui.app", "mpt_tui.cli", "mpt_tui.headless", "mpt_tui.watch", "mpt_tui.screens",
]


def _loaded_after(code: str) -> list[str]:
    probe = code + f"\nimport sys, json\nprint(json.dumps(sorted(m for m in sys.modules if m in {HEAVY!r} " \
                   f"or m.split('.')[0] in {HEAVY!r})))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_imports_without_torch(module):
    assert _loaded_after(f"import {module}") == []


def test_preparing_a_run_is_torch_free(tmp_path):
    """The app prepares runs on its UI path: every preflight check runs without torch."""
    code = (f"from engine.runner.prepare import check_preset, prepare_run\n"
            f"prepare_run({str(tmp_path)!r}, check_preset('demo'))")
    assert _loaded_after(code) == []


def _imports(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_engine_never_imports_the_app_or_textual():
    offenders = {}
    for path in sorted((REPO / "engine").rglob("*.py")):
        bad = {n for n in _imports(path) if n.split(".")[0] in ("mpt_tui", "textual", "textual_plotext")}
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert offenders == {}


def test_the_app_imports_torch_nowhere_not_even_lazily():
    offenders = {}
    for path in sorted((REPO / "mpt_tui").rglob("*.py")):
        if path.name == "cli.py":
            continue  # the CLI's --preset and models commands load torch on purpose, lazily
        bad = {n for n in _imports(path) if n.split(".")[0] in HEAVY}
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert offenders == {}
