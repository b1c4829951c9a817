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
    evaluation = report["eval"]  # rank classification with and without the shared prefix, and beam search
    assert evaluation["same_picks"] and evaluation["token_bound"] > 1
    assert evaluation["rank_pass_per_option_s"] > 0 and evaluation["rank_shared_prefix_s"] > 0
    assert evaluation["beam4_32_tokens_s"] > 0 and report["attention"] == "mpt_sdpa"
    assert "6. evaluation" in proc.stdout


def test_kernel_section_compares_the_models_own_modules_with_the_installed_ones(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "speed.py"), "--mode", "tiny", "--only", "kernels",
                           "--json", str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kernels = json.loads(out.read_text())["kernels"]
    assert kernels["installed"]["attention"] == "mpt_sdpa" and kernels["installed"]["rms_norm"] > 0
    for variant in ("transformers", "fused"):  # every attention call of a training step is counted
        assert sum(kernels[variant]["sdpa_choices"].values()) > 0
        assert kernels[variant]["group_step_s"] > 0 and kernels[variant]["one_job_step_s"] > 0
