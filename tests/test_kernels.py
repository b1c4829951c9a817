"""engine/compute/kernels.py: the fused kernels compute what the models' own code computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.t5.modeling_t5 import T5LayerNorm

from engine.compute import kernels


def _t5():
    torch.manual_seed(0)
    config = T5Config(vocab_size=120, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", decoder_start_token_id=0)
    return T5ForConditionalGeneration(config).eval()


def _llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).eval()


def _batch():
    ids = torch.randint(3, 120, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding: the attention mask and the bias meet
    mask[2, 4:] = 0
    return ids, mask, ids[:, :5]


def _logits(model, ids, mask, dec):
    if model.config.is_encoder_decoder:
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    return model(input_ids=ids, attention_mask=mask.flip(1)).logits  # left padding


@pytest.mark.parametrize("make", [_t5, _llama])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_installed_kernels_give_the_models_outputs(make, dtype, tol):
    reference, fused = make().to(dtype), make().to(dtype)
    report = kernels.install(fused)
    assert report["attention"] == kernels.FUSED_SDPA and report["rms_norm"] > 0
    assert not any(isinstance(m, (T5LayerNorm, LlamaRMSNorm)) for m in fused.modules())
    with torch.no_grad():
        expected, got = _logits(reference, *_batch()), _logits(fused, *_batch())
    scale = float(expected.float().abs().max())
    torch.testing.assert_close(got.float(), expected.float(), rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("norm_class", [T5LayerNorm, LlamaRMSNorm])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rms_norm_equals_the_models_norm_and_its_second_derivative(norm_class, dtype):
    torch.manual_seed(0)
    norm = norm_class(16, eps=1e-6).to(dtype)
    norm.weight.data = torch.randn(16).to(dtype)
    fused = kernels.FusedRMSNorm(norm.weight, norm.variance_epsilon, round_to_weight=norm_class is T5LayerNorm)
    x = (torch.randn(4, 16) * 3).to(dtype)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(fused(x).float(), norm(x).float(), rtol=tol, atol=tol)
    assert fused(x).dtype == norm(x).dtype

    def second(module):  # d/dx of the gradient norm: needs double backward through the norm
        x64 = torch.randn(4, 16, generator=torch.Generator().manual_seed(2), requires_grad=True)
        (g,) = torch.autograd.grad(module(x64).pow(3).sum(), x64, create_graph=True)
        (h,) = torch.autograd.grad(g.pow(2).sum(), x64)
        return h

    if dtype == torch.float32:
        with kernels.double_backward():
            torch.testing.assert_close(second(fused), second(norm), rtol=1e-5, atol=1e-5)


class _SdpaMasks(TorchFunctionMode):
    """Records (query dtype, mask dtype) of every scaled_dot_product_attention call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            self.calls.append((args[0].dtype, None if mask is None else mask.dtype))
        return func(*args, **kwargs)


def _masks_under_autocast(model):
    ids, mask, dec = _batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), _SdpaMasks() as seen:
        _logits(model, ids, mask, dec)
    return seen.calls


def test_t5_bias_reaches_sdpa_in_the_query_dtype_under_autocast():
    """Autocast keeps T5's weights, so its position bias, in float32 next to bf16 queries: a mask SDPA's fused
    GPU kernels refuse. The installed attention hands SDPA the bias in the query's dtype."""
    plain = _masks_under_autocast(_t5())
    assert any(mask is not None and mask != query for query, mask in plain)  # the problem exists
    fused = _t5()
    kernels.install(fused)
    calls = _masks_under_autocast(fused)
    assert calls and all(mask is None or mask == query or mask == torch.bool for query, mask in calls)


def test_sdpa_choices_counts_every_attention_call():
    model = _t5()
    kernels.install(model)
    with torch.no_grad(), kernels.sdpa_choices() as choices:
        _logits(model, *_batch())
    # 2 encoder self-attentions, 2 decoder self- and 2 cross-attentions
    assert sum(choices.values()) == 6
    with torch.no_grad(), kernels.double_backward(), kernels.sdpa_choices() as choices:
        _logits(model, *_batch())
    assert dict(choices) == {"MATH": 6}
