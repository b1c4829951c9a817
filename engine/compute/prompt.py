"""Soft prompts: initialisation, and saving/loading as safetensors with metadata."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.base import durable

INIT_METHODS = ("vocab", "task_name", "task_words", "file")
# Sampled slots come from the most frequent tokens (Lester et al. 2021 used the top 5000):
#   first_5000: the vocabulary's first 5000 ids (sentencepiece and BPE vocabularies put frequent tokens first)
#   t5_c4_top5000: the authors' list of the 5000 most frequent T5 tokens in C4 (presets/vocab/)
VOCAB_POOLS = ("first_5000", "t5_c4_top5000")
VOCAB_SAMPLE_SIZE = 5000


class PromptFileError(ValueError):
    pass


def vocab_pool(pool: str, vocab_size: int, special_ids: set[int] = frozenset()) -> list[int]:
    """The token ids a prompt's sampled slots are drawn from."""
    if pool == "first_5000":
        return [i for i in range(min(VOCAB_SAMPLE_SIZE, vocab_size)) if i not in special_ids]
    if pool == "t5_c4_top5000":
        from engine.experiment.paper import t5_c4_top5000

        ids = t5_c4_top5000()
        if max(ids) >= vocab_size:
            raise ValueError(f"prompt.vocab_pool 't5_c4_top5000' holds T5 token ids up to {max(ids)}, but this "
                             f"model's vocabulary has {vocab_size} tokens (use 'first_5000')")
        return ids
    raise ValueError(f"unknown vocabulary pool {pool!r} (known: {', '.join(VOCAB_POOLS)})")


def sample_vocab_prompt(embeddings: torch.Tensor, length: int, generator: torch.Generator,
                        pool: list[int]) -> torch.Tensor:
    """`length` embedding rows of distinct tokens of `pool` (the authors' random.sample); a prompt longer
    than the pool takes it whole, then draws again."""
    picks = torch.cat([torch.randperm(len(pool), generator=generator) for _ in range(-(-length // len(pool)))])
    ids = torch.tensor(pool)[picks[:length]]
    return embeddings[ids.to(embeddings.device)].detach().float().cpu().clone()


def _mean_embedding(embeddings: torch.Tensor, tokenizer, text: str) -> torch.Tensor | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        return None
    return embeddings[torch.tensor(ids, device=embeddings.device)].detach().float().mean(0).cpu()


def task_name_prompt(embeddings: torch.Tensor, tokenizer, task_names: list[str], length: int,
                     generator: torch.Generator, pool: list[int]) -> torch.Tensor:
    """The authors' initialisation (CrossFit/utils.py getpromptembedding): slot i holds the mean embedding
    of the tokens of task name i ("tweet_eval-hate" read as "tweet eval hate"), the remaining slots are
    distinct tokens sampled from `pool`. Downstream the names are the target task's; upstream every
    source task's, in the setting's order (with `length` names or more, the prompt is names only)."""
    names = task_names[:length]
    prompt = torch.empty(length, embeddings.shape[1])
    if length > len(names):
        prompt[len(names):] = sample_vocab_prompt(embeddings, length - len(names), generator, pool)
    for slot, name in enumerate(names):
        mean = _mean_embedding(embeddings, tokenizer, " ".join(re.split(r"[_-]", name)))
        prompt[slot] = mean if mean is not None else sample_vocab_prompt(embeddings, 1, generator, pool)[0]
    return prompt


def task_words_prompt(embeddings: torch.Tensor, tokenizer, task_name: str, length: int,
                      generator: torch.Generator, pool: list[int]) -> torch.Tensor:
    """One slot per word of the task name (e.g. "tweet_eval-hate" -> tweet, eval, hate), each the mean
    embedding of the word's tokens; the rest sampled from `pool`."""
    prompt = sample_vocab_prompt(embeddings, length, generator, pool)
    words = [w for w in re.split(r"[-_\s]+", task_name) if w][:length]
    for slot, word in enumerate(words):
        mean = _mean_embedding(embeddings, tokenizer, word)
        if mean is not None:
            prompt[slot] = mean
    return prompt


def save_prompt(path: Path, prompt: torch.Tensor, *, model: str, extra: dict[str, str] | None = None) -> Path:
    """Save a [length, dim] prompt with the metadata needed to check it on load."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prompt = prompt.detach().float().cpu().contiguous()
    meta = {"model": model, "length": str(prompt.shape[0]), "dim": str(prompt.shape[1]), **(extra or {})}
    tmp = path.with_name(path.name + ".tmp")
    save_file({"prompt": prompt}, str(tmp), metadata=meta)
    durable.sync_file(tmp)
    durable.replace(tmp, path)
    return path


def load_prompt(path: Path, *, expected_dim: int | None = None, expected_length: int | None = None) -> tuple[torch.Tensor, dict]:
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            prompt = f.get_tensor("prompt")
    except Exception as exc:  # safetensors raises several kinds for a damaged file
        raise PromptFileError(f"prompt file {path} is not a readable safetensors prompt: {exc}") from None
    if prompt.dim() != 2:
        raise PromptFileError(f"prompt file {path}: expected a [length, dim] tensor, got shape {tuple(prompt.shape)}")
    if expected_dim is not None and prompt.shape[1] != expected_dim:
        raise PromptFileError(
            f"prompt file {path} has vectors of size {prompt.shape[1]} (saved for model {meta.get('model', '?')}), "
            f"but this model's hidden size is {expected_dim}")
    if expected_length is not None and prompt.shape[0] != expected_length:
        raise PromptFileError(f"prompt file {path} holds {prompt.shape[0]} vectors, but prompt.length is {expected_length}")
    return prompt.float(), meta


def initial_prompt(backbone, *, length: int, method: str, task_names: list[str] = (),
                   file: str | None = None, seed: int = 0, pool: str = "first_5000") -> torch.Tensor:
    """A fresh [length, dim] float32 prompt on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    weights = backbone.embeddings.weight
    if method == "file":
        return load_prompt(Path(file), expected_dim=backbone.hidden_size, expected_length=length)[0]
    if method not in INIT_METHODS:
        raise ValueError(f"unknown prompt init {method!r} (known: {', '.join(INIT_METHODS)})")
    ids = vocab_pool(pool, weights.shape[0], set(backbone.tokenizer.all_special_ids))
    if method == "task_name":
        return task_name_prompt(weights, backbone.tokenizer, list(task_names), length, generator, ids)
    if method == "task_words" and task_names:
        return task_words_prompt(weights, backbone.tokenizer, task_names[0], length, generator, ids)
    return sample_vocab_prompt(weights, length, generator, ids)
