"""How fast the app starts and how it keeps up with many runs, a paper-scale run and a fast writer.

    python bench/app_responsiveness.py [--runs 50] [--cells 1400] [--events-per-cell 300] [--seconds 5]

The store: N finished runs, and one running run of a paper setting's size (`--cells` grid
cells, `--events-per-cell` metrics events each), to which a thread appends an event every
2 ms (from another process, as a run's worker) while the app shows it. Prints one JSON report: the import time of the app (no
torch), the time to the first Runs screen with every run listed, the first indexing of
the big run's metrics, then per refresh tick the cost of reading the run directories (in a
worker thread; mean and max) and of showing them (on the UI thread: the runs table, the
1,400-row cell list, the plot; mean and max), the detail's redraws per second, and the
slowest key press: moving in the cell list (the chosen cell's curves replotted) and in the
runs table (another run's detail shown, then the big run's cell list rebuilt).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


WRITER = """
import json, os, sys, time
from pathlib import Path
from engine.store.run_dir import Run
run, cells = Run(Path(sys.argv[1])), json.loads(sys.argv[2])
run.update_status(state="running", pid=os.getpid(), heartbeat=time.time(), progress=0.5)
step = 1000
while True:
    run.log_cell_loss(cells[step % len(cells)], step, 1 / (step + 1))
    step += 1
    time.sleep(0.002)
"""


def make_big_run(root: Path, cells: int, events_per_cell: int) -> Path:
    """A running run whose grid has `cells` cells (5 methods x targets x 5 splits x 2 lrs), each with its events."""
    from engine.store.run_dir import create_run

    methods, seeds, lrs = ["pt", "mtl", "maml", "fomaml", "reptile"], [100, 13, 21, 42, 87], [0.3, 0.1]
    targets = [f"task{i:02d}" for i in range(max(1, cells // (len(methods) * len(seeds) * len(lrs))))]
    run = create_run(root, {"preset": {"name": "paper-scale", "downstream": {"learning_rates": lrs}},
                            "plan": {"targets": targets, "seeds": seeds, "methods": methods}}, "paper-scale")
    t = time.time()
    with run.metrics_path.open("w") as f:
        for m in methods:
            for step in range(events_per_cell):
                f.write(json.dumps({"t": t, "stage": "upstream", "method": m, "step": step, "loss": 1 / (step + 1)})
                        + "\n")
        for m in methods:
            for task in targets:
                for seed in seeds:
                    for lr in lrs:
                        cell = f"{m}__{task}__s{seed}__lr{lr:g}"
                        for step in range(events_per_cell - 1):
                            key = "dev" if step % 10 == 9 else "loss"
                            f.write(json.dumps({"t": t, "stage": "downstream", "cell": cell, "step": step,
                                                key: 1.0 / (step + 1)}) + "\n")
                        f.write(json.dumps({"t": t, "stage": "downstream", "cell": cell, "event": "cell_done",
                                            "dev": 0.5, "test": 0.4}) + "\n")
    run.update_status(state="running", progress=0.5, started=time.time() - 60)
    return run.path


def make_store(root: Path, runs: int, events_per_run: int = 500) -> list[Path]:
    from engine.store.run_dir import create_run

    paths = []
    for i in range(runs):
        run = create_run(root, {"preset": {"name": f"bench-{i}"}, "plan": {}}, f"bench-{i}")
        with run.metrics_path.open("w") as f:
            for step in range(events_per_run):
                f.write(json.dumps({"t": time.time(), "stage": "downstream", "cell": "pt__x__s1__lr0.3",
                                    "step": step, "loss": 1.0 / (step + 1)}) + "\n")
        run.update_status(state="finished", progress=1.0, started=time.time() - 60, finished=time.time())
        paths.append(run.path)
    return paths


async def measure(root: Path, seconds: float, writer_path: Path, runs: int) -> dict:
    from mpt_tui.app import MptApp
    from mpt_tui.screens.runs import RunsScreen
    from mpt_tui.widgets import CellList, RunDetail

    t0 = time.perf_counter()
    app = MptApp(root, refresh_hz=4)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs-table")
        while table.row_count < runs:  # the first refresh is read in a worker, then shown
            await pilot.pause(0.01)
        first_screen_s = time.perf_counter() - t0
        detail, cells = screen.query_one(RunDetail), screen.query_one(CellList)
        lines = sum(1 for _ in writer_path.joinpath("metrics.jsonl").open())
        while detail.run is None or detail.run.run.path != writer_path or detail.run.index.events < lines:
            await pilot.pause(0.01)
        index_s = time.perf_counter() - t0 - first_screen_s
        while cells.row_count() < len(detail.run.grid):
            await pilot.pause(0.01)
        # the run directories are read in a worker thread (refresh), the table and detail
        # are updated on the UI thread (show): time each side
        read_ms, show_ms = [], []
        refresh, show = screen.watcher.refresh, screen.show_runs

        def timed_refresh(*args):
            start = time.perf_counter()
            try:
                return refresh(*args)
            finally:
                read_ms.append(1000 * (time.perf_counter() - start))

        def timed_show(views):
            start = time.perf_counter()
            show(views)
            show_ms.append(1000 * (time.perf_counter() - start))

        screen.watcher.refresh, screen.show_runs = timed_refresh, timed_show
        redraws_before, measure_t = detail.redraws, time.perf_counter()
        cell_ids = [c.id for c in detail.run.grid]

        # the run's worker is its own process: so is the writer here
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(writer_path), json.dumps(cell_ids[:7])], cwd=REPO)
        # the UI stays responsive: key presses are handled while the writer runs and workers read.
        # (Pilot.press would also wait for the whole process to go idle, which it never does here.)
        cell_keys, run_keys = [], []
        try:
            cells.table.focus()
            await pilot.pause(0.5)  # the footer shows the focused table's keys (a one-off recompose)
            for key, row in (("down", 1), ("up", 0)) * 3:  # in the cell list: the chosen cell is replotted
                key_t = time.perf_counter()
                app.simulate_key(key)
                while cells.table.cursor_row != row or detail.cell != cell_ids[row]:
                    await asyncio.sleep(0.001)
                cell_keys.append(time.perf_counter() - key_t)
                await asyncio.sleep(0.2)
            table.focus()
            await pilot.pause(0.5)
            for key, row in (("down", 1), ("up", 0)) * 2:  # in the runs table: another run's detail, then back
                key_t = time.perf_counter()
                app.simulate_key(key)
                while table.cursor_row != row or cells.run_id != screen.selected.id:
                    await asyncio.sleep(0.001)
                run_keys.append(time.perf_counter() - key_t)
                await asyncio.sleep(0.3)
            await asyncio.sleep(seconds)
            assert detail.run is not None and detail.run.run.path == writer_path
        finally:
            writer.kill()
            writer.wait()
        events = sum(1 for _ in writer_path.joinpath("metrics.jsonl").open())
        redraws, elapsed = detail.redraws - redraws_before, time.perf_counter() - measure_t
    return {"first_screen_s": round(first_screen_s, 3), "index_first_read_s": round(index_s, 3),
            "cells": len(cell_ids), "events_in_big_run": events, "refresh_ticks": len(read_ms),
            "refresh_ms_mean": round(sum(read_ms) / max(len(read_ms), 1), 2), "refresh_ms_max": round(max(read_ms), 2),
            "show_ms_mean": round(sum(show_ms) / max(len(show_ms), 1), 2), "show_ms_max": round(max(show_ms), 2),
            "redraws_per_s": round(redraws / elapsed, 2),
            "key_cell_list_ms_median": round(1000 * statistics.median(cell_keys), 1),
            "key_cell_list_ms_max": round(1000 * max(cell_keys), 1),
            "key_runs_table_ms_median": round(1000 * statistics.median(run_keys), 1),
            "key_runs_table_ms_max": round(1000 * max(run_keys), 1),
            "key_runs_table_ms_each": [round(1000 * k, 1) for k in run_keys]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--cells", type=int, default=1400)
    parser.add_argument("--events-per-cell", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    code = "import time; t = time.perf_counter(); import mpt_tui.app; import sys; " \
           "print(time.perf_counter() - t, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        make_store(root, args.runs)
        time.sleep(1.0)  # the big run's id sorts last: it is the newest, selected at the start
        big = make_big_run(root, args.cells, args.events_per_cell)
        report = {"runs": args.runs + 1, "import_app_s": round(float(out[0]), 3), "torch_imported": out[1] == "True",
                  **asyncio.run(measure(root, args.seconds, big, args.runs + 1))}
    print(json.dumps(report))
    for key, value in report.items():
        print(f"{key:20s} {value}")


if __name__ == "__main__":
    main()
