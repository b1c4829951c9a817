"""Tests for presets (engine.config), plans (engine.protocol.make_plan) and the CLI's bad-input path.

Nothing here trains a model: every CLI call below is refused before a run starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, require_shared_data
from engine.config import (DownstreamConfig, Preset, PresetError, builtin_presets_dir, list_builtin_presets,
                           load_preset)
from engine.protocol import make_plan
from engine.tomlcompat import tomllib

PRESETS_DIR = REPO / "presets"
DEMO_DATA = PRESETS_DIR / "demo-data"


def write_preset(tmp_path: Path, body: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def preset_error(*args, **kwargs) -> str:
    with pytest.raises(PresetError) as info:
        load_preset(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "a PresetError is one line"
    return message


# ---- built-in presets ------------------------------------------------------------------------

def test_builtin_presets_dir_is_the_shipped_folder():
    assert builtin_presets_dir().resolve() == PRESETS_DIR.resolve()
    assert "demo" in list_builtin_presets()


@pytest.mark.parametrize("path", sorted(PRESETS_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_builtin_preset_parses(path):
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    data_dir = None if raw.get("data", {}).get("dir") else str(require_shared_data())
    preset, found = load_preset(path.stem, data_dir=data_dir)
    assert found.resolve() == path.resolve()
    assert isinstance(preset, Preset)
    assert preset.name == raw.get("name", path.stem)
    assert Path(preset.data.dir).is_absolute() and Path(preset.data.dir).is_dir()
    # the preset's own values survive (spot-check every scalar the file sets)
    def check(obj, table, where):
        for key, value in table.items():
            if isinstance(value, dict):
                check(getattr(obj, key), value, f"{where}{key}.")
            elif key not in ("dir", "config_dir", "setting", "file", "prompt_file") and not isinstance(value, list):
                assert getattr(obj, key) == value, f"{where}{key}"

    check(preset, {k: v for k, v in raw.items() if isinstance(v, dict)}, "")
    plan = make_plan(preset)  # and it runs against its data
    assert plan.targets


def test_demo_preset_values():
    preset, path = load_preset("demo")
    assert path == builtin_presets_dir() / "demo.toml"
    assert preset.data.dir == str(DEMO_DATA.resolve())
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    assert preset.data.seeds == raw["data"]["seeds"]
    assert preset.downstream.learning_rates == raw["downstream"]["learning_rates"]
    assert preset.upstream.methods == ["mtl", "maml", "fomaml", "reptile"]
    assert all(isinstance(lr, float) for lr in preset.downstream.learning_rates)
    plan = make_plan(preset)
    assert plan.setting == "demo"
    assert plan.targets == ["demo-product_sentiment", "demo-emotion", "demo-formality"]
    assert plan.warnings == []


def test_unknown_preset_name():
    message = preset_error("no-such-preset")
    assert "no-such-preset" in message and "demo" in message


# ---- validation errors name the key and the file ---------------------------------------------

@pytest.mark.parametrize("section, line, key", [
    ("downstream", "stepz = 5", "downstream.stepz"),                      # unknown key
    ("downstream", 'steps = "ten"', "downstream.steps"),                  # wrong type
    ("downstream", "batch_size = 2.5", "downstream.batch_size"),          # float for an integer
    ("downstream", "optimizer = \"sgd\"", "downstream.optimizer"),        # bad choice
    ("prompt", 'placement = "middle"', "prompt.placement"),               # bad choice
    ("downstream", "batch_size = 0", "downstream.batch_size"),            # below minimum
    ("model", "max_output_length = 1", "model.max_output_length"),        # below minimum
    ("downstream", "learning_rates = 0.1", "downstream.learning_rates"),  # scalar for a list
    ("downstream", 'learning_rates = [0.1, "x"]', "downstream.learning_rates[1]"),
    ("data", "seeds = [13, true]", "data.seeds[1]"),                      # bool is not an integer
    ("downstream", "group_memory_fraction = 1.5", "downstream.group_memory_fraction"),  # above maximum
    ("model", 'precision = "fp16"', "model.precision"),                   # bad choice
    ("upstream", 'batch_tasks = "yes"', "upstream.batch_tasks"),          # wrong type
])
def test_invalid_value_names_key_and_file(tmp_path, section, line, key):
    path = write_preset(tmp_path, f'name = "x"\n[{section}]\n{line}\n')
    message = preset_error(str(path), data_dir=str(DEMO_DATA))
    assert key in message
    assert str(path) in message


def test_unknown_top_level_key(tmp_path):
    path = write_preset(tmp_path, f'name = "x"\nlearning_rate = 0.1\n[data]\ndir = "{DEMO_DATA}"\n')
    message = preset_error(str(path))
    assert "'learning_rate'" in message and str(path) in message


def test_invalid_toml_names_file(tmp_path):
    path = write_preset(tmp_path, 'name = "x\n')
    assert str(path) in preset_error(str(path))


def test_missing_data_dir_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("MPT_TUI_DATA_DIR", raising=False)
    path = write_preset(tmp_path, 'name = "x"\n')
    message = preset_error(str(path))
    assert "data.dir" in message and str(path) in message
    monkeypatch.setenv("MPT_TUI_DATA_DIR", str(DEMO_DATA))
    preset, _ = load_preset(str(path))
    assert preset.data.dir == str(DEMO_DATA.resolve())


def test_relative_paths_resolved_against_preset_file(tmp_path):
    (tmp_path / "sub" / "data").mkdir(parents=True)
    path = write_preset(tmp_path / "sub", 'name = "x"\n[data]\ndir = "data"\nsetting = "s.json"\n')
    preset, _ = load_preset(str(path))
    assert preset.data.dir == str((tmp_path / "sub" / "data").resolve())
    assert preset.data.setting == str((tmp_path / "sub" / "s.json").resolve())


# ---- --set -----------------------------------------------------------------------------------

def test_set_numeric_override():
    preset, _ = load_preset("demo", ["downstream.steps=5", "prompt.length=7", "downstream.grad_clip=2"])
    assert preset.downstream.steps == 5 and isinstance(preset.downstream.steps, int)
    assert preset.prompt.length == 7
    assert preset.downstream.grad_clip == 2.0 and isinstance(preset.downstream.grad_clip, float)
    # other values untouched
    assert preset.downstream.batch_size == load_preset("demo")[0].downstream.batch_size
    assert preset.downstream.batch_size != DownstreamConfig().batch_size  # the preset's own value, not a default


def test_set_non_numeric_for_numeric_key():
    message = preset_error("demo", ["downstream.steps=abc"])
    assert "downstream.steps" in message
    assert "demo.toml" in message


def test_set_string_override_and_choices():
    preset, _ = load_preset("demo", ["downstream.optimizer=adamw", 'model.name="some-org/model"'])
    assert preset.downstream.optimizer == "adamw"
    assert preset.model.name == "some-org/model"
    assert "downstream.optimizer" in preset_error("demo", ["downstream.optimizer=sgd"])
    assert "downstream.steps" in preset_error("demo", ["downstream.steps=0"])


def test_set_list_overrides():
    preset, _ = load_preset("demo", ["downstream.learning_rates=[0.1,0.2]", "data.seeds=[13]",
                                     'data.targets=["demo-emotion"]'])
    assert preset.downstream.learning_rates == [0.1, 0.2]
    assert preset.data.seeds == [13]
    assert preset.data.targets == ["demo-emotion"]
    preset, _ = load_preset("demo", ["downstream.learning_rates=[1, 2]"])
    assert preset.downstream.learning_rates == [1.0, 2.0]
    assert "data.seeds" in preset_error("demo", ["data.seeds=[13,abc]"])


def test_set_unknown_key_and_bad_syntax():
    assert "downstream.stepz" in preset_error("demo", ["downstream.stepz=5"])
    assert "expected key=value" in preset_error("demo", ["downstream.steps"])


def test_defaults_match_dataclass():
    assert DownstreamConfig().learning_rates == [0.5, 0.4, 0.3, 0.2]
    a, b = DownstreamConfig(), DownstreamConfig()
    a.learning_rates.append(0.1)
    assert b.learning_rates == [0.5, 0.4, 0.3, 0.2]  # list defaults are not shared


# ---- make_plan against the real data ----------------------------------------------------------

def shared_preset(tmp_path: Path, data_lines: str, overrides=()) -> Preset:
    root = require_shared_data()
    path = write_preset(tmp_path, f'name = "plan-test"\n[data]\ndir = "{root}"\n{data_lines}\n')
    preset, _ = load_preset(str(path), list(overrides))
    return preset


def plan_error(preset: Preset) -> str:
    with pytest.raises(PresetError) as info:
        make_plan(preset)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_make_plan_with_setting(tmp_path):
    preset = shared_preset(tmp_path, 'setting = "class_to_class"')
    plan = make_plan(preset)
    raw = json.loads((require_shared_data() / "metaicl-config" / "class_to_class.json").read_text())
    assert plan.setting == "class_to_class"
    assert plan.sources == raw["train"] and plan.targets == raw["test"]
    assert plan.seeds == [100, 13, 21, 42, 87]
    assert Path(plan.data_dir) == (require_shared_data() / "metaicl").resolve()
    assert plan.warnings == []


def test_make_plan_explicit_targets_override_setting(tmp_path):
    preset = shared_preset(tmp_path, 'setting = "class_to_class"\ntargets = ["glue-sst2"]\nseeds = [13, 42]')
    plan = make_plan(preset)
    assert plan.targets == ["glue-sst2"] and plan.seeds == [13, 42]
    assert plan.sources  # from the setting


def test_make_plan_unknown_target(tmp_path):
    message = plan_error(shared_preset(tmp_path, 'targets = ["glue-sst2", "no-such-task"]'))
    assert "data.targets" in message and "no-such-task" in message


def test_make_plan_unknown_source(tmp_path):
    message = plan_error(shared_preset(tmp_path, 'sources = ["no-such-source"]\ntargets = ["glue-sst2"]'))
    assert "data.sources" in message and "no-such-source" in message


def test_make_plan_unknown_setting(tmp_path):
    message = plan_error(shared_preset(tmp_path, 'setting = "no_such_setting"'))
    assert "data.setting" in message and "no_such_setting" in message


def test_make_plan_missing_data_dir(tmp_path):
    path = write_preset(tmp_path, f'name = "x"\n[data]\ndir = "{tmp_path / "missing"}"\ntargets = ["a"]\n')
    preset, _ = load_preset(str(path))
    message = plan_error(preset)
    assert "data.dir" in message and str(tmp_path / "missing") in message


def test_make_plan_target_without_test_file(tmp_path):
    tasks = require_shared_data() / "metaicl"
    no_test = sorted(d.name for d in tasks.iterdir() if d.is_dir() and not list(d.glob("*_test.jsonl")))
    assert no_test, "expected source-only tasks in the shared data"
    task = no_test[0]
    message = plan_error(shared_preset(tmp_path, f'targets = ["{task}"]'))
    assert "data.targets" in message and task in message and "test" in message
    # the same task is fine as a source
    plan = make_plan(shared_preset(tmp_path, f'sources = ["{task}"]\ntargets = ["glue-sst2"]'))
    assert plan.sources == [task]


def test_make_plan_seeds_a_task_lacks(tmp_path):
    message = plan_error(shared_preset(tmp_path, 'targets = ["glue-sst2"]\nseeds = [13, 7]'))
    assert "data.seeds" in message and "glue-sst2" in message and "7" in message


def test_make_plan_empty_targets(tmp_path):
    message = plan_error(shared_preset(tmp_path, 'sources = ["glue-rte"]\ntargets = []'))
    assert "data.targets" in message


def test_make_plan_overlap_is_a_warning(tmp_path):
    preset = shared_preset(tmp_path, 'sources = ["glue-sst2", "glue-rte"]\ntargets = ["glue-sst2"]\nseeds = [13]')
    plan = make_plan(preset)
    assert plan.targets == ["glue-sst2"]
    assert len(plan.warnings) == 1 and "glue-sst2" in plan.warnings[0] and "overlap" in plan.warnings[0]
    disjoint = make_plan(shared_preset(tmp_path, 'sources = ["glue-rte"]\ntargets = ["glue-sst2"]\nseeds = [13]'))
    assert disjoint.warnings == []


# ---- through the CLI -----------------------------------------------------------------------------

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
    from engine.runs import create_run, write_json_atomic
    from engine.store import RunIndex

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
    names = [line.strip() for line in result.stdout.splitlines()[1:]]
    assert "demo" in names


def test_mpt_tui_entry_point_presets(tmp_path):
    import shutil

    exe = shutil.which("mpt-tui")
    if exe is None:
        pytest.skip("mpt-tui is not on PATH")
    result = subprocess.run([exe, "presets"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0 and "demo" in result.stdout.split()
