"""Soft prompts: initialisation, and saving/loading as safetensors with metadata."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

INIT_METHODS = ("vocab", "task_name", "file")
# Sample initial vectors from the most frequent tokens (Lester et al. 2021 used the top 5000);
# both sentencepiece and BPE vocabularies put frequent tokens first.
VOCAB_SAMPLE_SIZE = 5000


class PromptFileError(ValueError):
    pass


def sample_vocab_prompt(embeddings: torch.Tensor, length: int, generator: torch.Generator,
                        special_ids: set[int] = frozenset()) -> torch.Tensor:
    """`length` embedding rows of tokens drawn from the first VOCAB_SAMPLE_SIZE ids."""
    pool = [i for i in range(min(VOCAB_SAMPLE_SIZE, embeddings.shape[0])) if i not in special_ids]
    picks = torch.randint(len(pool), (length,), generator=generator)
    ids = torch.tensor(pool)[picks]
    return embeddings[ids.to(embeddings.device)].detach().float().cpu().clone()


def task_name_prompt(embeddings: torch.Tensor, tokenizer, task_name: str, length: int,
                     generator: torch.Generator) -> torch.Tensor:
    """The paper's initialisation: the first slots hold the mean embedding of each word
    of the task name (e.g. "tweet_eval-hate" -> tweet, eval, hate), the rest sampled vocabulary."""
    special = set(tokenizer.all_special_ids)
    prompt = sample_vocab_prompt(embeddings, length, generator, special)
    words = [w for w in re.split(r"[-_\s]+", task_name) if w][:length]
    for slot, word in enumerate(words):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if ids:
            prompt[slot] = embeddings[torch.tensor(ids, device=embeddings.device)].detach().float().mean(0).cpu()
    return prompt


def save_prompt(path: Path, prompt: torch.Tensor, *, model: str, extra: dict[str, str] | None = None) -> Path:
    """Save a [length, dim] prompt with the metadata needed to check it on load."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prompt = prompt.detach().float().cpu().contiguous()
    meta = {"model": model, "length": str(prompt.shape[0]), "dim": str(prompt.shape[1]), **(extra or {})}
    tmp = path.with_name(path.name + ".tmp")
    save_file({"prompt": prompt}, str(tmp), metadata=meta)
    tmp.replace(path)
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


def initial_prompt(backbone, *, length: int, method: str, task_name: str | None = None,
                   file: str | None = None, seed: int = 0) -> torch.Tensor:
    """A fresh [length, dim] float32 prompt on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    weights = backbone.embeddings.weight
    if method == "vocab":
        return sample_vocab_prompt(weights, length, generator, set(backbone.tokenizer.all_special_ids))
    if method == "task_name":
        return task_name_prompt(weights, backbone.tokenizer, task_name or "", length, generator)
    if method == "file":
        return load_prompt(Path(file), expected_dim=backbone.hidden_size, expected_length=length)[0]
    raise ValueError(f"unknown prompt init {method!r} (known: {', '.join(INIT_METHODS)})")
