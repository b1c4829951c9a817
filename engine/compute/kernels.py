"""Faster kernels for the frozen model, each computing what the code it replaces computes.

`install(model)` is called once by `Backbone`:
- attention: models that use SDPA get `fused_bias_sdpa`, transformers' SDPA path with T5's
  relative position bias turned into an additive mask *in the query's dtype*. A float32 bias
  (autocast's fp32 weights) next to bf16 queries is a mask SDPA's fused kernels refuse, which
  sends every T5 attention to the math kernel; in the query's dtype the memory-efficient kernel
  takes it (it accepts an additive bias, padded to its alignment by PyTorch).
- norms: T5's and Llama's RMS norms become `torch.nn.functional.rms_norm` (one fused kernel on a
  GPU instead of six elementwise ones), same formula, float32 statistics.
- the GELU of T5 v1.1 becomes PyTorch's one-kernel tanh GELU.

Second-order MAML needs double backward: inside `double_backward()` the norms use the
composite formula and SDPA its math kernel (the fused kernels have no second derivative).
`sdpa_choices()` counts which SDPA kernel each attention call would run, for benchmarks.
"""

from __future__ import annotations

import collections
import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

FUSED_SDPA = "mpt_sdpa"  # the attention implementation name registered with transformers

_double_backward = 0  # > 0 inside double_backward()


@contextlib.contextmanager
def double_backward():
    """Forward passes whose graph is differentiated twice (second-order MAML)."""
    global _double_backward
    from torch.nn.attention import SDPBackend, sdpa_kernel

    _double_backward += 1
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        _double_backward -= 1


class _CountSdpaChoices(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            from torch.nn.attention import SDPBackend

            q, k, v = args[:3]
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            choice = torch._fused_sdp_choice(q, k, v, mask, kwargs.get("dropout_p", 0.0),
                                             kwargs.get("is_causal", False), scale=kwargs.get("scale"),
                                             enable_gqa=kwargs.get("enable_gqa", False))
            self.counts[SDPBackend(choice).name] += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def sdpa_choices():
    """Count the kernel PyTorch picks for each scaled_dot_product_attention call made inside
    (name -> calls), whichever attention implementation makes them."""
    with _CountSdpaChoices() as mode:
        yield mode.counts


def fused_bias_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                    position_bias=None, **kwargs):
    """transformers' SDPA attention with the position bias and a float mask cast to the query's dtype."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None and attention_mask.dtype.is_floating_point:
        attention_mask = attention_mask.to(query.dtype)
    if position_bias is not None:
        position_bias = position_bias.to(query.dtype)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, position_bias=position_bias, **kwargs)


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(FUSED_SDPA, fused_bias_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FUSED_SDPA, sdpa_mask)  # the masks SDPA is given


class FusedRMSNorm(torch.nn.Module):
    """T5's / Llama's RMS norm on `F.rms_norm`. Both normalise in float32 and scale by the weight;
    T5 rounds to a half-precision weight's dtype, Llama to the input's (their own code)."""

    def __init__(self, weight: torch.nn.Parameter, eps: float, round_to_weight: bool):
        super().__init__()
        self.weight = weight
        self.variance_epsilon = eps
        self.round_to_weight = round_to_weight

    def _dtype(self, x: torch.Tensor) -> torch.dtype:
        if self.round_to_weight:
            half = self.weight.dtype in (torch.float16, torch.bfloat16)
            return self.weight.dtype if half else torch.float32
        return x.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _double_backward:  # the models' own composite formula: twice differentiable everywhere
            x32 = x.to(torch.float32)
            normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        else:
            normed = F.rms_norm(x.to(torch.float32), (x.shape[-1],), eps=self.variance_epsilon)
        return self.weight * normed.to(self._dtype(x))


def _swap_modules(model) -> dict[str, int]:
    from transformers.activations import NewGELUActivation

    norm_kinds = {"T5LayerNorm": True, "LlamaRMSNorm": False}  # class name -> rounds to the weight's dtype
    swapped = collections.Counter()
    for module in list(model.modules()):
        for name, child in module.named_children():
            kind = type(child).__name__
            if kind in norm_kinds:
                setattr(module, name, FusedRMSNorm(child.weight, child.variance_epsilon, norm_kinds[kind]))
                swapped["rms_norm"] += 1
            elif type(child) is NewGELUActivation:
                setattr(module, name, torch.nn.GELU(approximate="tanh"))
                swapped["gelu"] += 1
    return dict(swapped)


def install(model, attention: bool = True) -> dict:
    """Put the fused kernels into `model` (in place); returns what was replaced."""
    report = _swap_modules(model)
    if attention and getattr(model.config, "_attn_implementation", None) == "sdpa":
        _register_attention()
        model.set_attn_implementation(FUSED_SDPA)
        report["attention"] = FUSED_SDPA
    return report


def attention_implementation(model) -> str:
    return getattr(model.config, "_attn_implementation", "eager") or "eager"
