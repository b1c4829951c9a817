"""Scaling benchmark of the Ray backend (issue 11): the same grid with 1, 2 (4, 8) workers.

    python bench/scaling.py                       # tiny Llama, demo data, 1 and 2 workers on this machine
    python bench/scaling.py --workers 1 2 4 8 --model PATH --steps 200
    python bench/scaling.py --json bench/results/scaling-cpu-2core.json

Each worker count runs the same PT grid (the demo's targets x splits x learning rates, groups of a fixed
size, so every run trains the same groups) as a real run on a local Ray instance (engine.runner.lifecycle.execute,
`cluster.backend = "ray"`, `cluster.max_workers = W`). Measured per run, from the driver's log: the
grid's wall time (first unit sent to last unit back; Ray's start and the workers' model loading are
reported apart), training sequences/s, speed-up and scaling efficiency (speed-up / workers), and the
driver's overhead per unit (round trip minus the time the unit ran in its worker).

Then, on paper: the downstream grid of one paper setting (1,400 jobs of 3,000 steps at batch 8) on
1-8 GPUs, from the single-GPU group timing in bench/results/gpu-h200-bf16.json (the grouped grid's
278 sequences/s on an H200) and the per-unit overhead measured here, with the groups as the Ray backend
makes them (evened out over the workers) and as one worker would (the probe's size). The goal is at
least 90% efficiency. It prints one JSON report (also written to --json) and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

GPU_RESULTS = REPO / "bench" / "results" / "gpu-h200-bf16.json"
PAPER = {"jobs": 1400, "steps": 3000, "batch": 8}  # one setting: 14 targets x 5 splits x 4 lrs x 5 methods
UNIT_LINE = re.compile(r"^(\S+ \S+) INFO ray unit (.+) on (w\d+): ([\d.]+) s in the worker, ([\d.]+) s round trip$")


def _time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def grid_run(root: Path, model: Path, workers: int, steps: int) -> dict:
    """One run of the grid on `workers` Ray workers; its timings from the driver's log."""
    from engine.experiment.config import override
    from engine.runner.prepare import check_preset, prepare_run
    from engine.store.run_dir import read_json
    from engine.runner.lifecycle import execute

    from conftest import small_preset

    preset = small_preset(root / f"scaling-{workers}.toml", model, name=f"scaling-{workers}",
                          downstream=f"steps = {steps}\neval_every = {steps}\ncheckpoint_every = {steps}\n"
                                     f"group_size = 2\nlearning_rates = [0.3, 0.1]\nlog_every = 10",
                          upstream="methods = []")
    sets = [override("cluster.backend", "ray"), override("cluster.max_workers", workers)]
    run = prepare_run(root / "runs", check_preset(str(preset), sets))
    started = time.time()
    execute(run)
    wall = time.time() - started
    units = []
    for line in run.log_path.read_text(encoding="utf-8").splitlines():
        m = UNIT_LINE.match(line)
        if m:
            units.append({"done": _time(m[1]), "unit": m[2], "worker": m[3], "worker_s": float(m[4]),
                          "round_trip_s": float(m[5])})
    grid_s = max(u["done"] for u in units) - min(u["done"] - u["round_trip_s"] for u in units)
    records = [read_json(p) for p in run.cells_dir.glob("*.json")]
    sequences = sum(r["steps"] for r in records) * 4  # small_preset's batch size
    overheads = [u["round_trip_s"] - u["worker_s"] for u in units]
    return {"workers": workers, "units": len(units), "cells": len(records), "wall_s": round(wall, 2),
            "setup_s": round(wall - grid_s, 2), "grid_s": round(grid_s, 2),
            "sequences_per_s": round(sequences / grid_s, 2), "workers_used": sorted({u["worker"] for u in units}),
            "overhead_per_unit_s": round(sum(overheads) / len(overheads), 4)}


def paper_estimate(overhead_s: float, gpu_results: Path) -> dict:
    """The paper setting's downstream grid on 1-8 GPUs, from a measured single-GPU grouped grid."""
    from engine.execution.cluster import balanced_group_size
    from engine.runner.estimate import parallel_time

    grid = json.loads(gpu_results.read_text())["grid"]
    pass_s = grid["grouped_s"] / grid["steps"]  # one pass of a group of grid["jobs"], its dev evaluation included
    largest = grid["auto_group_size"]  # what the memory probe allows on that GPU
    rows = []
    for workers in (1, 2, 4, 8):
        row = {"gpus": workers}
        for how, size in (("probe", largest), ("balanced", balanced_group_size(PAPER["jobs"], largest, workers))):
            groups = -(-PAPER["jobs"] // size)
            # a pass's time grows with the group (the GPU is busy): scale the measured group's pass by size
            unit_s = PAPER["steps"] * pass_s * size / grid["jobs"] + overhead_s
            sizes = [size] * (PAPER["jobs"] // size) + ([PAPER["jobs"] % size] if PAPER["jobs"] % size else [])
            units = [(PAPER["steps"] * pass_s * n / grid["jobs"] + overhead_s, frozenset(), "") for n in sizes]
            one = sum(u[0] for u in units)
            makespan = parallel_time(units, workers)
            row[how] = {"group_size": size, "groups": groups, "unit_h": round(unit_s / 3600, 3),
                        "hours": round(makespan / 3600, 2), "efficiency": round(one / (workers * makespan), 4)}
        rows.append(row)
    return {"from": str(gpu_results.relative_to(REPO)), "device": "NVIDIA H200", "measured_group": grid["jobs"],
            "measured_seq_per_s": round(grid["grouped_seq_per_s"], 1), "pass_s": round(pass_s, 4),
            "overhead_per_unit_s": overhead_s, **PAPER, "rows": rows}


def table(report: dict) -> str:
    runs = report["runs"]
    base = runs[0]["grid_s"] * runs[0]["workers"]
    lines = ["workers | grid wall s | seq/s | speed-up | efficiency | setup s | overhead/unit ms",
             "---|---|---|---|---|---|---"]
    for r in runs:
        speedup = base / r["grid_s"]
        lines.append(f"{r['workers']} | {r['grid_s']:.2f} | {r['sequences_per_s']:.1f} | {speedup:.2f}x | "
                     f"{speedup / r['workers']:.0%} | {r['setup_s']:.1f} | {1000 * r['overhead_per_unit_s']:.1f}")
    paper = report["paper"]
    lines += ["", f"paper setting downstream ({paper['jobs']} jobs x {paper['steps']} steps), from "
                  f"{paper['measured_seq_per_s']} seq/s per {paper['device']}:",
              "GPUs | probe groups: hours, efficiency | balanced groups: hours, efficiency", "---|---|---"]
    for row in paper["rows"]:
        p, b = row["probe"], row["balanced"]
        lines.append(f"{row['gpus']} | {p['groups']} x {p['group_size']}: {p['hours']:.1f} h, {p['efficiency']:.0%} | "
                     f"{b['groups']} x {b['group_size']}: {b['hours']:.1f} h, {b['efficiency']:.0%}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", help="model directory (default: a tiny Llama built here)")
    parser.add_argument("--steps", type=int, default=60, help="steps per grid cell")
    parser.add_argument("--gpu-results", type=Path, default=GPU_RESULTS)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = Path(args.model) if args.model else None
        if model is None:
            from conftest import build_tiny_model

            model = build_tiny_model("llama", root / "tiny-llama")
        runs = [grid_run(root, model, w, args.steps) for w in sorted(args.workers)]
    overhead = runs[0]["overhead_per_unit_s"]
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "model": str(args.model or "tiny llama"),
              "steps": args.steps, "command": " ".join(["python", "bench/scaling.py", *sys.argv[1:]]),
              "runs": runs, "paper": paper_estimate(overhead, args.gpu_results)}
    print(json.dumps(report))
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
