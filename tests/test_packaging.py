"""Packaging (pyproject.toml): the wheel ships the presets, the demo data, the engine and the app."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO


def test_pip_install_ships_the_presets(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("mpt_tui-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "engine/presets/demo.toml" in names
    assert "engine/presets/class_to_class.toml" in names
    assert "engine/presets/demo-data/config/demo.json" in names
    assert "engine/presets/paper-settings/class_to_class.json" in names
    assert any(n.startswith("engine/presets/demo-data/tasks/demo-emotion/") for n in names)
    assert "engine/runner/lifecycle.py" in names and "mpt_tui/cli/__init__.py" in names
    assert "mpt_tui/app.tcss" in names and "mpt_tui/screens/runs.py" in names
    # every module of the source tree is in the wheel (a new package missing from pyproject.toml fails here)
    sources = {p.relative_to(REPO).as_posix() for top in ("engine", "mpt_tui") for p in (REPO / top).rglob("*.py")
               if "presets" not in p.relative_to(REPO).parts}
    assert sources - names == set()
    assert "engine/presets/reference/qin2023.json" in names
    # and it runs from the wheel alone: the worker command, the old one, the app's import path
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = ("import engine.runner.lifecycle, engine.worker, engine.experiment, engine.store, engine.results, "
            "engine.runner, engine.execution.stages, mpt_tui.app, mpt_tui.cli; "
            "from engine.experiment import list_builtin_presets; assert 'demo' in list_builtin_presets(); "
            f"assert engine.__file__.startswith({str(unpacked)!r}), engine.__file__")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(unpacked)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
