"""Preparing a run: the one path from a preset to a run directory (CLI, app and tests alike).

`check_preset` reads the preset, applies `--set` overrides, checks it against the
data (the plan) and runs every preflight check (the model can be found, prompt
files fit it); `prepare_run` then writes the run directory. Nothing here imports
torch or transformers: a model's config.json and a prompt file's safetensors
header are plain JSON, so the app can call this on its UI path (a Ray preset's
address is checked with one TCP connection). Every problem is
a one-line `PresetError` naming the key.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from engine.execution.cluster import check_cluster
from engine.experiment.config import Preset, PresetError, load_preset
from engine.experiment.plan import Plan, make_plan
from engine.store.run_dir import Run, RunsDirError, create_run, default_runs_root, ensure_writable_root, find_run


@dataclass
class Prepared:
    """A preset that passed every check, with where it came from."""

    preset: Preset
    plan: Plan
    preset_file: Path
    overrides: list[str] = field(default_factory=list)

    def config(self) -> dict:
        """What config.json stores: enough to run, resume and reproduce the run."""
        return {"preset": self.preset.to_dict(), "plan": self.plan.to_dict(), "preset_file": str(self.preset_file),
                "overrides": list(self.overrides)}


def plan_run(preset: Preset, runs_root: Path | None = None) -> Plan:
    """The preset's plan (engine.experiment.plan.make_plan), a run id in `data.similarity` looked up in
    `runs_root` (default: the default runs root)."""
    def find_run_dir(ref: str) -> Path:
        try:
            return find_run(Path(runs_root) if runs_root else default_runs_root(), ref).path
        except RunsDirError as exc:
            raise PresetError(f"data.similarity: {exc}") from None

    return make_plan(preset, find_run_dir)


def check_preset(name_or_path: str, overrides: list[str] = (), data_dir: str | None = None,
                 runs_root: Path | None = None) -> Prepared:
    """`runs_root`: where a run id in `data.similarity` is looked up (default: the default runs root)."""
    preset, path = load_preset(name_or_path, list(overrides), data_dir)
    plan = plan_run(preset, runs_root)
    model_config = model_config_json(preset.model.name)
    check_prompt_files(preset, hidden_size(model_config) if model_config else None)
    check_sequence_length(preset, model_config or {})
    plan.warnings += check_vocab_pool(preset, model_config or {})
    check_cluster(preset.cluster)  # last: it may look for a running Ray cluster
    return Prepared(preset, plan, path, list(overrides))


def prepare_run(root: Path, prepared: Prepared) -> Run:
    """Write the run directory of a checked preset (a fresh, race-free run id)."""
    return create_run(ensure_writable_root(root), prepared.config(), prepared.preset.name)


# ---- preflight checks, torch-free -----------------------------------------------------

def model_config_json(name: str) -> dict | None:
    """The model's config.json, or None for an embedded model not pulled yet (it is pulled on first use).

    A name is a local directory, an embedded model, or a hub name found in the local
    hub cache (or downloaded, where the hub can be reached).
    """
    from engine.store.models import EMBEDDED_MODELS, embedded_model_dir, is_pulled

    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PresetError(f"model.name: directory {path} has no config.json")
        return _read_model_config(path / "config.json")
    if name in EMBEDDED_MODELS:
        return _read_model_config(embedded_model_dir(name) / "config.json") if is_pulled(name) else None
    try:
        from huggingface_hub import hf_hub_download

        return _read_model_config(Path(hf_hub_download(name, "config.json")))
    except Exception as exc:  # not on the hub, offline without a cached copy, a malformed name, ...
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise PresetError(f"model.name: model '{name}' not found; tried a local directory (none), the embedded "
                          f"models ({', '.join(sorted(EMBEDDED_MODELS))}) and the Hugging Face hub ({reason})") from None


def _read_model_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PresetError(f"model.name: {path} is not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise PresetError(f"model.name: {path} is not a model config")
    return config


def hidden_size(model_config: dict) -> int | None:
    """The embedding size a prompt must have (decoder-only: hidden_size; T5: d_model)."""
    return model_config.get("hidden_size") or model_config.get("d_model")


def prompt_file_shape(path: Path) -> tuple[tuple[int, ...], dict]:
    """(shape of its "prompt" tensor, metadata) from a safetensors file's JSON header, without loading it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist")
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100 << 20:
                raise ValueError("header too large")
            header = json.loads(f.read(size))
        shape = tuple(int(d) for d in header["prompt"]["shape"])
    except Exception as exc:  # short file, bad JSON, no "prompt" tensor, ...
        raise ValueError(f"prompt file {path} is not a readable safetensors prompt ({type(exc).__name__}: {exc})") \
            from None
    return shape, header.get("__metadata__") or {}


# A model with relative positions (T5) has no maximum, but its attention cost grows with the square of the
# length and it was trained on 512 tokens: prompt plus input beyond this is refused as a mistake.
MAX_RELATIVE_POSITIONS = 4096


def check_sequence_length(preset: Preset, model_config: dict) -> None:
    """The longest row a run builds must fit the model's positions: prompt + input (+ </s>) for an encoder,
    and + the target for a decoder-only model. Checked from config.json, before any weights load."""
    prompt, inputs, outputs = preset.prompt.length, preset.model.max_input_length, preset.model.max_output_length
    limit = model_config.get("max_position_embeddings") or model_config.get("n_positions")
    if model_config.get("is_encoder_decoder"):
        longest, what = prompt + inputs + 1, "prompt.length + model.max_input_length + 1 (</s>)"
    else:
        longest, what = prompt + inputs + 1 + outputs, \
            "prompt.length + model.max_input_length + 1 + model.max_output_length"
    if isinstance(limit, int) and longest > limit:
        raise PresetError(f"prompt.length: {what} = {longest} tokens, but model {preset.model.name} has "
                          f"max_position_embeddings {limit}")
    if not isinstance(limit, int) and model_config and longest > MAX_RELATIVE_POSITIONS:
        raise PresetError(f"prompt.length: {what} = {longest} tokens, more than the {MAX_RELATIVE_POSITIONS} "
                          f"allowed for a model without a position limit (relative positions)")


def check_vocab_pool(preset: Preset, model_config: dict) -> list[str]:
    """The authors' token list is T5's: refused for a smaller vocabulary, a warning for another model type."""
    if preset.prompt.vocab_pool != "t5_c4_top5000" or preset.prompt.init == "file":
        return []
    from engine.experiment.paper import t5_c4_top5000

    top = max(t5_c4_top5000())
    vocab = model_config.get("vocab_size")
    if isinstance(vocab, int) and vocab <= top:
        raise PresetError(f"prompt.vocab_pool: 't5_c4_top5000' holds T5 token ids up to {top}, but model "
                          f"{preset.model.name} has {vocab} tokens (use 'first_5000')")
    kind = model_config.get("model_type")
    if kind and kind != "t5":
        return [f"prompt.vocab_pool 't5_c4_top5000' lists T5 token ids; in model {preset.model.name} "
                f"({kind}) they name other tokens"]
    return []


def check_prompt_files(preset: Preset, dim: int | None) -> None:
    """Prompt files (init = file, reused upstream prompts) must hold [prompt.length, hidden size] tensors."""
    if preset.prompt.init == "file" and not preset.prompt.file:
        raise PresetError("prompt.file: prompt.init is 'file' but no prompt.file is given")
    files = [("prompt.file", preset.prompt.file)] if preset.prompt.init == "file" else []
    files += [(f"upstream.{m}.prompt_file", preset.upstream.hyperparameters[m].prompt_file)
              for m in preset.upstream.methods if preset.upstream.hyperparameters[m].prompt_file]
    length = preset.prompt.length
    for key, file in files:
        try:
            shape, meta = prompt_file_shape(Path(file))
        except ValueError as exc:
            raise PresetError(f"{key}: {exc}") from None
        if len(shape) != 2:
            raise PresetError(f"{key}: prompt file {file}: expected a [length, dim] tensor, got shape {shape}")
        if dim is not None and shape[1] != dim:
            raise PresetError(f"{key}: prompt file {file} has vectors of size {shape[1]} (saved for model "
                              f"{meta.get('model', '?')}), but this model's hidden size is {dim}")
        if shape[0] != length:
            raise PresetError(f"{key}: prompt file {file} holds {shape[0]} vectors, but prompt.length is {length}")
