"""The protocol (engine.protocol): plans checked against the data, per-split selection on dev, aggregation."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from engine.config import Preset, PresetError, load_preset
from engine.protocol import make_plan, select_and_aggregate

from conftest import EXPECTED_CHOICE, REPO, cell, require_shared_data, synthetic_cells

PRESETS_DIR = REPO / "presets"


def test_select_and_aggregate_picks_best_dev_per_split():
    results = select_and_aggregate(synthetic_cells())
    chosen = {(s["method"], s["task"], s["seed"]): (s["lr"], s["test"]) for s in results["splits"]}
    assert chosen == EXPECTED_CHOICE


def test_select_ties_keep_first_listed():
    a = cell("pt", "t", 13, 0.3, 0.5, 0.1)
    b = cell("pt", "t", 13, 0.1, 0.5, 0.9)
    assert select_and_aggregate([a, b])["splits"][0]["lr"] == 0.3
    assert select_and_aggregate([b, a])["splits"][0]["lr"] == 0.1


def test_select_all_nan_dev_keeps_a_split():
    results = select_and_aggregate([cell("pt", "t", 13, 0.3, float("nan"), 0.4),
                                    cell("pt", "t", 13, 0.1, float("nan"), 0.6)])
    assert len(results["splits"]) == 1 and results["splits"][0]["lr"] == 0.3


def test_aggregate_mean_population_std_and_task_mean():
    results = select_and_aggregate(synthetic_cells())
    pt = results["tasks"]["pt"]
    assert sorted(pt) == ["task-a", "task-b", "task-c"]
    assert pt["task-a"]["mean"] == pytest.approx(0.8)
    assert pt["task-a"]["std"] == pytest.approx(math.sqrt(((0.0) ** 2 + 0.1 ** 2 + 0.1 ** 2) / 3))
    assert pt["task-a"]["std"] == pytest.approx(statistics.pstdev([0.8, 0.7, 0.9]))
    assert pt["task-a"]["std"] != pytest.approx(statistics.stdev([0.8, 0.7, 0.9]))  # population, not sample
    assert (pt["task-a"]["n"], pt["task-a"]["metric"]) == (3, "accuracy")
    assert pt["task-b"]["mean"] == pytest.approx(0.4)
    assert pt["task-b"]["std"] == pytest.approx(math.sqrt(0.08 / 3))
    assert pt["task-b"]["metric"] == "f1"
    assert pt["task-c"] == {"mean": pytest.approx(0.3), "std": 0.0, "n": 1, "metric": "accuracy"}
    assert results["mean"]["pt"] == pytest.approx((0.8 + 0.4 + 0.3) / 3)
    assert results["tasks"]["mpt"] == {"task-a": {"mean": pytest.approx(0.2), "std": 0.0, "n": 1,
                                                  "metric": "accuracy"}}
    assert results["mean"]["mpt"] == pytest.approx(0.2)
    # results.json round trip (NaN dev scores survive as JSON NaN)
    assert json.loads(json.dumps(results, allow_nan=True))["mean"]["pt"] == pytest.approx(0.5)


DEMO_DATA = PRESETS_DIR / "demo-data"


def write_preset(tmp_path: Path, body: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


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
