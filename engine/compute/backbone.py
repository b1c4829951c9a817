"""A frozen language model that reads soft prompts.

Everything that trains a prompt goes through `Backbone`: the prompt is an ordinary
tensor passed in by the caller (never a parameter of the model), so plain prompt
tuning, `higher`'s functional inner loops and a bank of many prompts trained at once
all share the same forward code. A prompt is either one `[n, d]` tensor shared by
the whole batch, or a bank `[J, n, d]` with `owner[b]` naming the row each example uses.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutput

from engine.base import hardware
from engine.compute import kernels

# where the prompt P goes around the input x (encoder-decoder models end the input with </s>):
#   before: P x </s>;  after: x P </s>;  after_eos: x </s> P (the authors' T5Prompt.py: cat(embed(x </s>), P))
PLACEMENTS = ("before", "after", "after_eos")
# how the frozen model computes (prompts and optimizer state are float32 in every case):
#   bf16: weights stored in bfloat16 (half the memory, no per-layer casts; GPU default)
#   autocast: float32 weights, bfloat16 matrix products under torch.autocast (CUDA only)
#   fp32: float32 throughout (CPU default)
PRECISIONS = hardware.PRECISIONS


def resolve_precision(precision: str, device: str) -> str:
    return hardware.resolve_precision(precision, device, ask_torch=True)


@dataclass
class TokenTotals:
    """Per-example summed negative log-likelihood of the target tokens, and their count."""

    nll: torch.Tensor  # [B]
    tokens: torch.Tensor  # [B]

    def mean_loss(self) -> torch.Tensor:
        """Token-averaged loss over the batch (what a Hugging Face model reports)."""
        return self.nll.sum() / self.tokens.sum().clamp(min=1)

    def per_example_mean(self) -> torch.Tensor:
        return self.nll / self.tokens.clamp(min=1)


class Backbone:
    def __init__(self, model, tokenizer, name: str, *, device: str = "cpu",
                 max_input_length: int = 256, max_output_length: int = 64,
                 precision: str = "fp32", compile: bool | str = False, dropout: bool = False,
                 fused_kernels: bool = True):
        model.requires_grad_(False)  # frozen: no gradient, so no optimizer state either
        model.eval()  # evaluation never drops out; training does only inside `training()` with dropout on
        self.dropout = dropout
        self.precision = resolve_precision(precision, str(device))
        self.model = model.to(device)
        if self.precision == "bf16":  # parameters only: buffers such as RoPE's inv_freq keep float32
            for param in self.model.parameters():
                param.data = param.data.to(torch.bfloat16)
        self.tokenizer = tokenizer
        self.name = name
        self.device = torch.device(device)
        self.is_encoder_decoder = bool(model.config.is_encoder_decoder)
        self.embeddings = model.get_input_embeddings()
        self.hidden_size = int(self.embeddings.weight.shape[1])
        self.max_input_length = max_input_length
        self.max_output_length = max_output_length
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self._token_cache: dict[tuple[str, str], list[int]] = {}
        # fused attention bias, RMSNorm and GELU (engine/compute/kernels.py); off only to measure against
        self.kernels = kernels.install(self.model) if fused_kernels else {}
        # a key/value cache goes in as `cache` (transformers 5.x) or `past_key_values` (before)
        self._cache_kwarg = "cache" if "cache" in inspect.signature(self.model.forward).parameters \
            else "past_key_values"
        # row widths are rounded up to these multiples (1: exact); CUDA graphs need shapes that repeat
        self.row_bucket, self.label_bucket = (32, 8) if compile == "reduce-overhead" else (1, 1)
        if compile:
            _persistent_compile_cache()
            if compile == "reduce-overhead":  # CUDA graphs: one recorded graph per shape, replayed
                self.model.forward = torch.compile(self.model.forward, mode="reduce-overhead", dynamic=False)
            else:  # dynamic: batch widths change from pass to pass
                self.model.forward = torch.compile(self.model.forward, dynamic=True)

    @classmethod
    def load(cls, name: str, *, device: str = "cpu", attn_implementation: str | None = None,
             max_input_length: int = 256, max_output_length: int = 64, progress=None,
             compile: bool | str = False, precision: str = "auto", dropout: bool = False) -> "Backbone":
        from engine.compute.models import load_pretrained

        kwargs = {"progress": progress} if progress else {}
        model, tokenizer, _ = load_pretrained(name, attn_implementation=attn_implementation, **kwargs)
        return cls(model, tokenizer, name, device=device, max_input_length=max_input_length,
                   max_output_length=max_output_length, precision=precision, compile=compile, dropout=dropout)

    @classmethod
    def from_preset(cls, model, device: str, progress=None, compile: bool = True) -> "Backbone":
        """The backbone a preset's [model] section (`preset.model`) describes; `compile=False` for
        quick loads that run a few passes (a timing probe, the analysis)."""
        mode = model.compile_mode if model.compile and compile else False
        return cls.load(model.name, device=device, max_input_length=model.max_input_length,
                        max_output_length=model.max_output_length, progress=progress, compile=mode,
                        precision=model.precision, dropout=model.dropout == "config")

    # ---- tokens -------------------------------------------------------------------

    def _ids(self, text: str, kind: str) -> list[int]:
        key = (kind, text)
        ids = self._token_cache.get(key)
        if ids is None:
            if kind == "input":
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_input_length]
            else:  # a target: a leading space for byte-level BPE, then end-of-sequence
                text = text if self.is_encoder_decoder else " " + text
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_output_length - 1]
                ids = ids + [self.eos_id]
            self._token_cache[key] = ids
        return ids

    @contextlib.contextmanager
    def training(self, generator: torch.Generator | None = None):
        """The forward passes of a training step. With dropout on, the model is in train mode (the
        authors' model.train(): the config's dropout rates) and its masks come from a seed drawn from
        `generator`, so a run that keeps its generator (checkpointed by the caller) is reproducible;
        the global random state is left as it was. With dropout off this does nothing."""
        if not self.dropout:
            yield
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if generator is not None:
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            self.model.train()
            try:
                yield
            finally:
                self.model.eval()

    def autocast(self):
        if self.precision == "autocast":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- rows ---------------------------------------------------------------------

    def _embed_rows(self, prompt: torch.Tensor, owner: torch.Tensor | None, segments: list[list],
                    left_pad: bool = False, min_width: int = 0):
        """Embed rows made of token-id lists and a "P" marker where the prompt goes.

        Returns inputs_embeds [B, L, d] and attention_mask [B, L] (L: the longest row, rounded up
        to `row_bucket`, at least `min_width`).
        """
        n = prompt.shape[-2]
        lengths = [sum(n if seg == "P" else len(seg) for seg in row) for row in segments]
        width = max(_round_up(max(lengths), self.row_bucket), min_width)
        B = len(segments)
        ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        slot = torch.full((B, width), -1, dtype=torch.long)  # prompt vector index, -1 elsewhere
        mask = torch.zeros((B, width), dtype=torch.long)
        for b, row in enumerate(segments):
            pos = width - lengths[b] if left_pad else 0
            for seg in row:
                if seg == "P":
                    slot[b, pos:pos + n] = torch.arange(n)
                    pos += n
                else:
                    ids[b, pos:pos + len(seg)] = torch.tensor(seg, dtype=torch.long)
                    pos += len(seg)
            if left_pad:
                mask[b, width - lengths[b]:] = 1
            else:
                mask[b, : lengths[b]] = 1
        ids, slot, mask = ids.to(self.device), slot.to(self.device), mask.to(self.device)
        token_embeds = self.embeddings(ids)
        is_prompt = slot >= 0
        # F.embedding, not advanced indexing: the latter's backward (index_put_ with accumulate) adds
        # the rows' gradients in thread order on CPU, so the same batch gave different gradients
        if prompt.dim() == 2:
            prompt_embeds = F.embedding(slot.clamp(min=0), prompt)
        else:  # a bank: each row reads its owner's prompt, as rows of the flattened bank
            flat = owner.to(self.device)[:, None] * n + slot.clamp(min=0)
            prompt_embeds = F.embedding(flat, prompt.reshape(-1, prompt.shape[-1]))
        embeds = torch.where(is_prompt[..., None], prompt_embeds.to(token_embeds.dtype), token_embeds)
        return embeds, mask

    def _prompted_input(self, input_ids: list[int], placement: str) -> list:
        if placement == "after_eos":  # decoder-only models get the </s> too: the row reads x </s> P
            return [input_ids, [self.eos_id], "P"]
        tail = [[self.eos_id]] if self.is_encoder_decoder else []
        return (["P", input_ids] if placement == "before" else [input_ids, "P"]) + tail

    # ---- scoring ------------------------------------------------------------------

    def token_totals(self, prompt: torch.Tensor, inputs: list[str], targets: list[str],
                     placement: str = "before", owner: torch.Tensor | None = None) -> TokenTotals:
        """Summed NLL of each target given its prompted input (differentiable in `prompt`)."""
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        in_ids = [self._ids(t, "input") for t in inputs]
        out_ids = [self._ids(t, "target") for t in targets]
        width = _round_up(max(len(o) for o in out_ids), self.label_bucket)
        # Targets as a padded [B, T] matrix built on the host and sent once; -100 marks padding.
        # The loss below needs no boolean indexing or nonzero(), so a step never waits for the GPU.
        labels = torch.full((len(out_ids), width), -100, dtype=torch.long)
        for b, o in enumerate(out_ids):
            if self.is_encoder_decoder:
                labels[b, : len(o)] = torch.tensor(o)
            else:  # left padding: every row's targets end at the last position
                labels[b, width - len(o):] = torch.tensor(o)
        labels = labels.to(self.device)
        with self.autocast():
            if self.is_encoder_decoder:
                embeds, mask = self._embed_rows(prompt, owner, [self._prompted_input(i, placement) for i in in_ids])
                decoder_ids = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
                # use_cache=False: T5 would otherwise grow a key/value cache in every training pass
                logits = self.model(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_ids,
                                    use_cache=False).logits
            else:
                # Left padding lines every row's targets up at the end, so the LM head (a large
                # matrix for big vocabularies) only runs on the last width+1 positions.
                rows = [self._prompted_input(i, placement) + [o] for i, o in zip(in_ids, out_ids)]
                embeds, mask = self._embed_rows(prompt, owner, rows, left_pad=True, min_width=width + 1)
                # logits[:, j] predicts the token after kept position j
                logits = self._causal_logits(embeds, mask, keep=width + 1)[:, :-1]
            token_nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                                        reduction="none").view(labels.shape)
        return TokenTotals(nll=token_nll.sum(dim=1), tokens=(labels >= 0).sum(dim=1))

    def _causal_logits(self, embeds, mask, keep: int) -> torch.Tensor:
        """Logits of the last `keep` positions of left-padded rows (positions counted from each row's start)."""
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
        try:
            return self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                              logits_to_keep=keep, use_cache=False).logits
        except TypeError:  # a model without logits_to_keep: compute them all
            return self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                              use_cache=False).logits[:, -keep:]

    def loss(self, prompt, inputs, targets, placement="before") -> torch.Tensor:
        return self.token_totals(prompt, inputs, targets, placement).mean_loss()

    @torch.no_grad()
    def rank_options(self, prompt: torch.Tensor, inputs: list[str], options: list[list[str]],
                     placement: str = "before", batch_rows: int = 64, length_normalise: bool = True,
                     owner: torch.Tensor | None = None, shared_prefix: bool = True) -> list[int]:
        """Rank classification: index of the most likely option for each input (see `option_scores`)."""
        scores = self.option_scores(prompt, inputs, options, placement, batch_rows, length_normalise, owner,
                                    shared_prefix)
        return [max(range(len(s)), key=s.__getitem__) for s in scores]

    @torch.no_grad()
    def option_scores(self, prompt: torch.Tensor, inputs: list[str], options: list[list[str]],
                      placement: str = "before", batch_rows: int = 64, length_normalise: bool = True,
                      owner: torch.Tensor | None = None, shared_prefix: bool = True) -> list[list[float]]:
        """Each option's log-likelihood given its prompted input (per target token with `length_normalise`).

        No text is generated and no string is matched. With `shared_prefix` the prompted input runs
        once and every option is scored from it (decoder-only: from its key/value cache; encoder-decoder:
        from its encoding, only the decoder runs per option), instead of one whole pass per option.
        With a prompt bank, `owner[i]` names input i's row, so many jobs' examples share each pass.
        """
        per_input: list[list[float]] = []
        for chunk in _chunks_of_rows([len(o) for o in options], batch_rows):
            ins, opts = [inputs[i] for i in chunk], [options[i] for i in chunk]
            rows = owner[chunk] if owner is not None else None
            if shared_prefix:
                totals = self._shared_prefix_totals(prompt, ins, opts, placement, rows)
            else:
                flat_owner = rows.repeat_interleave(torch.tensor([len(o) for o in opts])) if rows is not None else None
                totals = self.token_totals(prompt, [t for t, o in zip(ins, opts) for _ in o],
                                           [x for o in opts for x in o], placement, owner=flat_owner)
            flat = (-(totals.per_example_mean() if length_normalise else totals.nll)).tolist()
            for o in opts:
                per_input.append(flat[:len(o)])
                flat = flat[len(o):]
        return per_input

    def _shared_prefix_totals(self, prompt, inputs: list[str], options: list[list[str]], placement: str,
                              owner: torch.Tensor | None) -> TokenTotals:
        """`token_totals` of every (input, option) pair, the prompted inputs computed once."""
        prefixes = [self._prompted_input(self._ids(t, "input"), placement) for t in inputs]
        row_of = torch.tensor([b for b, opts in enumerate(options) for _ in opts], device=self.device)
        out_ids = [self._ids(o, "target") for opts in options for o in opts]
        width = max(len(o) for o in out_ids)
        labels = torch.full((len(out_ids), width), -100, dtype=torch.long)  # right-padded targets
        for r, o in enumerate(out_ids):
            labels[r, :len(o)] = torch.tensor(o)
        labels = labels.to(self.device)
        with self.autocast():
            if self.is_encoder_decoder:
                embeds, mask = self._embed_rows(prompt, owner, prefixes)
                encoded = self.model.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
                decoder_ids = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
                logits = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=encoded[row_of]),
                                    attention_mask=mask[row_of], decoder_input_ids=decoder_ids, use_cache=False).logits
            else:
                embeds, mask = self._embed_rows(prompt, owner, prefixes, left_pad=True)
                lengths = mask.sum(dim=1)
                out = self.model(inputs_embeds=embeds, attention_mask=mask, use_cache=True,
                                 position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0), logits_to_keep=1)
                first = out.logits[:, -1:][row_of]  # predicts each option's first token
                if width > 1:  # the options' other tokens continue from the prefix's cache
                    cache = getattr(out, "cache", None) or out.past_key_values  # transformers 5.x names it cache
                    cache.reorder_cache(row_of)  # one cache row per (input, option)
                    feed = labels[:, :-1].clamp(min=0)
                    cont_mask = (labels[:, :-1] >= 0).long()
                    positions = lengths[row_of, None] + torch.arange(width - 1, device=self.device)
                    rest = self.model(input_ids=feed, attention_mask=torch.cat([mask[row_of], cont_mask], dim=1),
                                      position_ids=positions, use_cache=True, **{self._cache_kwarg: cache}).logits
                    logits = torch.cat([first, rest], dim=1)
                else:
                    logits = first
            token_nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                                        reduction="none").view(labels.shape)
        return TokenTotals(nll=token_nll.sum(dim=1), tokens=(labels >= 0).sum(dim=1))

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, inputs: list[str], placement: str = "before",
                 max_new_tokens: int = 32, batch_rows: int = 32, owner: torch.Tensor | None = None,
                 num_beams: int = 1, repetition_penalty: float = 1.0, early_stopping: bool = False) -> list[str]:
        """Generated answers, batched (a bank with `owner` too: each row reads its own prompt, and beam search
        keeps each example's beams on its row's prompt), capped at max_new_tokens. num_beams=1 is greedy;
        the authors used 4 beams, repetition_penalty 2.5 and early stopping."""
        results: list[str] = []
        settings = {"num_beams": num_beams, "repetition_penalty": repetition_penalty}
        if num_beams > 1:  # beam-only flags (greedy generation warns about them)
            settings.update(early_stopping=early_stopping, length_penalty=1.0)
        for s in range(0, len(inputs), batch_rows):
            chunk = [self._prompted_input(self._ids(t, "input"), placement) for t in inputs[s:s + batch_rows]]
            rows = owner[s:s + batch_rows] if owner is not None else None
            # decoder-only models continue the row, so pad on the left; the encoder pads on the right
            embeds, mask = self._embed_rows(prompt, rows, chunk, left_pad=not self.is_encoder_decoder)
            # the repetition penalty counts generated tokens only, for both kinds of model: what the
            # authors' T5 did (its decoder never sees the input), and what transformers warns about here
            with self.autocast(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")
                out = self.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          do_sample=False, pad_token_id=self.pad_id, eos_token_id=self.eos_id,
                                          **settings)
            results.extend(t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True))
        return results


def _chunks_of_rows(rows_per_input: list[int], batch_rows: int) -> list[list[int]]:
    """Consecutive input indices grouped so that a group's rows (its options) stay within `batch_rows`."""
    chunks, current, used = [], [], 0
    for i, rows in enumerate(rows_per_input):
        if current and used + rows > batch_rows:
            chunks.append(current)
            current, used = [], 0
        current.append(i)
        used += rows
    return chunks + ([current] if current else [])


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _persistent_compile_cache() -> None:
    """Compiled graphs go to the user cache (TORCHINDUCTOR_CACHE_DIR, unless set), so a later run
    of the same model and shapes loads them instead of compiling again."""
    import os

    from engine.store.models import cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
