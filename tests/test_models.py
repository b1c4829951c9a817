"""Tests for engine.compute.models: finding and loading backbones (all offline)."""

from __future__ import annotations

import time

import pytest
import torch

from engine.compute import models
from engine.store.models import ModelNotFoundError, is_pulled
from engine.compute.models import load_pretrained, resolve_model

EMBEDDED = "smollm2-135m"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("MPT_TUI_CACHE", str(cache))
    return cache


# ---------------------------------------------------------------- local directories


def test_load_pretrained_causal_llama(tiny_llama):
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

    model, tokenizer, source = load_pretrained(str(tiny_llama))
    assert isinstance(model, LlamaForCausalLM)
    assert not model.config.is_encoder_decoder
    assert isinstance(tokenizer, PreTrainedTokenizerBase)
    assert tokenizer.eos_token_id == model.config.eos_token_id
    assert source == str(tiny_llama)


def test_load_pretrained_encoder_decoder_t5(tiny_t5):
    from transformers import T5ForConditionalGeneration
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    model, tokenizer, source = load_pretrained(str(tiny_t5))
    assert isinstance(model, T5ForConditionalGeneration)
    assert model.config.is_encoder_decoder
    assert type(model).__name__ == MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES[model.config.model_type]
    assert tokenizer.pad_token_id == model.config.pad_token_id
    assert source == str(tiny_t5)


def test_load_pretrained_reads_saved_weights(tiny_llama):
    from safetensors.torch import load_file

    model, _, _ = load_pretrained(str(tiny_llama))
    saved = load_file(str(tiny_llama / "model.safetensors"))
    state = model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name


def test_directory_without_config_is_refused(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ModelNotFoundError) as info:
        load_pretrained(str(folder))
    assert str(folder) in str(info.value) and "config.json" in str(info.value)


# ---------------------------------------------------------------- names


def test_unknown_model_name_says_what_was_tried(empty_cache):
    name = "no-such-org/no-such-model-xyz"
    with pytest.raises(ModelNotFoundError) as info:
        load_pretrained(name)
    message = str(info.value)
    assert name in message
    assert "tried" in message
    assert "local directory" in message
    assert EMBEDDED in message  # the embedded models it knows
    assert "hub" in message


def test_resolve_unpulled_embedded_model_says_how_to_pull(empty_cache):
    assert not is_pulled(EMBEDDED)
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(EMBEDDED, pull=False)
    assert f"mpt-tui models pull {EMBEDDED}" in str(info.value)
    assert not any(empty_cache.rglob("*")), "refusing must not create anything in the cache"


def test_resolve_pulled_embedded_model_uses_cache_dir(empty_cache):
    target = empty_cache / "models" / EMBEDDED
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    assert is_pulled(EMBEDDED)
    assert models.embedded_model_dir(EMBEDDED) == target
    assert resolve_model(EMBEDDED, pull=False) == str(target)


def test_resolve_hub_name_and_directory(tiny_t5, empty_cache):
    assert resolve_model("some-org/some-model", pull=False) == "some-org/some-model"
    assert resolve_model(str(tiny_t5), pull=False) == str(tiny_t5)


def test_pull_unknown_embedded_model_is_refused(empty_cache):
    with pytest.raises(ModelNotFoundError, match="unknown embedded model"):
        models.pull_model("no-such-embedded-model", progress=lambda m: None)
    assert not any(empty_cache.rglob("*"))


# ---------------------------------------------------------------- the embedded model


@pytest.mark.serial  # a wall-clock bound
def test_embedded_model_loads_quickly_through_backbone():
    if not is_pulled(EMBEDDED):
        pytest.skip(f"{EMBEDDED} is not pulled into {models.embedded_model_dir(EMBEDDED)} "
                    f"(run `mpt-tui models pull {EMBEDDED}`; CI pulls it)")
    from transformers import AutoModelForCausalLM, LlamaForCausalLM  # noqa: F401  (import time is not load time)

    from engine.compute.backbone import Backbone
    from engine.compute.prompt import initial_prompt

    start = time.perf_counter()
    backbone = Backbone.load(EMBEDDED)
    elapsed = time.perf_counter() - start
    assert isinstance(backbone.model, LlamaForCausalLM)
    assert not backbone.is_encoder_decoder
    assert backbone.model.config.hidden_size == 576
    assert backbone.hidden_size == 576
    assert elapsed < 10, f"loading {EMBEDDED} took {elapsed:.1f} s"
    # and it scores a prompted example
    prompt = initial_prompt(backbone, length=2, method="vocab", seed=0)
    with torch.no_grad():
        loss = backbone.loss(prompt, ["sentence: well worth revisiting"], ["positive"])
    assert torch.isfinite(loss) and loss > 0
