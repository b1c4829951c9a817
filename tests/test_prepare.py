"""Preparing a run (engine.runner.prepare): one checked path from a preset to a run directory."""

from __future__ import annotations

import json
import shutil

import pytest

from engine.store.checkpoint import save_checkpoint, saved_step
from engine.experiment.config import PresetError, preset_from_dict
from engine.runner.prepare import check_preset, model_config_json, prepare_run, prompt_file_shape
from engine.experiment.plan import Plan
from engine.store.run_dir import list_runs

from conftest import DEMO_DATA


def test_prepare_run_writes_a_config_the_worker_reads_back(tmp_path):
    prepared = check_preset("demo", ["prompt.length=5", "upstream.fomaml.inner_lr=0.01"])
    run = prepare_run(tmp_path / "runs", prepared)
    config = run.config()
    assert config["overrides"] == ["prompt.length=5", "upstream.fomaml.inner_lr=0.01"]
    preset = preset_from_dict(config["preset"])
    assert preset == prepared.preset
    assert preset.upstream.fomaml.inner_lr == 0.01 and preset.upstream.fomaml.support_batch == 4
    assert Plan(**config["plan"]) == prepared.plan
    assert run.status()["state"] == "queued"


def test_a_run_directory_written_before_the_registry_still_loads():
    """config.json of earlier versions: the same TOML-shaped tables, per method under upstream."""
    old = {"name": "old", "upstream": {"methods": ["maml", "mtl"], "steps": 3,
                                       "maml": {"inner_lr": 0.1, "inner_steps": 1, "support_batch": 2,
                                                "query_batch": 2, "tasks_per_step": 2, "prompt_file": ""},
                                       "mtl": {"batch_size": 4, "prompt_file": ""}}}
    preset = preset_from_dict(old)
    assert preset.upstream.maml.inner_lr == 0.1 and preset.upstream.reptile.inner_steps == 10


def test_an_old_checkpoint_without_its_step_file_is_still_counted(tmp_path):
    import torch

    path = tmp_path / "cell.pt"
    torch.save({"step": 7, "prompt": torch.zeros(2, 2)}, path)  # as written before the .json sidecar
    assert saved_step(path) == 7
    save_checkpoint(path, {"step": 9})
    assert saved_step(path) == 9 and json.loads(path.with_suffix(".json").read_text()) == {"step": 9}
    assert saved_step(tmp_path / "missing.pt") == 0


def test_an_unknown_model_is_refused_with_the_key_and_no_run_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PresetError, match=r"^model\.name: model 'no-such-org/no-such-model' not found"):
        check_preset("demo", ['model.name="no-such-org/no-such-model"'])
    with pytest.raises(PresetError, match=r"model\.name: directory .* has no config\.json"):
        check_preset("demo", [f'model.name="{tmp_path}"'])
    assert list_runs(tmp_path) == []


def test_model_config_is_read_as_json(tiny_llama, tiny_t5):
    assert model_config_json(str(tiny_llama))["hidden_size"] == 32
    assert model_config_json(str(tiny_t5))["d_model"] == 32


def test_prompt_files_are_checked_from_their_header(tmp_path, tiny_llama):
    import torch

    from engine.compute.prompt import save_prompt

    good = save_prompt(tmp_path / "p.safetensors", torch.zeros(5, 32), model="tiny")
    assert prompt_file_shape(good) == ((5, 32), {"model": "tiny", "length": "5", "dim": "32"})
    base = [f'model.name="{tiny_llama}"', 'prompt.init="file"']
    check_preset("demo", base + [f'prompt.file="{good}"', "prompt.length=5"])
    with pytest.raises(PresetError, match=r"^prompt\.file: .* holds 5 vectors, but prompt\.length is 4"):
        check_preset("demo", base + [f'prompt.file="{good}"', "prompt.length=4"])
    wide = save_prompt(tmp_path / "w.safetensors", torch.zeros(5, 7), model="other")
    with pytest.raises(PresetError, match=r"vectors of size 7 \(saved for model other\).*hidden size is 32"):
        check_preset("demo", base + [f'prompt.file="{wide}"', "prompt.length=5"])
    damaged = tmp_path / "d.safetensors"
    damaged.write_bytes(b"\x05\x00")
    with pytest.raises(PresetError, match=r"^prompt\.file: .* not a readable safetensors prompt"):
        check_preset("demo", base + [f'prompt.file="{damaged}"', "prompt.length=5"])
    with pytest.raises(PresetError, match=r"^upstream\.maml\.prompt_file: "):
        check_preset("demo", [f'model.name="{tiny_llama}"', "prompt.length=4",
                              f'upstream.maml.prompt_file="{good}"'])


def test_the_authors_vocabulary_pool_is_checked_against_the_model_before_a_run_exists(tmp_path, tiny_llama):
    """t5_c4_top5000 names T5 token ids: a smaller vocabulary is refused (one line, nothing written), another
    model type gets a warning."""
    preset = tmp_path / "p.toml"
    preset.write_text(f'[data]\ndir = "{DEMO_DATA}"\nsetting = "demo"\nseeds = [1]\n[model]\nname = "{tiny_llama}"\n'
                      f'[prompt]\nvocab_pool = "t5_c4_top5000"\n', encoding="utf-8")
    with pytest.raises(PresetError, match=r"prompt.vocab_pool: .*up to 8857, but model .* has \d+ tokens"):
        check_preset(str(preset))
    big = tmp_path / "big"
    shutil.copytree(tiny_llama, big)
    config = json.loads((big / "config.json").read_text())
    (big / "config.json").write_text(json.dumps({**config, "vocab_size": 32128}))
    preset.write_text(preset.read_text().replace(str(tiny_llama), str(big)), encoding="utf-8")
    warnings = check_preset(str(preset)).plan.warnings
    assert any("t5_c4_top5000" in w and "llama" in w for w in warnings)


@pytest.mark.parametrize("kind, length, needle", [("llama", 2000, "max_position_embeddings 1024"),
                                                  ("t5", 100000, "more than the 4096 allowed")])
def test_a_prompt_longer_than_the_model_takes_is_refused_before_a_run_exists(tmp_path, tiny_llama, tiny_t5, kind,
                                                                             length, needle):
    """--set prompt.length=100000 used to be accepted and then exhaust the memory."""
    model = {"llama": tiny_llama, "t5": tiny_t5}[kind]
    preset = tmp_path / "p.toml"
    preset.write_text(f'[data]\ndir = "{DEMO_DATA}"\nsetting = "demo"\nseeds = [1]\n[model]\nname = "{model}"\n',
                      encoding="utf-8")
    with pytest.raises(PresetError, match=needle) as info:
        check_preset(str(preset), [f"prompt.length={length}"])
    assert str(info.value).startswith("prompt.length: ")
    assert check_preset(str(preset), ["prompt.length=20"]).preset.prompt.length == 20
    assert not (tmp_path / "runs").exists()
