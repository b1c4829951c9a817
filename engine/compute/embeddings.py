"""Task embeddings from the backbone: the text embedding of a split, a prompt's mean vector."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.compute.prompt import load_prompt


TEXT_BATCH = 32


def prompt_embeddings(prompts: list[tuple[str, int, Path]]) -> dict[str, dict[int, list[float]]]:
    """{task: {seed: [d floats]}}: each (task, seed, prompt file)'s prompt, averaged over its tokens."""
    out: dict[str, dict[int, list[float]]] = {}
    for task, seed, path in prompts:
        prompt, _ = load_prompt(path)
        out.setdefault(task, {})[seed] = torch.as_tensor(prompt).double().mean(dim=0).tolist()
    return out


def text_embedding(backbone, texts: list[str], batch_size: int = TEXT_BATCH) -> list[float]:
    """The frozen backbone's last hidden states over `texts` (the encoder's for an encoder-decoder),
    mean-pooled over each text's tokens (at most `max_input_length`), then averaged over the texts.
    Run by `Executor.embed_texts` (an `EmbedTexts` unit: where the backbone is)."""
    model = backbone.model.get_encoder() if backbone.is_encoder_decoder else backbone.model.base_model
    tokenizer = backbone.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total = torch.zeros(backbone.hidden_size, dtype=torch.float64)
    for start in range(0, len(texts), batch_size):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"][: backbone.max_input_length] or [pad]
               for t in texts[start:start + batch_size]]
        width = max(len(i) for i in ids)
        input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=backbone.device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=backbone.device)
        with torch.no_grad(), backbone.autocast():
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state.double()
        pooled = (hidden * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
        total += pooled.sum(dim=0).cpu()
    return (total / max(len(texts), 1)).tolist()
