"""Tests for engine.compute.prompt: initialising soft prompts, saving and loading them."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from engine.compute.backbone import Backbone
from engine.compute.prompt import (
    INIT_METHODS,
    PromptFileError,
    initial_prompt,
    load_prompt,
    save_prompt,
    vocab_pool,
)


@pytest.fixture
def backbone(tiny_model) -> Backbone:
    return Backbone.load(str(tiny_model))


def _random_prompt(length: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(length, dim, generator=torch.Generator().manual_seed(seed))


def _row_index(matrix: torch.Tensor, row: torch.Tensor) -> int | None:
    """Index of the row of `matrix` bit-equal to `row`, or None."""
    hits = (matrix == row).all(dim=1).nonzero()
    return int(hits[0]) if len(hits) else None


def _row_ids(matrix: torch.Tensor, rows: torch.Tensor) -> list[int | None]:
    """For many rows at once: the index of the bit-equal row of `matrix`, or None."""
    index = {tuple(r): i for i, r in enumerate(matrix.tolist())}
    return [index.get(tuple(r)) for r in rows.tolist()]


# ---------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    prompt = _random_prompt(7, 24)
    path = save_prompt(tmp_path / "sub" / "p.safetensors", prompt, model="org/some-model",
                       extra={"task": "glue-sst2", "step": "120"})
    assert path == tmp_path / "sub" / "p.safetensors" and path.is_file()
    assert not list(path.parent.glob("*.tmp")), "the temporary file must not be left behind"

    loaded, meta = load_prompt(path, expected_dim=24, expected_length=7)
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded, prompt)
    assert meta["model"] == "org/some-model"
    assert meta["length"] == "7" and meta["dim"] == "24"
    assert meta["task"] == "glue-sst2" and meta["step"] == "120"


def test_save_accepts_trainable_and_bf16_prompts(tmp_path):
    prompt = _random_prompt(3, 8).requires_grad_(True)
    loaded, _ = load_prompt(save_prompt(tmp_path / "a.safetensors", prompt, model="m"))
    assert torch.equal(loaded, prompt.detach())
    half = _random_prompt(3, 8).bfloat16()
    loaded, meta = load_prompt(save_prompt(tmp_path / "b.safetensors", half, model="m"))
    assert loaded.dtype == torch.float32 and torch.equal(loaded, half.float())
    assert meta["dim"] == "8"


def test_wrong_hidden_size_names_file_and_both_sizes(tmp_path):
    path = save_prompt(tmp_path / "small.safetensors", _random_prompt(5, 24), model="tiny-24")
    with pytest.raises(PromptFileError) as info:
        load_prompt(path, expected_dim=576)
    message = str(info.value)
    assert str(path) in message
    assert "24" in message and "576" in message
    assert "tiny-24" in message  # the model the file was saved for


def test_wrong_length_names_file_and_both_lengths(tmp_path):
    path = save_prompt(tmp_path / "p.safetensors", _random_prompt(7, 16), model="m")
    with pytest.raises(PromptFileError) as info:
        load_prompt(path, expected_dim=16, expected_length=100)
    message = str(info.value)
    assert str(path) in message and "7" in message and "100" in message


def test_prompt_file_error_is_a_value_error():
    assert issubclass(PromptFileError, ValueError)


@pytest.mark.parametrize("damage", ["random_bytes", "truncated", "empty", "missing", "no_prompt_key", "wrong_rank"])
def test_damaged_file_raises_prompt_file_error(tmp_path, damage):
    path = tmp_path / f"{damage}.safetensors"
    if damage == "random_bytes":
        path.write_bytes(os.urandom(512))
    elif damage == "truncated":
        save_prompt(path, _random_prompt(8, 32), model="m")
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "no_prompt_key":
        save_file({"weights": torch.zeros(2, 3)}, str(path))
    elif damage == "wrong_rank":
        save_file({"prompt": torch.zeros(2, 3, 4)}, str(path))
    with pytest.raises(PromptFileError) as info:
        load_prompt(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- initialisation


def test_vocab_init_is_seeded_and_uses_embedding_rows(backbone):
    weights = backbone.embeddings.weight.detach().float()
    a = initial_prompt(backbone, length=6, method="vocab", seed=1)
    b = initial_prompt(backbone, length=6, method="vocab", seed=1)
    c = initial_prompt(backbone, length=6, method="vocab", seed=2)
    assert a.shape == (6, backbone.hidden_size) and a.dtype == torch.float32
    assert a.device.type == "cpu" and not a.requires_grad
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    special = set(backbone.tokenizer.all_special_ids)
    for prompt in (a, c):
        for row in prompt:
            idx = _row_index(weights, row)
            assert idx is not None, "a vocab-initialised vector must be an embedding row"
            assert idx not in special, "special tokens are not sampled"
    # a copy, not a view of the model's weights
    a.add_(1.0)
    assert torch.equal(backbone.embeddings.weight.detach().float(), weights)


def test_vocab_init_never_samples_special_tokens(backbone):
    weights = backbone.embeddings.weight.detach().float()
    vocab = weights.shape[0]
    # many more draws than the tiny vocabulary has tokens, so a special token would be hit
    prompt = initial_prompt(backbone, length=6 * vocab, method="vocab", seed=0)
    ids = _row_ids(weights, prompt)
    assert None not in ids
    special = set(backbone.tokenizer.all_special_ids)
    assert special and not special & set(ids)
    assert len(set(ids)) > vocab // 2  # and the draw spreads over the vocabulary


def test_vocab_init_samples_without_replacement_from_the_pool(backbone):
    """The authors draw the sampled slots with random.sample: distinct tokens of the 5000 most frequent."""
    weights = backbone.embeddings.weight.detach().float()
    pool = vocab_pool("first_5000", weights.shape[0], set(backbone.tokenizer.all_special_ids))
    length = len(pool) - 1  # nearly the whole pool: drawing with replacement would repeat a token
    ids = _row_ids(weights, initial_prompt(backbone, length=length, method="vocab", seed=3))
    assert None not in ids and len(set(ids)) == length
    assert set(ids) <= set(pool)


def test_the_authors_vocabulary_pool_is_their_c4_top5000_list():
    pool = vocab_pool("t5_c4_top5000", 32128)
    assert len(pool) == len(set(pool)) == 5000
    assert pool[:5] == [3, 5, 6, 8, 7] and 2 not in pool and max(pool) == 8857  # utils.py skips id 2
    with pytest.raises(ValueError, match="t5_c4_top5000.*vocabulary has 800"):
        vocab_pool("t5_c4_top5000", 800)  # another tokenizer's ids mean other tokens


@pytest.mark.parametrize("task, text", [("tweet_eval-hate", "tweet eval hate"), ("glue-sst2", "glue sst2"),
                                        ("superglue-cb", "superglue cb")])
def test_task_name_init_is_the_authors_rule(backbone, task, text):
    """One slot = the mean embedding of all tokens of the name ('_' and '-' read as spaces), then
    distinct sampled tokens (CrossFit/utils.py getpromptembedding)."""
    weights = backbone.embeddings.weight.detach().float()
    length = 6
    prompt = initial_prompt(backbone, length=length, method="task_name", task_names=[task], seed=0)
    assert prompt.shape == (length, backbone.hidden_size)
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1
    torch.testing.assert_close(prompt[0], weights[torch.tensor(ids)].mean(0), rtol=1e-6, atol=1e-6)
    rest = _row_ids(weights, prompt[1:])
    assert None not in rest and len(set(rest)) == length - 1, "the other slots: distinct vocabulary rows"
    again = initial_prompt(backbone, length=length, method="task_name", task_names=[task], seed=0)
    assert torch.equal(prompt, again)


def test_upstream_task_name_init_has_one_slot_per_source_name_in_order(backbone):
    weights = backbone.embeddings.weight.detach().float()
    names = ["glue-sst2", "tweet_eval-hate", "ag_news"]
    prompt = initial_prompt(backbone, length=5, method="task_name", task_names=names, seed=0)
    for slot, name in enumerate(names):
        ids = backbone.tokenizer(name.replace("_", " ").replace("-", " "), add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(prompt[slot], weights[torch.tensor(ids)].mean(0), rtol=1e-6, atol=1e-6)
    assert None not in _row_ids(weights, prompt[3:])
    # as many names as slots or more: names only (the authors' "initialize finish early")
    short = initial_prompt(backbone, length=2, method="task_name", task_names=names, seed=0)
    assert torch.equal(short, prompt[:2])


@pytest.mark.parametrize("task, words", [("tweet_eval-hate", ["tweet", "eval", "hate"]),
                                         ("glue-sst2", ["glue", "sst2"])])
def test_task_words_init_puts_word_means_first(backbone, task, words):
    weights = backbone.embeddings.weight.detach().float()
    tok = backbone.tokenizer
    length = 6
    prompt = initial_prompt(backbone, length=length, method="task_words", task_names=[task], seed=0)
    assert prompt.shape == (length, backbone.hidden_size)
    for slot, word in enumerate(words):
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert ids
        expected = weights[torch.tensor(ids)].mean(0)
        torch.testing.assert_close(prompt[slot], expected, rtol=1e-6, atol=1e-6)
    for slot in range(len(words), length):
        assert _row_index(weights, prompt[slot]) is not None, f"slot {slot} should be a vocabulary row"
    again = initial_prompt(backbone, length=length, method="task_words", task_names=[task], seed=0)
    assert torch.equal(prompt, again)


def test_task_words_init_shorter_prompt_than_words(backbone):
    weights = backbone.embeddings.weight.detach().float()
    prompt = initial_prompt(backbone, length=2, method="task_words", task_names=["tweet_eval-hate"], seed=0)
    assert prompt.shape == (2, backbone.hidden_size)
    for slot, word in enumerate(["tweet", "eval"]):
        ids = backbone.tokenizer(word, add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(prompt[slot], weights[torch.tensor(ids)].mean(0), rtol=1e-6, atol=1e-6)


def test_file_init_loads_saved_prompt(backbone, tmp_path):
    saved = _random_prompt(5, backbone.hidden_size, seed=4)
    path = save_prompt(tmp_path / "init.safetensors", saved, model=backbone.name)
    loaded = initial_prompt(backbone, length=5, method="file", file=str(path))
    assert torch.equal(loaded, saved)


def test_file_init_checks_hidden_size_and_length(backbone, tmp_path):
    other_dim = backbone.hidden_size + 16
    path = save_prompt(tmp_path / "other.safetensors", _random_prompt(5, other_dim), model="bigger")
    with pytest.raises(PromptFileError) as info:
        initial_prompt(backbone, length=5, method="file", file=str(path))
    assert str(path) in str(info.value)
    assert str(other_dim) in str(info.value) and str(backbone.hidden_size) in str(info.value)
    path = save_prompt(tmp_path / "long.safetensors", _random_prompt(9, backbone.hidden_size), model="m")
    with pytest.raises(PromptFileError, match="9"):
        initial_prompt(backbone, length=5, method="file", file=str(path))


def test_unknown_init_method(backbone):
    assert set(INIT_METHODS) == {"vocab", "task_name", "task_words", "file"}
    with pytest.raises(ValueError, match="unknown prompt init"):
        initial_prompt(backbone, length=3, method="gaussian")
