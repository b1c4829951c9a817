"""How fast the app starts and how it keeps up with many runs and a fast writer.

    python bench/app_responsiveness.py [--runs 50] [--seconds 5]

Prints one JSON report: the import time of the app (no torch), the time to the
first Runs screen with every run listed, and, with N stored runs and one run
appending a metrics event every 2 ms: the cost of reading the run directories
per tick (in a worker thread), of showing them (on the UI thread), the detail's
redraws per second (bound by the refresh timer) and the slowest key press.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_store(root: Path, runs: int, events_per_run: int = 500) -> list[Path]:
    from engine.runs import create_run

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
    from mpt_tui.widgets import RunDetail

    t0 = time.perf_counter()
    app = MptApp(root, refresh_hz=4)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs-table")
        while table.row_count < runs:  # the first refresh is read in a worker, then shown
            await pilot.pause(0.01)
        first_screen_s = time.perf_counter() - t0
        # the run directories are read in a worker thread (refresh), the table and detail
        # are updated on the UI thread (show): time each side
        reads, read_s, shows, show_s = [0], [0.0], [0], [0.0]
        refresh, show = screen.watcher.refresh, screen.show_runs

        def timed_refresh(*args):
            start = time.perf_counter()
            try:
                return refresh(*args)
            finally:
                read_s[0] += time.perf_counter() - start
                reads[0] += 1

        def timed_show(views):
            start = time.perf_counter()
            show(views)
            show_s[0] += time.perf_counter() - start
            shows[0] += 1

        screen.watcher.refresh, screen.show_runs = timed_refresh, timed_show
        detail = screen.query_one(RunDetail)  # the newest run, which the writer writes to, is selected
        redraws_before, measure_t = detail.redraws, time.perf_counter()
        stop = threading.Event()

        def writer():
            from engine.runs import Run

            run = Run(writer_path)
            run.update_status(state="running", pid=__import__("os").getpid(), heartbeat=time.time(), progress=0.0)
            step = 0
            while not stop.is_set():
                run.log_cell_loss("pt__x__s1__lr0.3", step, 1 / (step + 1))
                step += 1
                time.sleep(0.002)
            return step

        thread = threading.Thread(target=writer)
        thread.start()
        # the UI stays responsive: key presses are handled while the writer runs and workers read.
        # (Pilot.press would also wait for the whole process to go idle, which it never does here.)
        latencies = []
        for key, row in (("down", 1), ("up", 0)) * 3:
            key_t = time.perf_counter()
            app.simulate_key(key)
            while table.cursor_row != row:
                await asyncio.sleep(0.001)
            latencies.append(time.perf_counter() - key_t)
            await asyncio.sleep(0.2)
        try:
            await asyncio.sleep(seconds)
            assert detail.run is not None and detail.run.run.path == writer_path
        finally:
            stop.set()
            thread.join()
        events = sum(1 for _ in writer_path.joinpath("metrics.jsonl").open())
        redraws, elapsed = detail.redraws - redraws_before, time.perf_counter() - measure_t
    return {"first_screen_s": round(first_screen_s, 3), "refresh_ticks": reads[0],
            "refresh_ms_mean": round(1000 * read_s[0] / max(reads[0], 1), 2),
            "show_ms_mean": round(1000 * show_s[0] / max(shows[0], 1), 2),
            "redraws_per_s": round(redraws / elapsed, 2), "events_written": events,
            "key_latency_ms": round(1000 * max(latencies), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    code = "import time; t = time.perf_counter(); import mpt_tui.app; import sys; " \
           "print(time.perf_counter() - t, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        paths = make_store(root, args.runs)
        report = {"runs": args.runs, "import_app_s": round(float(out[0]), 3), "torch_imported": out[1] == "True",
                  **asyncio.run(measure(root, args.seconds, max(paths, key=lambda p: p.name), args.runs))}
    print(json.dumps(report))
    for key, value in report.items():
        print(f"{key:20s} {value}")


if __name__ == "__main__":
    main()
