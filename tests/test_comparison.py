"""The full source-to-target protocol: upstream algorithms, then the downstream grid from each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, require_shared_data
from engine.prompt import load_prompt, save_prompt
from engine.runs import list_runs, read_json

METHODS = ["mtl", "maml", "fomaml", "reptile"]


def _preset(tmp_path, model, maml_extra: str = "", methods=METHODS) -> str:
    data = require_shared_data()
    path = tmp_path / "cmp.toml"
    path.write_text(f"""
name = "cmp"
[data]
dir = "{data}"
sources = ["glue-sst2", "trec", "emotion"]
targets = ["poem_sentiment", "tweet_eval-stance_atheism"]
seeds = [13, 42]
[model]
name = "{model}"
max_input_length = 40
[prompt]
length = 4
[downstream]
learning_rates = [0.3]
steps = 3
batch_size = 4
eval_every = 3
max_test_examples = 20
[upstream]
methods = {json.dumps(methods)}
steps = 3
checkpoint_every = 1
[upstream.maml]
inner_lr = 0.5
{maml_extra}
[upstream.reptile]
inner_steps = 2
""")
    return str(path)


def _run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mpt_tui.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)


def test_comparison_table_has_every_method(tmp_path, tiny_llama):
    runs = tmp_path / "runs"
    proc = _run("--preset", _preset(tmp_path, tiny_llama), "--runs-dir", str(runs))
    assert proc.returncode == 0, proc.stderr
    for label in ("PT", "MTL", "MAML", "FoMAML", "Reptile", "gain over PT"):
        assert label in proc.stdout
    (run,) = list_runs(runs)
    results = read_json(run.results_path)
    assert sorted(results["tasks"]) == sorted(["pt"] + METHODS)
    for method in METHODS:
        prompt, meta = load_prompt(run.prompts_dir / f"upstream-{method}.safetensors")
        assert meta["method"] == method and prompt.shape[0] == 4
        assert read_json(run.cells_dir / f"{method}__poem_sentiment__s13__lr0.3.json")["method"] == method
    learned = [load_prompt(run.prompts_dir / f"upstream-{m}.safetensors")[0] for m in METHODS]
    assert all(not torch.equal(learned[0], other) for other in learned[1:])  # each method learned its own
    events = run.events()
    assert {e["method"] for e in events if e.get("stage") == "upstream"} == set(METHODS)


def test_downstream_reuses_a_given_upstream_prompt(tmp_path, tiny_llama):
    from engine.backbone import Backbone

    hidden = Backbone.load(str(tiny_llama)).hidden_size
    given = torch.randn(4, hidden)
    save_prompt(tmp_path / "given.safetensors", given, model=str(tiny_llama))
    runs = tmp_path / "runs"
    preset = _preset(tmp_path, tiny_llama, maml_extra=f'prompt_file = "{tmp_path / "given.safetensors"}"',
                     methods=["maml"])
    # learning rate 0: the tuned prompt stays at its initialisation, which must be the given one
    proc = _run("--preset", preset, "--runs-dir", str(runs), "--set", "downstream.learning_rates=[0.0]")
    assert proc.returncode == 0, proc.stderr
    (run,) = list_runs(runs)
    assert not (run.path / "checkpoints" / "upstream-maml.pt").exists()  # nothing was retrained
    assert not any(e.get("stage") == "upstream" for e in run.events())
    for seed in (13, 42):
        cell = read_json(run.cells_dir / f"maml__poem_sentiment__s{seed}__lr0.json")
        assert torch.equal(load_prompt(run.path / cell["prompt"])[0], given)
        pt_cell = read_json(run.cells_dir / f"pt__poem_sentiment__s{seed}__lr0.json")
        assert not torch.equal(load_prompt(run.path / pt_cell["prompt"])[0], given)


@pytest.mark.parametrize("assignment, key", [
    ('upstream.methods=["magic"]', "upstream.methods"),
    ("upstream.steps=many", "upstream.steps"),
    ("upstream.maml.inner_lr=fast", "upstream.maml.inner_lr"),
    ("upstream.reptile.inner_steps=0", "upstream.reptile.inner_steps"),
])
def test_bad_upstream_settings_are_refused_before_anything_runs(tmp_path, tiny_llama, assignment, key):
    runs = tmp_path / "runs"
    proc = _run("--preset", _preset(tmp_path, tiny_llama), "--runs-dir", str(runs), "--set", assignment)
    assert proc.returncode == 2
    assert key in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not list_runs(runs)


def test_empty_source_list_is_refused(tmp_path, tiny_llama):
    setting = tmp_path / "nosource.json"
    setting.write_text(json.dumps({"train": [], "test": ["poem_sentiment"]}))
    preset = _preset(tmp_path, tiny_llama)
    preset_path = tmp_path / "p.toml"
    preset_path.write_text(open(preset).read().replace('sources = ["glue-sst2", "trec", "emotion"]\n', "")
                           .replace('targets = ["poem_sentiment", "tweet_eval-stance_atheism"]',
                                    f'setting = "{setting}"'))
    proc = _run("--preset", str(preset_path), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "data.sources" in proc.stderr and "empty" in proc.stderr


def test_overlapping_sources_and_targets_warn(tmp_path, tiny_llama):
    path = tmp_path / "cmp.toml"
    _preset(tmp_path, tiny_llama, methods=["mtl"])
    path.write_text(path.read_text().replace('sources = ["glue-sst2", "trec", "emotion"]',
                                             'sources = ["glue-sst2", "poem_sentiment"]'))
    proc = _run("--preset", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    assert "warning: source and target tasks overlap: poem_sentiment" in proc.stderr
