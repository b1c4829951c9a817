"""Tests for engine.compute.backbone: a frozen model that reads soft prompts.

Every test runs on the tiny randomly initialised Llama and T5 built by conftest
(real architectures, tokenizers trained on real task text), on real task examples.
Expected values are never hard-coded: they come from an independent computation
(each example alone, the Hugging Face model's own loss, scoring options one by one).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import pytest
import torch

from engine.compute.backbone import PLACEMENTS, Backbone, TokenTotals
from engine.experiment.data import TaskData
from engine.compute.tuning import TuningConfig, prompt_tune

from conftest import assert_weights_unchanged, snapshot_weights

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MPT_TUI_SHARED_DATA", REPO.parent / "shared" / "data"))  # as conftest
DEMO_DATA = REPO / "presets" / "demo-data"
PROMPT_LEN = 4


# ---------------------------------------------------------------- helpers


def _load(model_dir: Path) -> Backbone:
    return Backbone.load(str(model_dir))


def _split():
    """Real examples: glue-sst2 (k=16, seed 13) from the shared data, else the shipped demo data."""
    if (SHARED_DATA / "metaicl" / "glue-sst2").is_dir():
        data, task = TaskData(SHARED_DATA), "glue-sst2"
    else:
        data, task, seed = TaskData(DEMO_DATA), "demo-movie_sentiment", 1
        return data.load_split(task, 16, seed), data.task_info(task)
    return data.load_split(task, 16, 13), data.task_info(task)


@pytest.fixture(scope="module")
def examples():
    split, _ = _split()
    # inputs of clearly different lengths, so a batch needs padding
    chosen = sorted(split.train, key=lambda e: len(e.input))
    picked = [chosen[0], chosen[len(chosen) // 2], chosen[-1], chosen[1], chosen[-2]]
    assert len({len(e.input) for e in picked}) > 2
    return picked


def _prompt(backbone: Backbone, seed: int = 0, n: int = PROMPT_LEN) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, backbone.hidden_size, generator=g)


def _ios(examples):
    return [e.input for e in examples], [e.output for e in examples]


# ---------------------------------------------------------------- frozen backbone


@pytest.mark.parametrize("optimizer, lr", [("adafactor", 0.3), ("adamw", 0.05)])
def test_prompt_tune_leaves_backbone_bit_identical(tiny_model, optimizer, lr):
    backbone = _load(tiny_model)
    split, info = _split()
    weights_before = snapshot_weights(backbone)
    init = _prompt(backbone)
    init_copy = init.clone()
    steps = []
    cfg = TuningConfig(learning_rate=lr, steps=5, batch_size=4, optimizer=optimizer, eval_every=5,
                       eval_batch_size=64)
    result = prompt_tune(backbone, init, split.train, split.dev[:8], info, cfg, seed=0,
                         on_step=lambda step, loss: steps.append((step, loss)))

    assert [s for s, _ in steps] == [1, 2, 3, 4, 5], result.stopped
    assert all(math.isfinite(loss) for _, loss in steps)
    assert_weights_unchanged(backbone, weights_before)
    # the caller's initial prompt is untouched, and the trained prompt moved
    assert torch.equal(init, init_copy)
    assert result.best_prompt.shape == init.shape
    assert not torch.equal(result.best_prompt, init)
    assert (result.best_prompt - init).abs().max() > 1e-4


# ---------------------------------------------------------------- padding


@pytest.mark.parametrize("placement", ["before", "after", "after_eos"])
def test_token_totals_batch_equals_each_example_alone(tiny_model, examples, placement):
    backbone = _load(tiny_model)
    prompt = _prompt(backbone)
    inputs, targets = _ios(examples)
    lengths = {len(backbone._ids(t, "input")) for t in inputs}
    assert len(lengths) > 2, "the batch must need padding for this test to mean anything"

    with torch.no_grad():
        batch = backbone.token_totals(prompt, inputs, targets, placement)
        alone = [backbone.token_totals(prompt, [i], [t], placement) for i, t in zip(inputs, targets)]
    assert batch.nll.shape == (len(inputs),)
    torch.testing.assert_close(batch.nll, torch.cat([a.nll for a in alone]), rtol=1e-4, atol=1e-4)
    assert batch.tokens.tolist() == [int(a.tokens[0]) for a in alone]
    assert all(int(a.tokens[0]) > 0 for a in alone)


# ---------------------------------------------------------------- placement, and the prompt is read


def test_before_and_after_give_different_losses(tiny_model, examples):
    backbone = _load(tiny_model)
    prompt = _prompt(backbone)
    inputs, targets = _ios(examples)
    with torch.no_grad():
        before = backbone.token_totals(prompt, inputs, targets, "before")
        after = backbone.token_totals(prompt, inputs, targets, "after")
    assert torch.equal(before.tokens, after.tokens)
    assert not torch.allclose(before.nll, after.nll, rtol=1e-5, atol=1e-5)


def test_unknown_placement_is_refused(tiny_llama, examples):
    backbone = _load(tiny_llama)
    inputs, targets = _ios(examples)
    with pytest.raises(ValueError, match="placement"):
        backbone.token_totals(_prompt(backbone), inputs, targets, "middle")


@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize("slot", [0, PROMPT_LEN - 1])
def test_decoder_only_loss_reads_every_prompt_vector(tiny_llama, examples, placement, slot):
    backbone = _load(tiny_llama)
    prompt = _prompt(backbone)
    changed = prompt.clone()
    changed[slot] += torch.randn(backbone.hidden_size, generator=torch.Generator().manual_seed(7))
    inputs, targets = _ios(examples)
    with torch.no_grad():
        base = backbone.token_totals(prompt, inputs, targets, placement).nll
        moved = backbone.token_totals(changed, inputs, targets, placement).nll
    # every example reads the prompt, not just some
    assert ((base - moved).abs() > 1e-6).all()


def _hf_prompted_loss(backbone: Backbone, prompt, text: str, target: str, placement: str) -> torch.Tensor:
    """The Hugging Face model's own loss with the prompt spliced into the embeddings by hand:
    before: P x [</s>]; after: x P [</s>]; after_eos: x </s> P (the authors' T5Prompt.py), where
    [</s>] ends an encoder's input only."""
    tok, emb = backbone.tokenizer, backbone.embeddings
    in_ids = tok(text, add_special_tokens=False)["input_ids"][: backbone.max_input_length]
    eos = tok.eos_token_id
    x, end = emb(torch.tensor(in_ids)), emb(torch.tensor([eos]))
    tail = [end] if backbone.is_encoder_decoder else []
    parts = {"before": [prompt, x] + tail, "after": [x, prompt] + tail, "after_eos": [x, end, prompt]}[placement]
    if backbone.is_encoder_decoder:
        out_ids = tok(target, add_special_tokens=False)["input_ids"] + [eos]
        return backbone.model(inputs_embeds=torch.cat(parts)[None], labels=torch.tensor([out_ids])).loss
    out_ids = tok(" " + target, add_special_tokens=False)["input_ids"] + [eos]
    embeds = torch.cat(parts + [emb(torch.tensor(out_ids))])[None]
    labels = torch.tensor([[-100] * (embeds.shape[1] - len(out_ids)) + out_ids])
    return backbone.model(inputs_embeds=embeds, labels=labels).loss


@pytest.mark.parametrize("placement", ["before", "after", "after_eos"])
def test_mean_loss_matches_hugging_face_loss_for_one_example(tiny_model, examples, placement):
    backbone = _load(tiny_model)
    prompt = _prompt(backbone)
    for ex in examples[:3]:
        with torch.no_grad():
            ours = backbone.token_totals(prompt, [ex.input], [ex.output], placement).mean_loss()
            theirs = _hf_prompted_loss(backbone, prompt, ex.input, ex.output, placement)
        torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-4)


def test_mean_loss_is_token_weighted_mean_of_examples(tiny_model, examples):
    backbone = _load(tiny_model)
    prompt = _prompt(backbone)
    # targets of different token lengths, so token weighting differs from a plain mean
    inputs = [e.input for e in examples]
    targets = ["positive", "not good at all, really", "negative", "a long and winding answer here", "ok"]
    with torch.no_grad():
        totals = backbone.token_totals(prompt, inputs, targets)
        alone = [backbone.token_totals(prompt, [i], [t]) for i, t in zip(inputs, targets)]
    means = torch.stack([a.mean_loss() for a in alone])
    counts = torch.stack([a.tokens[0] for a in alone]).float()
    assert len(set(counts.tolist())) > 1
    expected = (means * counts).sum() / counts.sum()
    torch.testing.assert_close(totals.mean_loss(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(backbone.loss(prompt, inputs, targets), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(totals.per_example_mean(), means, rtol=1e-4, atol=1e-4)


def test_token_totals_mean_loss_handles_no_tokens():
    empty = TokenTotals(nll=torch.zeros(2), tokens=torch.zeros(2, dtype=torch.long))
    assert float(empty.mean_loss()) == 0.0
    assert torch.isfinite(empty.per_example_mean()).all()


# ---------------------------------------------------------------- bank of prompts


@pytest.mark.parametrize("placement", ["before", "after", "after_eos"])
def test_prompt_bank_matches_each_owner_prompt(tiny_model, examples, placement):
    backbone = _load(tiny_model)
    J = 3
    bank = torch.stack([_prompt(backbone, seed=j) for j in range(J)])  # [J, n, d]
    owner = torch.tensor([2, 0, 2, 0, 2])  # row 1 is owned by nobody
    inputs, targets = _ios(examples)

    bank = bank.requires_grad_(True)
    totals = backbone.token_totals(bank, inputs, targets, placement, owner=owner)
    expected = []
    for b in range(len(inputs)):
        with torch.no_grad():
            expected.append(backbone.token_totals(bank[owner[b]].detach(), [inputs[b]], [targets[b]], placement).nll)
    torch.testing.assert_close(totals.nll.detach(), torch.cat(expected), rtol=1e-4, atol=1e-4)

    totals.nll.sum().backward()
    grad = bank.grad
    assert grad is not None
    assert torch.count_nonzero(grad[1]) == 0, "a prompt nobody owns received gradient"
    for j in (0, 2):
        assert grad[j].abs().sum() > 0
        # the gradient of row j is that of its own examples with a standalone [n, d] prompt
        single = bank[j].detach().clone().requires_grad_(True)
        mine = [b for b in range(len(inputs)) if owner[b] == j]
        backbone.token_totals(single, [inputs[b] for b in mine], [targets[b] for b in mine], placement).nll.sum().backward()
        torch.testing.assert_close(grad[j], single.grad, rtol=1e-3, atol=1e-5)
    assert all(p.grad is None for p in backbone.model.parameters())


# ---------------------------------------------------------------- rank classification


def _option_scores(backbone: Backbone, prompt, text: str, opts: list[str]):
    """Each option scored on its own: (summed NLL, NLL per token)."""
    with torch.no_grad():
        alone = [backbone.token_totals(prompt, [text], [o]) for o in opts]
    total = torch.stack([a.nll[0] for a in alone])
    per_token = torch.stack([a.nll[0] / a.tokens[0] for a in alone])
    return total, per_token


def _length_sensitive_pair(backbone: Backbone, prompt, text: str, pool: list[str]) -> list[str] | None:
    """Two options where the shorter-total one has the higher per-token NLL, so that
    normalising by length flips the choice (found by scoring, not assumed)."""
    with torch.no_grad():
        totals = backbone.token_totals(prompt, [text] * len(pool), pool)
    total, per = totals.nll, totals.per_example_mean()
    for i in range(len(pool)):
        for j in range(len(pool)):
            if total[i] < total[j] - 1e-3 and per[i] > per[j] + 1e-3:
                return [pool[j], pool[i]]
    return None


def test_rank_options_picks_lowest_nll_option(tiny_model, examples):
    backbone = _load(tiny_model)
    prompt = _prompt(backbone, seed=3)
    inputs = [e.input for e in examples]
    # candidate answers of many token lengths, taken from the real inputs
    pool = sorted({" ".join(e.input.split()[1:1 + k]) for e in examples for k in (1, 2, 3, 5, 8)} - {""})
    pool += [o for o in examples[0].options if o not in pool]
    extras = [["not at all"], [], ["mixed feelings overall, honestly", "ok"], ["neutral"], ["positive and negative"]]
    options = []
    for b, (e, x) in enumerate(zip(examples, extras)):
        pair = _length_sensitive_pair(backbone, prompt, e.input, pool) if b % 2 == 0 else None
        # lists of different sizes: a pair where the two modes disagree, or real options plus extras
        options.append(pair or list(e.options) + x)

    scores = [_option_scores(backbone, prompt, t, o) for t, o in zip(inputs, options)]
    by_total = [int(torch.argmin(total)) for total, _ in scores]
    by_mean = [int(torch.argmin(per)) for _, per in scores]
    assert by_total != by_mean, "length normalisation should change a pick for this test to mean anything"
    assert len({len(o) for o in options}) > 1

    assert backbone.rank_options(prompt, inputs, options, batch_rows=3) == by_mean
    assert backbone.rank_options(prompt, inputs, options, batch_rows=3, length_normalise=False) == by_total
    # batching does not change the picks
    assert backbone.rank_options(prompt, inputs, options, batch_rows=64) == by_mean


@contextlib.contextmanager
def _counting_embedded_tokens(backbone, counts: list):
    """Appends the number of token positions each pass embeds (the model's input embedding layer)."""
    handle = backbone.embeddings.register_forward_hook(lambda module, args, out: counts.append(args[0].numel()))
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_shared_prefix_scores_equal_one_pass_per_option(tiny_model, examples, placement):
    """Scoring every option from one pass over the prompted input (decoder-only: its key/value cache;
    encoder-decoder: its encoding) gives each option the score of a whole pass of its own, with one prompt
    and with a bank, options of many lengths (an empty one too), and inputs split over several passes."""
    backbone = _load(tiny_model)
    inputs = [e.input for e in examples]
    options = [list(e.options) + extra for e, extra in
               zip(examples, [["a much longer answer than the others"], [""], [], ["x y"], ["neutral"]])]
    assert len({len(o) for o in options}) > 1
    for prompt, owner in [(_prompt(backbone, seed=4), None),
                          (torch.stack([_prompt(backbone, seed=s) for s in (5, 6)]),
                           torch.tensor([i % 2 for i in range(len(inputs))]))]:
        for rows in (3, 64):
            full_work, shared_work = [], []
            with _counting_embedded_tokens(backbone, full_work):
                full = backbone.option_scores(prompt, inputs, options, placement, batch_rows=rows, owner=owner,
                                              shared_prefix=False)
            with _counting_embedded_tokens(backbone, shared_work):
                shared = backbone.option_scores(prompt, inputs, options, placement, batch_rows=rows, owner=owner)
            assert [len(s) for s in shared] == [len(o) for o in options]
            assert sum(shared_work) < sum(full_work) / 2  # the inputs really ran once, not once per option
            torch.testing.assert_close(torch.tensor([x for s in shared for x in s]),
                                       torch.tensor([x for s in full for x in s]), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- generation


def _generate_capturing(backbone: Backbone, prompt, inputs, **kwargs):
    """backbone.generate, recording what model.generate produced: per row the generated
    token ids, and the scores of the first generated token."""
    rows, first_scores = [], []
    original = backbone.model.generate

    def wrapped(*args, **kw):
        out = original(*args, **kw, return_dict_in_generate=True, output_scores=True)
        seqs = out.sequences
        if backbone.is_encoder_decoder:  # the decoder's start token is not generated
            assert (seqs[:, 0] == backbone.model.config.decoder_start_token_id).all()
            seqs = seqs[:, 1:]
        rows.extend(seqs.tolist())
        first_scores.append(out.scores[0])
        return out.sequences

    backbone.model.generate = wrapped
    try:
        texts = backbone.generate(prompt, inputs, **kwargs)
    finally:
        del backbone.model.generate
    return texts, rows, torch.cat(first_scores)


@pytest.mark.parametrize("placement", ["before", "after"])
def test_generate_returns_one_string_per_input_within_token_cap(tiny_model, examples, placement):
    backbone = _load(tiny_model)
    inputs = [e.input for e in examples]
    cap, more = 3, 8
    # a prompt for which the model would go on past the cap (a random model may stop at once)
    for seed in range(10):
        prompt = _prompt(backbone, seed=seed)
        long_texts, long_rows, _ = _generate_capturing(backbone, prompt, inputs, placement=placement,
                                                      max_new_tokens=more, batch_rows=2)
        if any(len(r) > cap for r in long_rows):
            break
    else:
        pytest.fail(f"no prompt seed made the model generate more than {cap} tokens")
    short_texts, short_rows, _ = _generate_capturing(backbone, prompt, inputs, placement=placement,
                                                    max_new_tokens=cap, batch_rows=2)

    for texts in (short_texts, long_texts):
        assert isinstance(texts, list) and len(texts) == len(inputs)
        assert all(isinstance(t, str) for t in texts)
    assert len(short_rows) == len(long_rows) == len(inputs)
    assert all(len(r) <= cap for r in short_rows)
    assert all(len(r) <= more for r in long_rows)
    # greedy decoding with a smaller cap is a truncation of the longer run
    assert all(lr[: len(sr)] == sr for sr, lr in zip(short_rows, long_rows))
    # the strings are the decoded generated tokens, without special tokens or padding
    decode = backbone.tokenizer.decode
    assert short_texts == [decode(r, skip_special_tokens=True).strip() for r in short_rows]
    assert long_texts == [decode(r, skip_special_tokens=True).strip() for r in long_rows]
    special = {backbone.tokenizer.decode([i]) for i in backbone.tokenizer.all_special_ids}
    assert not any(s in t for t in long_texts for s in special)


@pytest.mark.parametrize("placement", ["before", "after", "after_eos"])
def test_generate_batched_equals_alone(tiny_model, examples, placement):
    backbone = _load(tiny_model)
    prompt = _prompt(backbone)
    inputs = [e.input for e in examples]
    batched, _, batch_scores = _generate_capturing(backbone, prompt, inputs, placement=placement, max_new_tokens=6)
    alone, alone_scores = [], []
    for text in inputs:
        out, _, scores = _generate_capturing(backbone, prompt, [text], placement=placement, max_new_tokens=6)
        alone += out
        alone_scores.append(scores)
    # padding must not change what the model sees: same next-token scores, same text
    torch.testing.assert_close(batch_scores, torch.cat(alone_scores), rtol=1e-4, atol=1e-4)
    assert batched == alone


def test_t5_tanh_gelu_is_swapped_for_the_fused_kernel_with_the_same_outputs(tiny_t5):
    """T5 v1.1's Python tanh-GELU becomes PyTorch's one-kernel version; the model computes the same function."""
    from transformers import AutoModelForSeq2SeqLM
    from transformers.activations import NewGELUActivation

    reference = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5).eval()
    assert any(isinstance(m, NewGELUActivation) for m in reference.modules())
    backbone = _load(tiny_t5)
    assert not any(isinstance(m, NewGELUActivation) for m in backbone.model.modules())
    assert any(isinstance(m, torch.nn.GELU) and m.approximate == "tanh" for m in backbone.model.modules())
    ids = torch.randint(3, 100, (3, 12), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(3, 100, (3, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(input_ids=ids, labels=labels).logits
        got = backbone.model(input_ids=ids, labels=labels).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_bf16_weights_train_a_float32_prompt(kind, tiny_llama, tiny_t5):
    """precision = bf16 stores the frozen weights in bfloat16; the prompt and its gradient stay float32."""
    model_dir = {"llama": tiny_llama, "t5": tiny_t5}[kind]
    exact = Backbone.load(str(model_dir), precision="fp32")
    half = Backbone.load(str(model_dir), precision="bf16")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    # buffers keep float32: RoPE's inverse frequencies rounded to bf16 would shift every position
    assert all(b.dtype == torch.float32 for b in half.model.buffers() if b.is_floating_point())
    assert {p.dtype for p in exact.model.parameters()} == {torch.float32}
    split, _ = _split()
    batch = split.train[:4]
    prompt = torch.randn(PROMPT_LEN, half.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.1
    losses = []
    for backbone in (exact, half):
        p = prompt.clone().requires_grad_(True)
        loss = backbone.loss(p, [e.input for e in batch], [e.output for e in batch])
        loss.backward()
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)  # bfloat16 keeps about 3 significant digits


def test_auto_precision_is_float32_on_cpu():
    from engine.compute.backbone import resolve_precision

    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("autocast", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("bank", [False, True], ids=["prompt", "bank"])
def test_prompt_gradients_are_bitwise_reproducible_with_threads(tiny_llama, bank):
    """The prompt's scatter into the rows must not accumulate in thread order: the same batch twice
    gives bit-identical gradients (a threaded index_put_ did not, and made CPU runs irreproducible)."""
    backbone = _load(tiny_llama)
    split, _ = _split()
    batch = (split.train * 4)[:48]
    init = torch.randn(16, backbone.hidden_size, generator=torch.Generator().manual_seed(0))
    if bank:
        init = torch.stack([init, init.flip(0)])
    owner = torch.arange(48) % 2 if bank else None
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        grads = []
        for _ in range(8):
            p = init.clone().requires_grad_(True)
            backbone.token_totals(p, [e.input for e in batch], [e.output for e in batch], owner=owner).mean_loss().backward()
            grads.append(p.grad)
    finally:
        torch.set_num_threads(threads)
    for g in grads[1:]:
        assert torch.equal(g, grads[0])


# ---------------------------------------------------------------- the authors' procedure: prompt position, beams, dropout


def test_after_eos_puts_the_prompt_after_the_end_of_sequence_token(tiny_t5, examples):
    """The authors' T5Prompt.py: cat(embed(" [task] x </s>"), P): input tokens, </s>, then the prompt."""
    backbone = _load(tiny_t5)
    prompt = _prompt(backbone)
    ids = backbone._ids(examples[0].input, "input")
    embeds, mask = backbone._embed_rows(prompt, None, [backbone._prompted_input(ids, "after_eos")])
    n = len(ids)
    expected = torch.cat([backbone.embeddings(torch.tensor(ids + [backbone.eos_id])), prompt])
    assert embeds.shape[1] == n + 1 + PROMPT_LEN and mask.all()
    torch.testing.assert_close(embeds[0], expected)
    assert backbone._prompted_input(ids, "after") == [ids, "P", [backbone.eos_id]]  # ours: x P </s>


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_beam_search_over_a_prompt_bank_equals_one_prompt_at_a_time(tiny_llama, tiny_t5, examples, kind):
    """The authors' decoding (4 beams, repetition penalty 2.5, early stopping) in a multi-prompt group:
    every example's beams read its own job's prompt, so each job gets what generating alone gives.
    One input text for every row keeps the padding equal (near-tied logits of a random model could
    otherwise flip under different padding)."""
    backbone = _load({"llama": tiny_llama, "t5": tiny_t5}[kind])
    bank = torch.stack([_prompt(backbone, seed=j) for j in range(4)])
    owner = torch.tensor([0, 1, 2, 3, 2, 0])
    inputs = [examples[0].input] * len(owner)
    settings = dict(max_new_tokens=6, num_beams=4, repetition_penalty=2.5, early_stopping=True, placement="after_eos")
    seen = []
    original = backbone.model.generate

    def recording(*args, **kw):
        seen.append({k: kw.get(k) for k in ("num_beams", "repetition_penalty", "early_stopping")})
        return original(*args, **kw)

    backbone.model.generate = recording
    try:
        together = backbone.generate(bank, inputs, owner=owner, batch_rows=8, **settings)
    finally:
        del backbone.model.generate
    assert seen == [{"num_beams": 4, "repetition_penalty": 2.5, "early_stopping": True}]
    alone = [backbone.generate(bank[j], [text], **settings)[0] for text, j in zip(inputs, owner.tolist())]
    assert together == alone
    assert len(set(together)) > 1, "the rows read different prompts, so they should not all agree"


def test_dropout_is_on_in_training_and_off_in_evaluation(tiny_t5, examples):
    """model.dropout = "config": the backbone's own rate (T5: dropout_rate) while a prompt trains, none
    when it is evaluated; the masks come from the caller's generator, the global random state is untouched."""
    backbone = Backbone.load(str(tiny_t5), dropout=True)
    assert backbone.model.config.dropout_rate > 0
    prompt = _prompt(backbone)
    inputs, targets = _ios(examples)

    def nll():
        with torch.no_grad():
            return backbone.token_totals(prompt, inputs, targets, "after_eos").nll

    evaluation = nll()
    torch.testing.assert_close(nll(), evaluation, rtol=0, atol=0)  # evaluation: no dropout, deterministic
    global_state = torch.get_rng_state()
    with backbone.training(torch.Generator().manual_seed(0)):
        assert backbone.model.training
        first = nll()
        second = nll()  # the same pass, fresh masks
    assert not backbone.model.training and torch.equal(torch.get_rng_state(), global_state)
    assert not torch.allclose(first, evaluation) and not torch.allclose(first, second)
    with backbone.training(torch.Generator().manual_seed(0)):
        torch.testing.assert_close(nll(), first, rtol=0, atol=0)  # the same generator, the same masks
    # dropout off: training passes are evaluation passes
    off = Backbone.load(str(tiny_t5))
    with off.training(torch.Generator().manual_seed(0)):
        assert not off.model.training
        with torch.no_grad():
            torch.testing.assert_close(off.token_totals(prompt, inputs, targets, "after_eos").nll, evaluation)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_bucketed_row_widths_change_no_loss_or_gradient(tiny_model, examples, placement):
    """CUDA graphs (model.compile_mode = "reduce-overhead") need shapes that repeat, so rows and targets are
    padded up to multiples: the padding is masked, so losses and the prompt's gradient stay the same."""
    backbone = _load(tiny_model)
    inputs, targets = [e.input for e in examples], [e.output for e in examples]

    def loss_and_grad(buckets):
        backbone.row_bucket, backbone.label_bucket = buckets
        prompt = _prompt(backbone, seed=7).requires_grad_(True)
        totals = backbone.token_totals(prompt, inputs, targets, placement)
        (grad,) = torch.autograd.grad(totals.mean_loss(), prompt)
        return totals.nll.detach(), grad

    exact_nll, exact_grad = loss_and_grad((1, 1))
    padded_nll, padded_grad = loss_and_grad((32, 8))
    torch.testing.assert_close(padded_nll, exact_nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded_grad, exact_grad, rtol=1e-4, atol=1e-6)
    embeds, _ = backbone._embed_rows(_prompt(backbone, seed=7), None, [["P", [5, 6, 7]]])
    assert embeds.shape[1] == 32  # the width really was rounded up
