"""The `mpt-tui` command (mpt_tui/cli.py): bad input is refused with one line and exit 2 and leaves stored
runs alone; `data build`; `presets`; the installed entry point."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_config import DEMO_DATA, write_preset
from test_plan import paper_data

from engine.experiment.data import TaskData
from engine.compute.prompt import save_prompt
from engine.store.run_dir import list_runs
from engine.base.tomlcompat import tomllib

from conftest import REPO


def run_cli(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("MPT_TUI_DATA_DIR", None)
    env.pop("MPT_TUI_RUNS_DIR", None)
    env["MPT_TUI_CACHE"] = str(cwd / "cache")  # the embedded model must not be found pulled here
    return subprocess.run([sys.executable, "-m", "mpt_tui.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under root: file bytes, or None for a directory."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def populated_runs(tmp_path) -> Path:
    """A runs directory with one existing run and an index, as a previous session left it."""
    from engine.store.run_dir import create_run, write_json_atomic
    from engine.store.index import RunIndex

    root = tmp_path / "runs"
    run = create_run(root, {"preset": {"name": "old"}, "plan": {"targets": ["t"]}}, "old")
    run.update_status(state="finished", finished=1.0)
    write_json_atomic(run.results_path, {"splits": [], "tasks": {}, "mean": {}})
    RunIndex(root).record(run)
    assert (root / "index.json").is_file()
    return root


def assert_refused(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a single-line message, got: {result.stderr!r}"
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in result.stderr


CLI_BAD_INPUTS = {
    "unknown-key": (["--set", "downstream.stepz=5"], ["downstream.stepz", "demo.toml"]),
    "non-numeric-set": (["--set", "downstream.steps=abc"], ["downstream.steps", "demo.toml"]),
    "unknown-task": (["--set", 'data.targets=["no-such-task"]'], ["data.targets", "no-such-task"]),
    "missing-data-dir": (["--data-dir", "{tmp}/no-data-here"], ["data.dir", "no-data-here"]),
    "unknown-model": (["--set", 'model.name="no-such-org/nope"'], ["model.name", "no-such-org/nope"]),
}


@pytest.mark.parametrize("case", list(CLI_BAD_INPUTS))
def test_cli_bad_input_leaves_runs_dir_alone(tmp_path, populated_runs, case):
    extra, needles = CLI_BAD_INPUTS[case]
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    before = snapshot(populated_runs)
    result = run_cli("--preset", "demo", "--runs-dir", str(populated_runs), *extra, cwd=tmp_path)
    assert_refused(result, *needles)
    assert snapshot(populated_runs) == before  # no new run directory, old run and index byte-identical


@pytest.mark.parametrize("case", ["unknown-key", "unknown-task", "unknown-model"])
def test_cli_bad_input_creates_no_run_in_fresh_runs_dir(tmp_path, case):
    extra, needles = CLI_BAD_INPUTS[case]
    runs = tmp_path / "fresh-runs"
    result = run_cli("--preset", "demo", "--runs-dir", str(runs), *extra, cwd=tmp_path)
    assert_refused(result, *needles)
    assert not runs.exists() or [p for p in runs.iterdir() if p.is_dir()] == []


def test_cli_unknown_key_in_preset_file(tmp_path):
    path = write_preset(tmp_path, f'name = "x"\n[data]\ndir = "{DEMO_DATA}"\nsetting = "demo"\n'
                                  '[downstream]\nstepz = 5\n')
    runs = tmp_path / "runs"
    result = run_cli("--preset", str(path), "--runs-dir", str(runs), cwd=tmp_path)
    assert_refused(result, "downstream.stepz", str(path))
    assert not runs.exists() or list(runs.iterdir()) == []


def test_cli_runs_dir_under_read_only_directory(tmp_path):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("chmod does not stop this user (root); see the regular-file variant")
        runs = parent / "runs"
        result = run_cli("--preset", "demo", "--runs-dir", str(runs), cwd=tmp_path)
        assert_refused(result, str(runs))
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_cli_runs_dir_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    runs = blocker / "runs"
    result = run_cli("--preset", "demo", "--runs-dir", str(runs), cwd=tmp_path)
    assert_refused(result, str(runs))
    assert blocker.read_text() == "not a directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_cli_presets_lists_demo(tmp_path):
    result = run_cli("presets", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "demo" in listed and "not the paper's procedure" in listed["demo"]  # with its description
    assert "authors' procedure" in listed["class_to_class"]


def test_mpt_tui_entry_point_presets(tmp_path):
    """The console script the install made, next to this interpreter (as the README calls it)."""
    exe = Path(sys.executable).parent / "mpt-tui"
    assert exe.is_file(), f"{exe}: the package is not installed in this environment (run ./setup.sh)"
    result = subprocess.run([exe, "presets"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0 and "demo" in result.stdout.split()


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


# ---- paper settings (data.setting = "qin2023:<name>") with tasks missing from the data ------------------

def test_cli_paper_setting_without_any_target_is_refused(tmp_path):
    data = paper_data(tmp_path / "data", {"demo-spam": "sms_spam", "demo-emotion": "emotion"})  # sources only
    path = write_preset(tmp_path, f'name = "x"\n[data]\ndir = "{data}"\nsetting = "qin2023:class_to_class"\n'
                                  'seeds = [1]\n[upstream]\nmethods = []\n')
    runs = tmp_path / "runs"
    result = run_cli("--preset", str(path), "--runs-dir", str(runs), cwd=tmp_path)
    assert_refused(result, "data.setting", "class_to_class", "none of the 10 target tasks")
    assert not runs.exists() or list(runs.iterdir()) == []


def test_paper_setting_warning_is_said_once_headless_in_the_log_and_in_status(tmp_path, tiny_llama):
    from engine.store.run_dir import read_json
    from engine.runner.lifecycle import execute

    data = paper_data(tmp_path / "data", {"demo-emotion": "emo", "demo-spam": "sms_spam"}, seeds=(1,))
    path = write_preset(tmp_path, f"""
name = "paper-missing"
[data]
dir = "{data}"
setting = "qin2023:class_to_class"
seeds = [1]
[model]
name = "{tiny_llama}"
device = "cpu"
max_input_length = 40
[prompt]
length = 4
[downstream]
learning_rates = [0.3]
steps = 1
eval_every = 1
batch_size = 4
max_test_examples = 8
[upstream]
methods = []
""")
    runs = tmp_path / "runs"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "mpt_tui.cli", "--preset", str(path), "--runs-dir", str(runs)],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    said = [i for i, line in enumerate(lines) if line.startswith("warning: paper setting class_to_class:")]
    assert len(said) == 1, proc.stdout
    warning = lines[said[0]].removeprefix("warning: ")
    assert "9 of 10 targets" in warning and "44 of 45 sources" in warning and "dbpedia_14" in warning
    assert said[0] < next(i for i, line in enumerate(lines) if line.startswith("run "))  # before training
    (run,) = list_runs(runs)
    assert run.config()["plan"]["missing_targets"][:2] == ["superglue-cb", "dbpedia_14"]
    status = read_json(run.status_path)
    assert status["state"] == "finished" and status["warnings"] == [warning]
    log = run.log_path.read_text().splitlines()
    assert log[0].endswith(f"WARNING {warning}")
    assert sum(warning in line for line in log) == 1
    execute(run)  # a resume (nothing left to do) does not repeat it
    log = run.log_path.read_text().splitlines()
    assert sum(warning in line for line in log) == 1 and log[0].endswith(warning)
    assert read_json(run.status_path)["warnings"] == [warning]


def test_presets_show_prints_every_key_and_marks_what_differs_from_the_paper(tmp_path):
    from engine.experiment.paper import PAPER_VALUES

    paper = run_cli("presets", "show", "class_to_class", cwd=tmp_path)
    assert paper.returncode == 0, paper.stderr
    body = tomllib.loads(paper.stdout)  # valid TOML: the marks are comments
    assert body["data"]["setting"] == "qin2023:class_to_class" and body["data"]["dir"] == ""
    assert body["downstream"]["num_beams"] == 4 and body["upstream"]["mtl"]["epochs"] == 20
    assert "# paper:" not in paper.stdout.split("\n", 1)[1]  # the paper preset is the authors' procedure
    for key in PAPER_VALUES:  # every key is printed
        table, _, leaf = key.rpartition(".")
        node = body
        for part in table.split("."):
            node = node[part]
        assert leaf in node, key

    changed = run_cli("presets", "show", "class_to_class", "--set", "downstream.num_beams=1", cwd=tmp_path)
    assert "num_beams = 1    # paper: 4" in changed.stdout.splitlines()

    demo = run_cli("presets", "show", "demo", cwd=tmp_path)
    lines = demo.stdout.splitlines()
    assert 'dropout = "off"    # paper: "config"' in lines and 'prediction = "auto"    # paper: "generate"' in lines
    assert "weight_decay = 1e-05" in lines  # the same as the paper's: no mark

    assert_refused(run_cli("presets", "show", "no-such-preset", cwd=tmp_path), "no-such-preset")


@pytest.mark.parametrize("command", [["runs"], ["export"], ["show", "x"], ["plot", "x", "--out", "f.png"]])
def test_a_runs_root_that_is_a_file_is_one_line_and_exit_2(tmp_path, command):
    """`mpt-tui runs --runs-dir /etc/passwd` used to exit 0 and print nothing."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    result = run_cli(*command, "--runs-dir", str(blocker), cwd=tmp_path)
    assert_refused(result, str(blocker))
    assert blocker.read_text() == "not a directory\n"
