"""The Textual app, driven with key presses against a store filled by real tiny-model runs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, require_shared_data, small_run
from engine.runs import list_runs, read_json
from engine.store import RunIndex
from engine.worker import execute
from mpt_tui.app import MptApp
from mpt_tui.screens.results import ResultsScreen, comparison, score_text
from mpt_tui.screens.runs import RunsScreen

TARGETS = ["poem_sentiment", "tweet_eval-stance_atheism"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_llama):
    """A runs root with two finished runs, as the worker leaves them."""
    tmp = tmp_path_factory.mktemp("app-store")
    root = tmp / "runs"
    for _ in range(2):
        execute(small_run(root, tiny_llama, name="app-test", downstream="steps = 4\neval_every = 2",
                          upstream='methods = ["mtl"]\nsteps = 3'))
    return root


def _cell_texts(table, row_key) -> list[str]:
    return [str(table.get_cell(row_key, col.key)) for col in table.columns.values()]


async def test_runs_screen_lists_every_run_with_its_state(store):
    app = MptApp(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)
        table = app.screen.query_one("#runs-table")
        assert table.row_count == 2
        for run in list_runs(store):
            row = _cell_texts(table, run.id)
            assert row[0] == run.id and row[2] == "finished" and "100.0%" in row[4]


async def test_results_table_numbers_equal_the_index(store):
    app = MptApp(store)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ResultsScreen)
        summaries = [s for s in RunIndex(store).all() if s["run_id"] in screen.selected_ids]
        assert len(summaries) == 1  # the newest run is selected by default
        table = screen.query_one("#comparison")
        columns, rows = comparison(summaries)
        assert [m for _, m in columns] == ["pt", "mtl"]
        for task in TARGETS:
            shown = _cell_texts(table, task)
            assert shown[1:] == [score_text(summaries[0]["tasks"][m][task]) for _, m in columns]
        # selecting the other run too adds its columns
        await pilot.press("space")
        await pilot.pause()
        assert len(screen.selected_ids) in (0, 2)


async def test_csv_export_from_the_app(store):
    app = MptApp(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await pilot.pause()
        await pilot.press("x")
        await pilot.pause()
        splits, tasks = app.screen.last_export
        rows = list(csv.DictReader(splits.open()))
        chosen = [s for s in RunIndex(store).all() if s["run_id"] in app.screen.selected_ids]
        assert len(rows) == sum(len(s["splits"]) for s in chosen) == 2 * 2 * 2  # methods x tasks x seeds
        assert {r["task"] for r in rows} == set(TARGETS)
        table = list(csv.DictReader(tasks.open()))
        assert any(r["task"] == "MEAN" for r in table)


async def test_invalid_form_is_refused_with_the_reason(tmp_path, tiny_llama):
    root = tmp_path / "runs"
    root.mkdir()
    app = MptApp(root, data_dir=str(require_shared_data()))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        await pilot.pause()
        app.screen.query_one("#steps").value = "many"
        await pilot.press("ctrl+s")
        await pilot.pause()
        error = str(app.screen.query_one("#form-error").render())
        assert "downstream.steps" in error
        assert not list_runs(root)


async def test_launch_watch_cancel_and_resume_from_the_app(tmp_path, tiny_llama):
    root = tmp_path / "runs"
    root.mkdir()
    app = MptApp(root, data_dir=str(require_shared_data()), refresh_hz=10)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#model").value = str(tiny_llama)
        screen.query_one("#setting").value = ""
        screen.query_one("#sources").value = "glue-sst2, trec"
        screen.query_one("#targets").value = ", ".join(TARGETS)
        screen.query_one("#seeds").value = "13, 42"
        screen.query_one("#length").value = "4"
        screen.query_one("#steps").value = "300"
        screen.query_one("#up_steps").value = "3"
        screen.query_one("#methods").deselect_all()
        await pilot.press("ctrl+s")
        await pilot.pause()
        (run,) = list_runs(root)
        assert isinstance(app.screen, RunsScreen)

        async def wait_for(predicate, what, timeout=180):
            end = time.time() + timeout
            while time.time() < end:
                await pilot.pause(0.2)
                if predicate():
                    return
            raise AssertionError(f"timed out waiting for {what}")

        table = app.screen.query_one("#runs-table")
        await wait_for(lambda: (run.status().get("progress") or 0) > 0.05, "progress")
        await wait_for(lambda: _cell_texts(table, run.id)[2] == "running", "the table to show it running")
        shown = float(_cell_texts(table, run.id)[4].strip("% "))
        await wait_for(lambda: float(_cell_texts(table, run.id)[4].strip("% ")) > shown, "progress to change")
        await pilot.press("c")
        await wait_for(lambda: run.status()["state"] == "cancelled", "cancelled")
        await wait_for(lambda: _cell_texts(table, run.id)[2] == "cancelled", "the table to show it cancelled")
        await pilot.press("u")
        await wait_for(lambda: run.status()["state"] in ("queued", "running"), "resumed")
        await pilot.press("c")  # stop it again so the test leaves nothing running
        await wait_for(lambda: run.status()["state"] == "cancelled", "cancelled again")


async def test_a_damaged_run_directory_still_opens(store, tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    good = list_runs(store)[0]
    import shutil

    shutil.copytree(good.path, root / good.id)
    broken = root / "20990101-000000-broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "status.json").write_text('{"state": "runn')  # killed mid-write
    (broken / "metrics.jsonl").write_text('{"stage": "downstream", "step": 1, "loss": 1.0}\n{"stage": ')
    app = MptApp(root)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        table = app.screen.query_one("#runs-table")
        assert _cell_texts(table, broken.name)[2] == "damaged"
        assert _cell_texts(table, good.id)[2] == "finished"
    assert read_json(good.path / "status.json")["state"] == "finished"


def test_the_app_never_imports_torch():
    code = ("import sys, time; t = time.time(); import mpt_tui.app, mpt_tui.cli; "
            "print(time.time() - t); assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ}, timeout=120)
    assert proc.returncode == 0, proc.stderr


async def test_launch_form_builds_task_lists_with_type_to_filter(tmp_path):
    data = require_shared_data()
    root = tmp_path / "runs"
    root.mkdir()
    app = MptApp(root, data_dir=str(data))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#targets").value = ""
        screen.query_one("#task-filter").value = "tweet_eval-stance"
        await pilot.pause()
        listing = screen.query_one("#task-list")
        shown = [listing.get_option_at_index(i).value for i in range(listing.option_count)]
        assert shown and all("tweet_eval-stance" in t for t in shown)
        listing.toggle(shown[0])
        await pilot.pause()
        assert screen.query_one("#targets").value == shown[0]
        listing.toggle(shown[1])
        await pilot.pause()
        assert screen.query_one("#targets").value == f"{shown[0]}, {shown[1]}"
