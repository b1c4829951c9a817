"""A scripted terminal session: mpt-tui in tmux, launch a tiny run, kill the app, find the run still going."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid

import pytest

from conftest import DEMO_DATA, REPO, SMALL_SEEDS, SMALL_SOURCES, SMALL_TARGETS
from engine.runs import list_runs

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    def __init__(self, command: str, cols: int = 120, rows: int = 40):
        self.name = f"mpt-{uuid.uuid4().hex[:8]}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", str(cols), "-y", str(rows), command],
                       check=True, cwd=REPO)

    def keys(self, *keys: str, literal: bool = False) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *(["-l"] if literal else []), *keys], check=True)
        time.sleep(0.15)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-t", self.name, "-p"], capture_output=True,
                              text=True).stdout

    def wait_for(self, text: str, timeout: float = 60) -> str:
        end = time.time() + timeout
        while time.time() < end:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{text!r} never appeared; screen:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def _app(runs, data) -> Tmux:
    return Tmux(f"{sys.executable} -m mpt_tui.cli --runs-dir {runs} --data-dir {data}")


def test_a_run_launched_from_the_app_outlives_the_app(tmp_path, tiny_llama):
    data = DEMO_DATA
    runs = tmp_path / "runs"
    app = _app(runs, data)
    try:
        app.wait_for("Runs")
        app.keys("3")
        app.wait_for("data directory")
        time.sleep(1.0)
        app.keys("Tab")  # focus the preset select; then tab through the form, replacing each field
        values = [str(data), str(tiny_llama), "cpu", "", ", ".join(SMALL_SOURCES), SMALL_TARGETS[0], str(SMALL_SEEDS[0]), "4",
                  "0.3", "600", "2"]
        for value in values:
            app.keys("Tab")
            app.keys("End")
            app.keys("C-u")
            if value:
                app.keys(value, literal=True)
        app.keys("C-s")
        app.wait_for("started", timeout=30)
        (run,) = list_runs(runs)
        end = time.time() + 120
        while time.time() < end and not (run.status().get("progress") or 0) > 0.05:
            time.sleep(0.3)
        assert run.status()["state"] == "running"
        app.kill()  # the app dies (a lost SSH connection); the run must not
        time.sleep(1.0)
        progress = run.status()["progress"]
        app = _app(runs, data)
        screen = app.wait_for(run.id)
        assert "running" in screen or "finished" in screen
        end = time.time() + 240
        while time.time() < end and run.status()["state"] == "running":
            time.sleep(0.5)
        assert run.status()["state"] == "finished"
        assert run.status()["progress"] > progress
        app.wait_for("finished", timeout=30)
    finally:
        app.kill()
