"""A scripted terminal session: mpt-tui in tmux, launch a tiny run from the task pickers by keys only, kill the app,
find the run still going, and watch it finish."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid

import pytest

from engine.store.run_dir import list_runs

from conftest import DEMO_DATA, REPO

pytestmark = [pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
              pytest.mark.serial]  # a real terminal, waited on by the wall clock


class Tmux:
    def __init__(self, command: str, cols: int = 120, rows: int = 40):
        self.name = f"mpt-{uuid.uuid4().hex[:8]}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", str(cols), "-y", str(rows), command],
                       check=True, cwd=REPO)
        # a detached session may keep tmux's default size: set the window's explicitly
        subprocess.run(["tmux", "resize-window", "-t", self.name, "-x", str(cols), "-y", str(rows)], capture_output=True)

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


def _field(app: Tmux, label: str, value: str) -> None:
    """Tab to the next form field (`label`) and replace its text; wait until the screen shows it."""
    app.keys("Tab")
    app.keys("End")
    app.keys("C-u")
    app.keys(value, literal=True)
    end = time.time() + 20
    while f"{label} {value}" not in " ".join(app.screen().split()):
        assert time.time() < end, app.screen()
        time.sleep(0.2)


def _wait_plan(app: Tmux, text: str) -> None:
    """Until the plan line (however the terminal wraps it) contains `text`."""
    end = time.time() + 30
    while text not in " ".join(app.screen().split()):
        assert time.time() < end, app.screen()
        time.sleep(0.3)


def test_a_run_launched_from_the_pickers_outlives_the_app_and_finishes(tmp_path, tiny_llama):
    data = DEMO_DATA
    runs = tmp_path / "runs"
    app = _app(runs, data)
    try:
        app.wait_for("Plot view")
        app.keys("3")
        app.wait_for("sources: 4 chosen")  # the demo setting's tasks, read from the data directory
        time.sleep(0.5)
        # the focus starts in the sources list: clear it (ctrl+l), then its last task, demo-spam
        app.keys("C-l")
        app.wait_for("sources: 0 chosen")
        app.keys("End", "Space")
        app.wait_for("sources: 1 chosen")
        app.keys("Tab", "Tab", "Tab", "Enter")  # the targets' "clear" button
        app.wait_for("targets: 0 chosen")
        app.keys("Tab", "Home", "Down", "Space")  # the targets list: its second task, demo-formality
        app.wait_for("targets: 1 chosen")
        app.keys("Tab", "Tab", "Space", "Tab", "Space", "Tab", "Space")  # keep MTL; uncheck MAML, FoMAML, Reptile
        _wait_plan(app, "2 methods")
        app.keys("Tab", "Tab", "Space", "Tab")  # splits: keep 1, uncheck 2, leave 3
        _wait_plan(app, "1 splits")
        for label, value in (("model", str(tiny_llama)), ("device", "cpu"), ("setting", "demo"),
                             ("prompt length", "4"), ("learning rates", "0.3"), ("downstream steps", "300"),
                             ("upstream updates", "2")):
            _field(app, label, value)
        _wait_plan(app, "plan: 1 sources · 1 targets · 1 splits · 2 methods · 2 upstream steps x 1 · 2 grid cells")
        app.keys("C-s")
        app.wait_for("started", timeout=30)
        (run,) = list_runs(runs)
        plan = run.config()["plan"]
        assert (plan["sources"], plan["targets"], plan["seeds"], plan["methods"]) == (
            ["demo-spam"], ["demo-formality"], [1], ["pt", "mtl"])
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
        app.wait_for("finished", timeout=30)  # the runs table
        app.wait_for("done", timeout=30)  # and the cell list: the finished cells
    finally:
        app.kill()
