"""How fast the app starts and how it keeps up with many runs and a fast writer.

    python bench/app_responsiveness.py [--runs 50] [--seconds 5]

Prints one JSON report: the import time of the app (no torch), the time to the
first Runs screen, and, with N stored runs and one run appending a metrics
event every 2 ms, the refresh cost per tick and the number of redraws.
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


async def measure(root: Path, seconds: float, writer_path: Path) -> dict:
    from mpt_tui.app import MptApp
    from mpt_tui.screens.runs import RunsScreen

    t0 = time.perf_counter()
    app = MptApp(root, refresh_hz=4)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        first_screen_s = time.perf_counter() - t0
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        ticks, cost = [0], [0.0]
        original = screen.refresh_runs

        def timed():
            start = time.perf_counter()
            original()
            cost[0] += time.perf_counter() - start
            ticks[0] += 1

        screen.refresh_runs = timed
        for timer in list(screen._timers):
            timer.stop()
        screen.set_interval(app.refresh_interval, timed)
        stop = threading.Event()

        def writer():
            from engine.runs import Run

            run = Run(writer_path)
            run.update_status(state="running", pid=__import__("os").getpid(), heartbeat=time.time(), progress=0.0)
            step = 0
            while not stop.is_set():
                run.append_event({"stage": "downstream", "cell": "pt__x__s1__lr0.3", "step": step, "loss": 1 / (step + 1)})
                step += 1
                time.sleep(0.002)
            return step

        thread = threading.Thread(target=writer)
        thread.start()
        # the UI stays responsive: a key press is handled while the writer runs
        key_t = time.perf_counter()
        await pilot.press("down")
        key_latency = time.perf_counter() - key_t
        await asyncio.sleep(seconds)
        stop.set()
        thread.join()
        events = sum(1 for _ in writer_path.joinpath("metrics.jsonl").open())
    return {"first_screen_s": round(first_screen_s, 3), "refresh_ticks": ticks[0],
            "refresh_ms_mean": round(1000 * cost[0] / max(ticks[0], 1), 2),
            "redraws_per_s": round(ticks[0] / seconds, 2), "events_written": events,
            "key_latency_ms": round(1000 * key_latency, 1)}


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
                  **asyncio.run(measure(root, args.seconds, paths[0]))}
    print(json.dumps(report))
    for key, value in report.items():
        print(f"{key:20s} {value}")


if __name__ == "__main__":
    main()
