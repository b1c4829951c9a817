"""List-valued preset keys are checked like scalar ones: each element by the rule declared next to the key
(engine.base.fields.option), no repeats where stated, non-empty where the run needs an element; the rule is
applied to every list-typed field of every section (engine.experiment.config.check_lists)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
from test_config import DEMO_DATA, preset_error

from conftest import REPO
from engine.base.fields import ElementRuleMissing, has_element_rule, option
from engine.experiment.config import Preset, PresetError, list_fields, preset_from_dict
from engine.experiment.methods import METHODS

EXPECTED_LIST_KEYS = {"data.sources", "data.targets", "data.seeds", "downstream.learning_rates", "upstream.methods",
                      "analysis.similarity"}


def test_every_list_field_declares_its_element_rule():
    fields = dict(list_fields(Preset()))
    assert set(fields) >= EXPECTED_LIST_KEYS  # the walk finds every section's lists (method tables included)
    for key, f in fields.items():
        assert has_element_rule(f.metadata), key
        assert "unique" in f.metadata and "min_items" in f.metadata, key
    for method in METHODS.values():  # the method tables are walked too (none has a list today)
        for f in dataclasses.fields(method.config):
            if isinstance(f.default_factory, type(lambda: 0)) and isinstance(f.default_factory(), list):
                assert has_element_rule(f.metadata), (method.name, f.name)


def test_a_list_option_without_an_element_rule_cannot_be_declared():
    with pytest.raises(ElementRuleMissing):
        option([1, 2])
    option([1, 2], minimum=0)  # 0 is a rule, not "no rule"


@pytest.mark.parametrize("assignment, message", [
    # learning rates: finite, above zero, no repeats, at least one
    ("downstream.learning_rates=[0.3, 0.0]", "downstream.learning_rates[1] must be above 0, got 0.0"),
    ("downstream.learning_rates=[-0.1]", "downstream.learning_rates[0] must be above 0"),
    ("downstream.learning_rates=[0.3, nan]", "downstream.learning_rates[1] must be a finite number"),
    ("downstream.learning_rates=[0.3, 0.3]", "downstream.learning_rates: 0.3 is listed twice"),
    ("downstream.learning_rates=[]", "downstream.learning_rates must not be empty"),
    # seeds: non-negative integers, no repeats, at least one
    ("data.seeds=[1, -2]", "data.seeds[1] must be at least 0, got -2"),
    ("data.seeds=[1, 1]", "data.seeds: 1 is listed twice"),
    ("data.seeds=[1.5]", "data.seeds[0] must be an integer"),
    ("data.seeds=[]", "data.seeds must not be empty"),
    # tasks: non-empty strings, no repeats
    ('data.targets=["demo-emotion", ""]', "data.targets[1] must be a non-empty string"),
    ('data.targets=["demo-emotion", "demo-emotion"]', "data.targets: 'demo-emotion' is listed twice"),
    ('data.sources=["demo-spam", "  "]', "data.sources[1] must be a non-empty string"),
    ('data.sources=["demo-spam", "demo-spam"]', "data.sources: 'demo-spam' is listed twice"),
    # kinds from their choices, no repeats
    ('analysis.similarity=["prompt", "vibes"]', "analysis.similarity[1] must be one of prompt, text, got 'vibes'"),
    ('analysis.similarity=["text", "text"]', "analysis.similarity: 'text' is listed twice"),
    ('upstream.methods=["maml", "nope"]', "upstream.methods[1] must be one of"),
    ('upstream.methods=["maml", "maml"]', "upstream.methods: 'maml' is listed twice"),
])
def test_bad_list_values_are_one_line_errors_naming_the_key(assignment, message):
    error = preset_error("demo", [assignment])
    assert message in error and "(with --set)" in error


def test_lists_from_a_file_and_from_config_json_are_checked_too(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[downstream]\nlearning_rates = [0.3, 0.0]\n', encoding="utf-8")
    error = preset_error(str(path), data_dir=str(DEMO_DATA))
    assert error.startswith(f"{path}: downstream.learning_rates[1] must be above 0")
    with pytest.raises(PresetError, match=r"^config.json: data.seeds: 3 is listed twice$"):
        preset_from_dict({"data": {"seeds": [3, 3]}})
    assert preset_from_dict({"data": {"sources": "nearest:2"}}).data.sources == "nearest:2"  # the string form


def _cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mpt_tui.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


@pytest.mark.parametrize("sets, needle", [
    (["data.seeds=[1, 1]"], "data.seeds: 1 is listed twice"),
    # a method that learns on source tasks, with none: refused by the plan, before a run directory exists
    (['data.setting=""', 'data.targets=["demo-emotion"]', 'upstream.methods=["maml"]'],
     "data.sources: the source task list is empty"),
])
def test_the_cli_refuses_with_exit_2_and_writes_nothing(tmp_path, sets, needle):
    runs = tmp_path / "runs"
    args = ["--preset", "demo", "--runs-dir", str(runs)]
    for s in sets:
        args += ["--set", s]
    proc = _cli(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert not runs.exists() or not any(runs.iterdir())
