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
