"""The Textual app, driven with key presses against a store filled by real tiny-model runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

import pytest

from engine.experiment.config import DATA_DIR_ENV
from engine.experiment.plan import select_and_aggregate
from engine.results.report import build_report, delta_text, p_text, paired_line, score_text
from engine.store.run_dir import Run, list_runs, read_json, write_json_atomic
from engine.store.index import RunIndex
from engine.runner.lifecycle import execute
from mpt_tui.app import MptApp
from mpt_tui.screens.help import HelpScreen, key_text
from mpt_tui.screens.launch import LaunchScreen
from mpt_tui.screens.results import ResultsScreen, SplitDetail
from mpt_tui.screens.runs import RunsScreen

from conftest import DEMO_DATA, REPO, SMALL_SEEDS, SMALL_SOURCES, SMALL_TARGETS, small_run

TARGETS = SMALL_TARGETS


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


async def settle(pilot) -> None:
    """Let the app's workers (run directories, index, data directory) deliver what they read."""
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def within(pilot, seconds: float, predicate, what: str) -> float:
    """Wait (without blocking the app) until `predicate()`; returns how long it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"{what}: not within {seconds} s")
        await pilot.pause(0.02)
    return time.monotonic() - start


async def test_runs_screen_lists_every_run_with_its_state(store):
    app = MptApp(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
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
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ResultsScreen)
        index = RunIndex(store).all()
        older, newer = (s["run_id"] for s in index)
        assert screen.selected_ids == [newer]  # the newest run is selected by default
        table = screen.query_one("#comparison")
        report = build_report([s for s in index if s["run_id"] == newer])
        assert [c.method for c in report.columns] == ["pt", "mtl"]
        assert len(table.columns) == 1 + 2
        for task in TARGETS:
            shown = _cell_texts(table, task)
            best = report.best_column(task)
            assert shown[1:] == [score_text(report.score(task, c)) + (" ▲" if c == best else "") for c in report.columns]
        # the paired comparison with PT over all targets, split by split
        assert _cell_texts(table, "__delta__")[1:] == [delta_text(report.paired(c)) for c in report.columns]
        assert _cell_texts(table, "__p__")[1:] == ["-", p_text(report.paired(report.columns[1]))]
        # space on the first row (the older run) adds that run's columns to the table
        assert screen.query_one("#finished-runs").cursor_row == 0
        await pilot.press("space")
        await pilot.pause()
        assert screen.selected_ids == [newer, older]
        assert [c.run_id for c in screen.report.columns] == [older, older, newer, newer]
        assert len(table.columns) == 1 + 4
        assert _cell_texts(screen.query_one("#finished-runs"), older)[0] == "✓"
        # and space again removes it
        await pilot.press("space")
        await pilot.pause()
        assert screen.selected_ids == [newer]
        assert len(table.columns) == 1 + 2


async def test_csv_export_from_the_app(store):
    app = MptApp(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await settle(pilot)
        await pilot.press("x")
        await pilot.pause()
        screen = app.screen
        splits, tasks = screen.last_export
        rows = list(csv.DictReader(splits.open()))
        chosen = [s for s in RunIndex(store).all() if s["run_id"] in app.screen.selected_ids]
        assert len(rows) == sum(len(s["splits"]) for s in chosen) == 2 * 2 * 2  # methods x tasks x seeds
        assert {r["task"] for r in rows} == set(TARGETS)
        table = list(csv.DictReader(tasks.open()))
        assert any(r["task"] == "MEAN" for r in table)
        mtl_mean = [r for r in table if (r["method"], r["task"]) == ("mtl", "MEAN")]
        assert [r["n_pairs"] for r in mtl_mean] == ["4"]  # 2 tasks x 2 seeds
        # f cycles the format (the footer names the one x writes): JSON, then Markdown
        await pilot.press("f", "f")
        assert screen.export_format == "markdown"
        assert [b.binding.description for b in app.active_bindings.values() if b.binding.key == "x"] == ["Export MD"]
        await pilot.press("x")
        await pilot.pause()
        splits, tasks = screen.last_export
        assert (splits.suffix, tasks.suffix) == (".md", ".md")
        rows = [line for line in tasks.read_text().splitlines() if line.startswith("| ")]
        assert rows[0] == "| target task | metric | PT | MTL |" and any(r.startswith("| Δ vs PT") for r in rows)


async def test_per_split_dialog_shows_each_methods_paired_comparison(store):
    app = MptApp(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await settle(pilot)
        results = app.screen
        results.query_one("#comparison").focus()
        await pilot.press("enter")  # the first task
        await pilot.pause()
        assert isinstance(app.screen, SplitDetail) and app.screen.task_name == TARGETS[0]
        report = build_report(results.chosen)
        mtl = next(c for c in report.columns if c.method == "mtl")
        text = str(app.screen.query_one("#split-paired").render())
        assert text == f"MTL: {paired_line(report.paired(mtl, TARGETS[0]))}" and "(n=2)" in text
        assert app.screen.query_one("#split-table").row_count == 2 * 2  # methods x seeds
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is results


async def test_invalid_form_is_refused_with_the_reason(tmp_path, tiny_llama):
    root = tmp_path / "runs"
    root.mkdir()
    app = MptApp(root, data_dir=str(DEMO_DATA))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        await pilot.pause()
        app.screen.query_one("#steps").value = "many"
        await pilot.press("ctrl+s")
        await settle(pilot)
        error = str(app.screen.query_one("#form-error").render())
        assert "downstream.steps" in error
        assert not list_runs(root)


async def test_launch_watch_cancel_and_resume_from_the_app(tmp_path, tiny_llama):
    root = tmp_path / "runs"
    root.mkdir()
    app = MptApp(root, data_dir=str(DEMO_DATA), refresh_hz=10)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        await pilot.pause()
        screen = app.screen
        await settle(pilot)
        screen.query_one("#model").value = str(tiny_llama)
        screen.query_one("#setting").value = ""
        screen.set_tasks("sources", SMALL_SOURCES)
        screen.set_tasks("targets", TARGETS)
        await settle(pilot)
        for box in screen.query(".seed"):
            box.value = int(box.name.removeprefix("seed-")) in SMALL_SEEDS
        screen.query_one("#length").value = "4"
        screen.query_one("#steps").value = "300"
        screen.query_one("#up_steps").value = "3"
        for box in screen.query("#methods Checkbox"):
            box.value = False
        await settle(pilot)
        await pilot.press("ctrl+s")
        await settle(pilot)
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
        # "running": its worker is up and handles SIGTERM (a worker still starting would just die, read as crashed)
        await wait_for(lambda: run.status()["state"] == "running", "resumed")
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
        await settle(pilot)
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


async def test_launch_pickers_show_each_tasks_type_splits_and_test_file_and_drive_the_plan_line(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    app = MptApp(root, data_dir=str(DEMO_DATA))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        await settle(pilot)
        screen = app.screen
        plan = screen.query_one("#plan-line")
        # the demo preset: its setting's 4 sources and 3 targets, 2 splits, PT + 4 methods
        await within(pilot, 10, lambda: "30 grid cells" in str(plan.render()), "the preset's plan")
        assert "4 sources · 3 targets · 2 splits · 5 methods" in str(plan.render())
        screen.query_one("#task-filter").value = "sentiment"
        await pilot.pause()
        targets = screen.query_one("#targets-list")
        shown = [targets.get_option_at_index(i) for i in range(targets.option_count)]
        assert [o.value for o in shown] == ["demo-movie_sentiment", "demo-product_sentiment"]
        line = str(shown[0].prompt)
        assert "class" in line and " 3 " in line and "test" in line  # type, 3 splits, a test file
        # "clear", then pick one target by toggling it: the plan line follows (PT + 4 methods x 1 x 2 splits)
        await pilot.click("#targets-clear")
        await pilot.pause()
        assert screen.chosen["targets"] == [] and "no target task chosen" in str(screen.query_one("#form-issues").render())
        targets.toggle("demo-product_sentiment")
        await pilot.pause()
        assert screen.chosen["targets"] == ["demo-product_sentiment"]
        assert str(targets.get_option("demo-product_sentiment").prompt).rstrip().endswith("✓")  # readable without colour
        await within(pilot, 10, lambda: "10 grid cells" in str(plan.render()), "the plan of one target")
        assert "4 sources · 1 targets · 2 splits" in str(plan.render())
        # a target that is also a source is flagged at once, before any start
        screen.query_one("#sources-list").toggle("demo-product_sentiment")
        await pilot.pause()
        assert "both source and target: demo-product_sentiment" in str(screen.query_one("#form-issues").render())
        # unchecking an algorithm and a split changes the plan
        screen.query_one("#method-maml").value = False
        next(b for b in screen.query(".seed") if b.name == "seed-2").value = False
        await within(pilot, 10, lambda: "1 splits · 4 methods" in str(plan.render()), "fewer methods and splits")
        assert "4 grid cells" in str(plan.render())
        # "all classification" for the targets: every demo task has a test file, none of the sources is taken
        await pilot.click("#targets-class")
        await pilot.pause()
        assert screen.chosen["targets"] == ["demo-emotion", "demo-formality"]  # product_sentiment is a source now
        # "setting's tasks" puts both lists back
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert screen.chosen["targets"] == ["demo-product_sentiment", "demo-emotion", "demo-formality"]
        assert not any(o.startswith(("data.targets", "data.sources")) for o in screen.overrides())  # the setting's own


# ---- hand-written finished runs (no training): fixed scores ---------------------------------

def _write_finished_run(root, run_id: str, scores: dict[str, dict[str, float]]) -> None:
    """A finished run whose test score of `method` on `task` is scores[method][task] on every split."""
    run = Run(root / run_id)
    run.path.mkdir(parents=True)
    targets = sorted({t for by_task in scores.values() for t in by_task})
    write_json_atomic(run.config_path, {
        "preset": {"name": run_id[-6:], "model": {"name": "tiny"}, "prompt": {"length": 4}, "downstream": {}},
        "plan": {"setting": "", "targets": targets, "seeds": [13, 42], "methods": list(scores)}})
    cells = [{"method": method, "task": task, "seed": seed, "lr": 0.3, "metric": "ACC", "dev": value,
              "test": value, "best_step": 5}
             for method, by_task in scores.items() for task, value in by_task.items() for seed in (13, 42)]
    write_json_atomic(run.results_path, select_and_aggregate(cells))
    write_json_atomic(run.status_path, {"state": "finished", "run_id": run_id, "created": 1.0, "started": 1.0,
                                        "finished": 2.0, "progress": 1.0, "stage": "done"})


@pytest.mark.serial  # answers within 2 s
async def test_the_app_keeps_responding_while_another_process_holds_the_index_lock(tmp_path):
    root = tmp_path / "runs"
    _write_finished_run(root, "20260101-000000-a", {"pt": {"t1": 0.5}, "mtl": {"t1": 0.6}})
    RunIndex(root).rebuild()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import filelock, sys, time; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
                               "print('locked', flush=True); time.sleep(300)", str(root / "index.json.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        app = MptApp(root)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            await pilot.press("2")  # Results reads the index: in a worker, which now waits for the lock
            await within(pilot, 2, lambda: isinstance(app.screen, ResultsScreen), "Results shown")
            results = app.screen
            label = results.query_one("#runs-label")
            await within(pilot, 3, lambda: "waiting for the run index" in str(label.render()), "the wait shown")
            for _ in range(2):
                await pilot.press("1")
                await within(pilot, 2, lambda: isinstance(app.screen, RunsScreen), "switch to Runs")
                await pilot.press("2")
                await within(pilot, 2, lambda: app.screen is results, "switch back to Results")
            await pilot.press("question_mark")
            await within(pilot, 2, lambda: isinstance(app.screen, HelpScreen), "help opened")
            await pilot.press("escape")
            await within(pilot, 2, lambda: app.screen is results, "help closed")
            await pilot.press("3")
            await within(pilot, 2, lambda: isinstance(app.screen, LaunchScreen), "switch to Launch")
            await pilot.press("2")
            await within(pilot, 2, lambda: app.screen is results, "switch back to Results")
            assert holder.poll() is None and not results.loaded  # all the while the lock was held
            holder.kill()  # the lock is released with its process
            holder.wait()
            await within(pilot, 10, lambda: results.loaded, "the index read once the lock is free")
            await pilot.pause()
            assert results.selected_ids == ["20260101-000000-a"]
            assert _cell_texts(results.query_one("#comparison"), "t1")[1:] == ["50.0 ± 0.0", "60.0 ± 0.0 ▲"]
    finally:
        holder.kill()
        holder.wait()


async def test_each_runs_gain_is_over_its_own_pt(tmp_path):
    root = tmp_path / "runs"
    # run a: PT 40, MTL 50 (+25%); run b, on other targets: PT 20, MTL 30 (+50%; over a's PT it would be -25%)
    _write_finished_run(root, "20260101-000000-a", {"pt": {"t1": 0.3, "t2": 0.5}, "mtl": {"t1": 0.4, "t2": 0.6}})
    _write_finished_run(root, "20260102-000000-b", {"pt": {"t1": 0.1, "t3": 0.3}, "mtl": {"t1": 0.2, "t3": 0.4}})
    RunIndex(root).rebuild()
    app = MptApp(root)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await settle(pilot)
        screen = app.screen
        assert screen.selected_ids == ["20260102-000000-b"]
        await pilot.press("space")  # the cursor is on the first row: run a
        await pilot.pause()
        assert screen.selected_ids == ["20260102-000000-b", "20260101-000000-a"]
        table = screen.query_one("#comparison")
        assert [str(c.label) for c in table.columns.values()] == [
            "target task", "PT (101-000000-a)", "MTL (101-000000-a)", "PT (102-000000-b)", "MTL (102-000000-b)"]
        assert _cell_texts(table, "__mean__")[1:] == ["40.0", "50.0", "20.0", "30.0"]
        assert _cell_texts(table, "__gain__") == ["gain over PT", "+0.0%", "+25.0%", "+0.0%", "+50.0%"]
        assert _cell_texts(table, "t2")[1:] == ["50.0 ± 0.0", "60.0 ± 0.0 ▲", "-", "-"]
        notes = screen.query_one("#report-notes")
        assert notes.display and "different target tasks" in str(notes.render())
        # the best column of each task is bold
        best = table.get_cell("t1", "20260101-000000-a/mtl")
        assert "bold" in str(best.style) and "bold" not in str(table.get_cell("t1", "20260101-000000-a/pt").style)


async def test_launch_form_keeps_a_presets_nearest_sources(tmp_path):
    """A preset whose sources are "nearest:K" (picked per target from a stored matrix) fills the pickers with the
    setting's sources and starts with no data.sources override, so the preset's own choice stands."""
    preset = tmp_path / "near.toml"
    preset.write_text((REPO / "presets" / "demo.toml").read_text().replace(
        'setting = "demo"', 'setting = "demo"\nsources = "nearest:2"\nsimilarity = "some-run"'))
    root = tmp_path / "runs"
    root.mkdir()
    app = MptApp(root, data_dir=str(DEMO_DATA))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        await settle(pilot)
        screen = app.screen
        screen.fill_from_preset(str(preset))
        await within(pilot, 10, lambda: len(screen.chosen["sources"]) == 4, "the setting's sources in the picker")
        assert not any(o.startswith("data.sources") for o in screen.overrides())


async def test_launch_form_refuses_an_unknown_model_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)  # the demo preset's own data
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "runs"
    app = MptApp(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        await settle(pilot)
        app.screen.query_one("#model").value = "no-such-org/no-such-model"
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert isinstance(app.screen, LaunchScreen)  # still on the form
        error = str(app.screen.query_one("#form-error").render())
        assert "model.name" in error and "no-such-org/no-such-model" in error and "not found" in error
        assert "\n" not in error.strip()
    assert not root.exists() or not any(root.iterdir())


async def test_help_lists_every_binding_with_its_description(tmp_path):
    app = MptApp(tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        rows = help_screen.rows
        sections = {part.split("\n", 1)[0]: part for part in help_screen.query_one("Markdown").source.split("\n## ")}
        scopes = {"everywhere": MptApp.BINDINGS, **{mode.capitalize(): cls.BINDINGS for mode, cls in MptApp.MODES.items()},
                  **{where: cls.BINDINGS for where, cls in MptApp.DIALOGS.items()}}
        for where, bindings in scopes.items():
            for binding in bindings:
                keys = key_text(binding.key)
                assert (keys, where, binding.description, binding.tooltip) in rows, (where, binding)
                assert f"- `{keys}` **{binding.description}**" in sections[where], (where, binding)
        by_key = {(r[0], r[1]): r[2] for r in rows}
        assert by_key[("?", "everywhere")] == "Help"
        assert by_key[("ctrl+s", "Launch")] == "Start run"
        assert by_key[("space", "Results")] == "Select run"
        assert by_key[("esc / ? / q", "help")] == "Close"
        assert ("ctrl+p", "everywhere") in by_key  # Textual's own keys too


@pytest.mark.serial  # answers within 2 s
async def test_a_failing_worker_is_shown_in_the_app_which_keeps_running(tmp_path, monkeypatch):
    from mpt_tui.watch import RunWatcher

    def broken(self, detail=None):
        raise PermissionError("runs directory unreadable")

    monkeypatch.setattr(RunWatcher, "refresh", broken)
    app = MptApp(tmp_path / "runs", refresh_hz=20)
    async with app.run_test(size=(80, 24)) as pilot:
        # Not `settle`: waiting on the workers re-raises the failure they report (when Textual has
        # not yet dropped the failed worker), which is the app's business, not the test's.
        await within(pilot, 5, lambda: any("runs directory unreadable" in n.message for n in app._notifications),
                     "the failure is shown")
        await pilot.pause(0.3)  # several more ticks, each failing
        shown = [n for n in app._notifications if "runs directory unreadable" in n.message]
        assert len(shown) == 1 and shown[0].severity == "error" and "read-runs" in shown[0].title
        await pilot.press("2")
        await within(pilot, 2, lambda: isinstance(app.screen, ResultsScreen), "the app still answers keys")


async def test_launch_form_saves_a_checked_preset(tmp_path, monkeypatch):
    from engine.experiment.config import load_preset

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    target = tmp_path / "mine.toml"
    app = MptApp(tmp_path / "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        await settle(pilot)
        screen = app.screen
        screen.query_one("#steps").value = "many"
        screen.query_one("#save_path").value = str(target)
        await pilot.press("ctrl+w")
        await pilot.pause()
        assert "downstream.steps" in str(screen.query_one("#form-error").render()) and not target.exists()
        screen.query_one("#steps").value = "7"
        next(b for b in screen.query(".seed") if b.name == "seed-1").value = False
        await pilot.pause()
        await pilot.press("ctrl+w")
        await pilot.pause()
        assert str(screen.query_one("#form-error").render()) == ""
    preset, _ = load_preset(str(target))  # it runs from anywhere: the demo data's path was made absolute
    assert preset.name == "mine" and preset.downstream.steps == 7 and preset.data.seeds == [2]
    assert preset.upstream.methods == ["mtl", "maml", "fomaml", "reptile"]


async def test_the_command_palette_exports_each_format(store):
    """The palette's "Export results to ..." commands (it used to offer CSV only)."""
    from mpt_tui.app import ActionCommands

    titles = [title for title, _, _ in ActionCommands.COMMANDS if title.startswith("Export results to")]
    assert titles == ["Export results to CSV", "Export results to JSON", "Export results to Markdown",
                      "Export results to LaTeX"]
    app = MptApp(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.run_action("export_results('latex')")
        await settle(pilot)
        await pilot.pause()
        splits, tasks = app.screen.last_export
        assert (splits.suffix, tasks.suffix) == (".tex", ".tex")
        assert "\\begin{tabular}" in tasks.read_text() and "\\toprule" in tasks.read_text()


async def test_the_plan_line_estimates_time_with_the_dry_runs_function(store, tiny_llama):
    """With earlier runs of the model in the runs root, the plan line's time is `mpt-tui --dry-run --no-probe`'s."""
    app = MptApp(store, data_dir=str(DEMO_DATA))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        await settle(pilot)
        screen = app.screen
        screen.query_one("#model").value = str(tiny_llama)
        screen.query_one("#device").value = "cpu"
        for box in screen.query("#methods Checkbox"):  # PT only: the stored runs timed group passes, not meta-updates
            box.value = False
        screen.query_one("#lrs").value = "0.3, 0.1"  # 12 cells: groups of 8, as the stored runs' groups
        plan = screen.query_one("#plan-line")
        await within(pilot, 120, lambda: "time: ~" in str(plan.render()), "the estimate")
        name, overrides, data_dir = screen.preset_args()  # the CLI's JSON, from the command itself
        command = [sys.executable, "-m", "mpt_tui.cli", "--preset", name, "--dry-run", "--no-probe", "--json",
                   "--runs-dir", str(store), *[a for o in overrides for a in ("--set", o)],
                   *(["--data-dir", data_dir] if data_dir else [])]
        expected = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        assert LaunchScreen.dry_run_estimate(name, overrides, data_dir, store) == expected  # in-process, no torch
        from engine.runner.estimate import format_duration_estimate

        assert expected["estimate_from"].startswith("stored timings of 2 earlier run(s)")
        assert f"time: ~{format_duration_estimate(expected['estimate_s'])} ({expected['estimate_from']})" in \
            str(plan.render())
        assert f"no upstream · {expected['cells']} grid cells" in str(plan.render())


# ---- the per-cell event index, the Runs screen's cells and plots, Results' chart, Analysis ---------

def _live_run(root, run_id: str = "20260101-000000-live", cluster: dict | None = None) -> Run:
    """A running run (this process as its worker) with PT and MAML cells on two targets, one lr, two splits."""
    run = Run(root / run_id)
    run.path.mkdir(parents=True)
    write_json_atomic(run.config_path, {
        "preset": {"name": "live", "model": {"name": "tiny"}, "downstream": {"learning_rates": [0.3, 0.1]}},
        "plan": {"setting": "", "targets": ["t1", "t2"], "seeds": [1, 2], "methods": ["pt", "maml"]}})
    for step in range(1, 6):
        run.log_upstream_loss("maml", step, 2.0 / step)
    for method, dev in (("pt", 0.4), ("maml", 0.6)):
        cell = f"{method}__t1__s1__lr0.3"
        for step in range(1, 5):
            run.log_cell_loss(cell, step, 1.0 / step)
            run.log_cell_dev(cell, step, dev + 0.01 * step)
        run.log_cell_done(cell, dev + 0.04, dev)
    status = {"state": "running", "run_id": run_id, "pid": os.getpid(), "heartbeat": time.time(), "started": time.time(),
              "progress": 0.25, "stage": "downstream", "total_cells": 16}
    if cluster:
        status["cluster"] = cluster
    write_json_atomic(run.status_path, status)
    return run


def test_the_event_index_reads_incrementally_and_agrees_with_the_engines_readers(tmp_path):
    from engine.store.run_dir import cell_curves, finished_cells, last_cell, upstream_curves
    from mpt_tui.events_index import EventIndex

    run = _live_run(tmp_path)
    index = EventIndex(run.metrics_path)
    assert index.read() == len(run.events())
    with run.metrics_path.open("ab") as f:  # a writer mid-line: the torn line waits for its end
        f.write(b'{"stage": "downstream", "cell": "pt__t2__s1__lr0.3", "step": 1, "lo')
    assert index.read() == 0 and "pt__t2__s1__lr0.3" not in index.cells
    with run.metrics_path.open("ab") as f:
        f.write(b'ss": 0.9}\n')
    run.log_cell_loss("pt__t1__s1__lr0.3", 2, 0.25)  # a step logged again (a resume): the later event wins
    assert index.read() == 2
    events = run.events()
    for cell in {e["cell"] for e in events if e.get("cell")}:
        assert index.cell_curves(cell) == cell_curves(events, cell)
    assert index.upstream_curves() == upstream_curves(events)
    assert index.last_cell == last_cell(events) and index.finished == finished_cells(events)
    # the file replaced by a shorter one: read again from the start
    run.metrics_path.write_text('{"stage": "upstream", "method": "mtl", "step": 1, "loss": 1.0}\n')
    assert index.read() == 1 and index.restarts == 1
    assert index.upstream_curves() == {"mtl": ([1], [1.0])} and not index.cells


@pytest.mark.serial  # answers within 2 s
async def test_choosing_a_cell_plots_its_curves_and_compare_and_upstream_views(tmp_path):
    from mpt_tui.widgets import CellList, RunDetail

    root = tmp_path / "runs"
    cluster = {"backend": "ray", "address": "10.0.0.1:6379", "gpus_total": 2.0, "gpus_in_use": 1.0,
               "workers": [{"id": "w0", "node": "gpu-node-1", "device": "cuda:0", "pid": 4242,
                            "unit": "group 3/12 (8 cells)"}]}
    run = _live_run(root, cluster=cluster)
    app = MptApp(root, refresh_hz=10)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        cells, detail = screen.query_one(CellList), screen.query_one(RunDetail)
        await within(pilot, 5, lambda: cells.row_count() == 16, "the grid's 16 cells listed")
        table = cells.table
        assert _cell_texts(table, "maml__t1__s1__lr0.3") == ["MAML", "t1", "1", "0.3", "done", "64.0", "60.0"]
        assert _cell_texts(table, "pt__t2__s2__lr0.1")[4] == "pending"
        # no cell chosen: the last one that logged is plotted
        assert detail.plot_title.startswith("maml__t1__s1__lr0.3")
        # choose PT's cell (arrows onto it, or enter): its train loss and dev score are plotted
        table.focus()
        await pilot.press("down", "up")
        assert cells.highlighted == "pt__t1__s1__lr0.3"
        await within(pilot, 2, lambda: detail.plot_title.startswith("pt__t1__s1__lr0.3"), "the chosen cell plotted")
        events = run.events()
        from engine.store.run_dir import cell_curves

        loss, dev = cell_curves(events, "pt__t1__s1__lr0.3")
        assert detail.plotted == {"train loss": loss, "dev score": dev}
        # v: the methods compared on t1, split 1 (each at the lr it selects); v again: the upstream losses
        await pilot.press("v")
        await pilot.pause()
        assert detail.plot_title == "t1 split 1: dev per method"
        assert set(detail.plotted) == {"PT lr 0.3", "MAML lr 0.3"}
        assert detail.plotted["MAML lr 0.3"] == cell_curves(events, "maml__t1__s1__lr0.3")[1]
        await pilot.press("v")
        await pilot.pause()
        assert detail.plot_title.startswith("upstream") and detail.plotted == {"MAML": ([1, 2, 3, 4, 5],
                                                                                        [2.0, 1.0, 2 / 3, 0.5, 0.4])}
        # the Ray workers of the run
        scores = str(screen.query_one("#run-scores").render())
        assert "ray" in scores and "10.0.0.1:6379" in scores and "GPUs 1.0/2.0" in scores
        assert "w0 gpu-node-1 cuda:0 pid 4242: group 3/12 (8 cells)" in scores
        # the filter: only the done cells
        screen.query_one("#cell-filter").value = "done"
        await pilot.pause()
        assert sorted(k.value for k in table.rows) == ["maml__t1__s1__lr0.3", "pt__t1__s1__lr0.3"]
        # live: a cell that starts logging shows up as training at the next refresh
        screen.query_one("#cell-filter").value = ""
        run.log_cell_loss("pt__t2__s1__lr0.3", 1, 0.7)
        await within(pilot, 3, lambda: "pt__t2__s1__lr0.3" in table.rows
                     and _cell_texts(table, "pt__t2__s1__lr0.3")[4] == "training", "live update")


async def test_results_mark_the_best_method_and_chart_mean_and_std(tmp_path):
    from mpt_tui.widgets import BarChart

    root = tmp_path / "runs"
    _write_finished_run(root, "20260101-000000-a", {"pt": {"t1": 0.3, "t2": 0.7}, "mtl": {"t1": 0.5, "t2": 0.6}})
    RunIndex(root).rebuild()
    app = MptApp(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await settle(pilot)
        screen = app.screen
        table = screen.query_one("#comparison")
        # the best per task: bold and ▲ (the marker is text: it survives a monochrome terminal)
        assert _cell_texts(table, "t1")[1:] == ["30.0 ± 0.0", "50.0 ± 0.0 ▲"]
        assert _cell_texts(table, "t2")[1:] == ["70.0 ± 0.0 ▲", "60.0 ± 0.0"]
        assert "bold" in str(table.get_cell("t2", "20260101-000000-a/pt").style)
        chart = screen.query_one(BarChart)
        assert chart.rows == [("PT", 30.0, 0.0), ("MTL", 50.0, 0.0)]  # the first task is under the cursor
        text = str(chart.render())
        assert "50.0 ±  0.0 ▲" in text and "█" in text
        table.focus()
        table.move_cursor(row=table.get_row_index("__mean__"))
        await pilot.pause()
        assert [(name, round(mean, 6)) for name, mean, _ in chart.rows] == [("PT", 50.0), ("MTL", 55.0)]
        assert chart.chart_title.startswith("all targets")


ANALYSIS = {"version": 1, "sources": ["s-a", "s-b", "s-c"], "targets": ["t1", "t2"],
            "kinds": {"prompt": {"matrix": [[0.9, 0.2, 0.1], [0.3, 0.8, 0.4]],
                                 "nearest": {"t1": [["s-a", 0.9], ["s-b", 0.2]], "t2": [["s-b", 0.8], ["s-c", 0.4]]}},
                      "text": {"matrix": [[0.5, 0.6, 0.7], [0.7, 0.6, 0.5]],
                               "nearest": {"t1": [["s-c", 0.7]], "t2": [["s-a", 0.7]]}}},
            "correlations": [{"similarity": "prompt", "method": "maml", "aggregate": "max", "level": "task", "n": 2,
                              "rho": 1.0, "p": 0.5}],
            "gains": {"maml": {"t1": 0.1, "t2": 0.05}}, "note": "two targets: a correlation means little"}


async def test_analysis_screen_shows_the_matrix_nearest_sources_and_correlations(tmp_path):
    import json

    root = tmp_path / "runs"
    _write_finished_run(root, "20260101-000000-a", {"pt": {"t1": 0.3}, "mtl": {"t1": 0.5}})
    _write_finished_run(root, "20260102-000000-b", {"pt": {"t1": 0.3}, "mtl": {"t1": 0.5}})
    (root / "20260101-000000-a" / "analysis.json").write_text(json.dumps(ANALYSIS))
    app = MptApp(root)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        await settle(pilot)
        screen = app.screen
        assert screen.run_id == "20260101-000000-a"  # the newest run with an analysis
        heat = str(screen.query_one("#heatmap").render())
        assert "t1" in heat and "0.90" in heat and "0.80" in heat and "s1 s-a" in heat
        nearest = str(screen.query_one("#nearest").render())
        assert "t1: s-a (0.90), s-b (0.20)" in nearest and "t2: s-b (0.80), s-c (0.40)" in nearest
        table = screen.query_one("#correlations")
        assert [str(c) for c in table.get_row_at(0)] == ["prompt", "MAML", "max", "task", "2", "1.00", "0.500"]
        assert "means little" in str(screen.query_one("#analysis-note").render())
        await pilot.press("k")  # the text embeddings
        await pilot.pause()
        assert "0.70" in str(screen.query_one("#heatmap").render()) and "t1: s-c (0.70)" in \
            str(screen.query_one("#nearest").render())
        # a run without analysis.json says how to compute it
        runs = screen.query_one("#analysis-runs")
        runs.focus()
        runs.move_cursor(row=runs.get_row_index("20260102-000000-b"))
        await pilot.press("enter")
        await settle(pilot)
        title = str(screen.query_one("#analysis-title").render())
        assert "mpt-tui analyse 20260102-000000-b" in title and 'similarity = ["prompt", "text"]' in title
