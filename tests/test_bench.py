"""The speed benchmark still runs: `bench/speed.py --mode tiny` end to end (CI times nothing)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_speed_benchmark_runs_in_tiny_mode_and_reports_every_section(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "speed.py"), "--mode", "tiny", "--json", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout.splitlines()[0]) == report  # the JSON line comes first, then the table
    grid = report["grid"]
    for key in ("sequential_s", "grouped_s", "one_job_step_s", "group_step_s"):
        assert grid[key] > 0, key
    assert grid["speedup"] == grid["sequential_s"] / grid["grouped_s"]
    assert report["pt_step"]["ours_s"] > 0
    if report["pt_step"]["peft_s"] is not None:  # peft comes with the test extras
        assert report["pt_step"]["ours_vs_peft"] > 0
    assert set(report["meta"]) == {"maml", "fomaml", "reptile"}
    for row in report["meta"].values():
        assert row["loop_s"] > 0 and row["batched_s"] > 0
    assert "1. grid of" in proc.stdout and "3. meta-update" in proc.stdout
