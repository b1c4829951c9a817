"""Presets (engine.experiment.config): parsing, validation with one-line errors naming file and key, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.experiment.config import DownstreamConfig, Preset, PresetError, builtin_presets_dir, list_builtin_presets, load_preset
from engine.experiment.paper import PAPER_PRESETS, PAPER_VALUES, differs
from engine.experiment.plan import make_plan
from engine.base.tomlcompat import tomllib

from conftest import REPO, require_shared_data

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
    if path.stem == "non_paraphrase_to_paraphrase":  # the shared data has none of its four targets
        with pytest.raises(PresetError, match="none of the 4 target tasks"):
            make_plan(preset)
        return
    plan = make_plan(preset)  # and it runs against its data
    assert plan.targets


def _value(raw: dict, key: str):
    for part in key.split("."):
        raw = raw[part]
    return raw


@pytest.mark.parametrize("name", [*PAPER_PRESETS, "hr_to_lr"])
def test_paper_presets_resolve_to_the_authors_procedure(name):
    """Every key of engine.experiment.paper's table holds the authors' value (docs/paper-fidelity.md), among them
    batch 16 on one device (their 2 GPUs x 8) and no gradient clipping."""
    preset, _ = load_preset(name, require_data_dir=False)
    raw = preset.to_dict()
    wrong = {key: _value(raw, key) for key in PAPER_VALUES if differs(key, _value(raw, key))}
    assert not wrong, f"{name} is not the authors' procedure for {wrong}"
    assert preset.downstream.batch_size == 16 and preset.downstream.grad_clip == 0.0
    assert preset.upstream.outer_weight_decay == 1e-5
    if name != "hr_to_lr":
        assert preset.data.setting == f"qin2023:{name}"
    assert "not in the paper" in preset.description if name == "hr_to_lr" else "authors' procedure" in preset.description


@pytest.mark.parametrize("name", ["demo", "class_to_class_cpu"])
def test_the_cpu_presets_say_they_are_not_the_papers_procedure(name):
    preset, _ = load_preset(name, require_data_dir=False)
    assert "not the paper's procedure" in preset.description
    assert preset.model.dropout == "off" and preset.downstream.prediction == "auto"  # fast: rank classification


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


@pytest.mark.parametrize("assignment, key", [("downstream.learning_rates=[nan]", "downstream.learning_rates[0]"),
                                             ("downstream.learning_rates=[0.3, inf]", "downstream.learning_rates[1]"),
                                             ("upstream.outer_lr=-inf", "upstream.outer_lr"),
                                             ("upstream.maml.inner_lr=nan", "upstream.maml.inner_lr"),
                                             ("downstream.weight_decay=inf", "downstream.weight_decay")])
def test_non_finite_numbers_are_refused(assignment, key):
    """A NaN learning rate used to be accepted and train the whole run on NaN."""
    message = preset_error("demo", [assignment])
    assert f"{key} must be a finite number" in message


def test_downstream_settings_reach_a_job_through_one_translation():
    """`DownstreamConfig.tuning_config` is the one place [downstream] becomes a job's settings: every
    job setting is a [downstream] key of the same default, and a changed key reaches the job."""
    import dataclasses

    from engine.experiment.config import TUNING_KEYS, DownstreamConfig, TuningConfig

    down_fields = {f.name: f for f in dataclasses.fields(DownstreamConfig)}
    job_fields = {f.name for f in dataclasses.fields(TuningConfig)} - {"learning_rate", "steps", "placement"}
    assert job_fields == set(TUNING_KEYS) and set(TUNING_KEYS) <= set(down_fields)
    defaults = TuningConfig(learning_rate=0.1, steps=1)
    assert all(getattr(defaults, k) == getattr(DownstreamConfig(), k) for k in TUNING_KEYS if k != "checkpoint_every")
    changed = {"batch_size": 3, "optimizer": "adamw", "eval_every": 7, "eval_batch_size": 5, "prediction": "rank",
               "max_new_tokens": 9, "num_beams": 4, "repetition_penalty": 2.5, "early_stopping": True,
               "grad_clip": 0.5, "weight_decay": 0.01, "checkpoint_every": 11}
    assert set(changed) == set(TUNING_KEYS)
    down = DownstreamConfig(steps=40, max_epochs=2, **changed)
    job = down.tuning_config(0.25, 16, "after")
    assert (job.learning_rate, job.steps, job.placement) == (0.25, 2 * 6, "after")  # 2 epochs of ceil(16/3)
    assert all(getattr(job, k) == v for k, v in changed.items())
