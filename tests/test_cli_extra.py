"""CLI paths not covered elsewhere: `data build`, prompt files checked before a run starts."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import torch

from conftest import REPO
from engine.data import TaskData
from engine.prompt import save_prompt
from engine.runs import list_runs


def _cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mpt_tui.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)


def test_data_build_writes_crossfit_splits_the_reader_loads(tmp_path):
    source = tmp_path / "reviews.csv"
    with source.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(40):
            writer.writerow([f"review number {i} was {'great' if i % 2 else 'awful'}", "pos" if i % 2 else "neg"])
    out = tmp_path / "data"
    proc = _cli("data", "build", str(source), "--task", "my-reviews", "--out", str(out), "--k", "4",
                "--seeds", "13,42", "--input-column", "text", "--output-column", "label", "--test-split", "none")
    assert proc.returncode == 0, proc.stderr
    data = TaskData(out)
    assert data.tasks() == ["my-reviews"] and data.seeds("my-reviews", 4) == [13, 42]
    split = data.load_split("my-reviews", 4, 13, need_test=False)
    assert len(split.train) == 8 and {e.output for e in split.train} == {"pos", "neg"}
    assert data.task_info("my-reviews").options == ("neg", "pos")


def test_data_build_bad_column_is_a_one_line_error(tmp_path):
    source = tmp_path / "x.csv"
    source.write_text("text,label\na,b\n")
    proc = _cli("data", "build", str(source), "--task", "t", "--out", str(tmp_path / "o"),
                "--input-column", "sentence", "--output-column", "label", "--test-split", "none")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mpt-tui: error:")]
    assert len(errors) == 1 and "sentence" in errors[0] and "available columns" in errors[0]
    assert not (tmp_path / "o" / "t").exists()


def test_prompt_file_of_the_wrong_size_is_refused_before_a_run(tmp_path, tiny_llama):
    wrong = save_prompt(tmp_path / "wrong.safetensors", torch.zeros(4, 7), model="other")
    runs = tmp_path / "runs"
    proc = _cli("--preset", "demo", "--runs-dir", str(runs), "--set", f'model.name="{tiny_llama}"',
                "--set", 'prompt.init="file"', "--set", f'prompt.file="{wrong}"', "--set", "prompt.length=4")
    assert proc.returncode == 2
    assert "prompt.file" in proc.stderr and "size 7" in proc.stderr
    assert not list_runs(runs)
