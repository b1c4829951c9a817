"""The layers' boundaries, enforced (the contract an import linter would check).

- Each engine package imports only the packages below it (`MAY_IMPORT`, the matrix of the README's
  code map), at module level and inside functions alike; the compute layer only inside functions.
- The engine's modules import each other without a cycle.
- Only the compute layer imports torch (or transformers, higher) at module level; the few functions
  elsewhere that ask torch lazily are named in `LAZY_TORCH`.
- The engine never imports the app package (mpt_tui) or Textual; the app imports only the public
  faces of the torch-free layers (`engine.base`, `.experiment`, `.store`, `.results`, `.runner`),
  except the CLI's foreground commands named in `APP_EXCEPTIONS`.
- The app, and every engine module it uses, never imports torch or transformers: each is imported
  in a fresh interpreter and `sys.modules` is checked; so is planning a run (the dry run without a
  probe, the Launch screen's plan line).
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


# ---- the layers of engine/ ----------------------------------------------------------------

# Which engine packages each package may import (besides itself), bottom to top. "compute" is
# imported only inside functions (from execution and runner), so that those stay torch-free.
MAY_IMPORT = {
    "base": set(),
    "experiment": {"base"},
    "store": {"base", "experiment"},
    "results": {"base", "experiment", "store"},
    "compute": {"base", "experiment", "store"},
    "execution": {"base", "experiment", "store", "results", "compute"},
    "runner": {"base", "experiment", "store", "results", "compute", "execution"},
}
ONLY_INSIDE_FUNCTIONS = {"compute"}  # never at module level outside the compute layer itself
TOP_LEVEL = {"engine/__init__.py": set(), "engine/worker.py": {"runner"}}  # the old worker command, a shim
HEAVY_ROOTS = ("torch", "transformers", "higher")
# functions outside the compute layer that import torch when they run, and why
LAZY_TORCH = {
    ("engine/base/hardware.py", "visible_gpus"),  # a worker asks torch which GPUs it will run on
    ("engine/base/hardware.py", "resolve_precision"),  # ... and whether they have bf16
    ("engine/store/checkpoint.py", "save_checkpoint"),  # checkpoints are torch.save files of tensors
    ("engine/store/checkpoint.py", "load_checkpoint"),
}
PUBLIC_FACES = {"engine.base", "engine.experiment", "engine.store", "engine.results", "engine.runner"}
# (app module, engine module it may import besides the faces): the CLI's foreground commands run the
# worker's lifecycle (and so compute) in the CLI's own process, as `python -m engine.runner.lifecycle` would
APP_EXCEPTIONS = {
    ("mpt_tui/cli", "engine.runner.lifecycle"),  # `mpt-tui --preset X` in the foreground, `mpt-tui analyse`
    ("mpt_tui/cli", "engine.compute.models"),  # `mpt-tui models pull`: downloads and converts weights
    ("mpt_tui/cli", "engine.base.hardware"),
}


def _engine_files():
    return sorted(p for p in (REPO / "engine").rglob("*.py"))


def _all_imports(path):
    """(module imported, inside a function?, enclosing function name) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Import):
                found.extend((a.name, function is not None, function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                if child.module == "engine" or child.module.count(".") == 1 and child.module.startswith("engine."):
                    found.extend((f"{child.module}.{a.name}", function is not None, function) for a in child.names)
                else:
                    found.append((child.module, function is not None, function))
            visit(child, inner)

    visit(tree, None)
    return found


def _package(path) -> str:
    rel = path.relative_to(REPO / "engine")
    return rel.parts[0] if len(rel.parts) > 1 else ""


def test_every_engine_module_belongs_to_a_layer():
    loose = [str(p.relative_to(REPO)) for p in _engine_files()
             if _package(p) not in MAY_IMPORT and str(p.relative_to(REPO)) not in TOP_LEVEL
             and _package(p) != "presets"]
    assert loose == []


def test_engine_packages_import_only_the_layers_below_them():
    offenders = []
    for path in _engine_files():
        rel = str(path.relative_to(REPO))
        own = _package(path)
        allowed = TOP_LEVEL.get(rel, MAY_IMPORT.get(own, set()))
        for name, inside, _ in _all_imports(path):
            parts = name.split(".")
            if parts[0] != "engine" or len(parts) < 2 or parts[1] == own or parts[1] == "presets":
                continue
            target = parts[1]
            if target not in allowed:
                offenders.append(f"{rel} imports {name} ({own or 'top'} may import {sorted(allowed)})")
            elif target in ONLY_INSIDE_FUNCTIONS and not inside:
                offenders.append(f"{rel} imports {name} at module level (only inside functions)")
    assert offenders == []


def test_only_the_compute_layer_imports_torch():
    offenders = []
    for path in _engine_files():
        rel = str(path.relative_to(REPO))
        if _package(path) == "compute":
            continue
        for name, inside, function in _all_imports(path):
            if name.split(".")[0] in HEAVY_ROOTS and (not inside or (rel, function) not in LAZY_TORCH):
                offenders.append(f"{rel}:{function or 'module level'} imports {name}")
    assert offenders == []


def test_the_engine_has_no_import_cycle():
    """Module-level imports between engine modules (a lazy import inside a function is not a cycle at
    import time, but the layer test above forbids the upward ones anyway)."""
    graph = {}
    for path in _engine_files():
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        graph[module] = set()
        for name, inside, _ in _all_imports(path):
            if inside or not name.startswith("engine."):
                continue
            while name and name not in {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                                        for p in _engine_files()}:
                name = name.rpartition(".")[0]
            if name and name != module:
                graph[module].add(name)
    # a package's face imports its own modules, which Python loads as the package's children: not a cycle
    edges = {m: {n for n in targets if not m.startswith(n + ".")} for m, targets in graph.items()}
    seen, stack, on_stack, cycles = {}, [], set(), []

    def visit(node):
        seen[node] = True
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt in on_stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        on_stack.discard(node)

    for node in sorted(edges):
        if node not in seen:
            visit(node)
    assert cycles == []


def test_the_app_imports_only_the_public_faces_of_torch_free_layers():
    offenders = []
    for path in sorted((REPO / "mpt_tui").rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("").as_posix()
        for name, _, _ in _all_imports(path):
            if not name.startswith("engine"):
                continue
            module = name if name in PUBLIC_FACES else name.rpartition(".")[0]
            if module in PUBLIC_FACES:
                continue
            if any(rel.startswith(prefix) and name.startswith(allowed) for prefix, allowed in APP_EXCEPTIONS):
                continue
            offenders.append(f"{rel} imports {name}")
    assert offenders == []


def test_planning_a_run_without_a_probe_imports_no_torch(tmp_path):
    """The dry run without the probe (the CLI's --dry-run --no-probe, the Launch screen's plan line)."""
    code = (f"from engine.runner import check_preset, dry_run\n"
            f"prepared = check_preset('demo', runs_root={str(tmp_path)!r})\n"
            f"result = dry_run(prepared.preset, prepared.plan, __import__('pathlib').Path({str(tmp_path)!r}), "
            f"probe=False)\n"
            f"assert result.cells > 0, result")
    assert _loaded_after(code) == []


def test_the_app_imports_torch_nowhere_not_even_lazily():
    offenders = {}
    for path in sorted((REPO / "mpt_tui").rglob("*.py")):
        if "cli" in path.relative_to(REPO).parts or path.name == "cli.py":
            continue  # the CLI's foreground run and models commands load torch on purpose, lazily
        bad = {n for n in _imports(path) if n.split(".")[0] in HEAVY}
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert offenders == {}
