"""Presets: TOML files validated into typed objects before anything runs.

Every key has a type and, where it matters, allowed values or a minimum; an
unknown key, a wrong type or a bad value is a `PresetError` whose one-line
message names the file and the key. `--set a.b=c` overrides go through the
same checks. The resolved preset is what a run directory stores as config.json.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from engine.experiment.data import PAPER_SEEDS
from engine.base.fields import option as _field
from engine.base.hardware import PRECISIONS
from engine.experiment.methods import METHODS, MethodConfig, method_names
from engine.base.tomlcompat import tomllib

DATA_DIR_ENV = "MPT_TUI_DATA_DIR"


class PresetError(ValueError):
    """A preset that cannot run; the message is one line naming the file and key."""


@dataclass
class DataConfig:
    dir: str = _field("", help="task data directory; empty: --data-dir or $MPT_TUI_DATA_DIR")
    config_dir: str = _field("", help="task config directory (tasks/<task>.json, <setting>.json); empty: found next to the data")
    setting: str = _field("", help="setting name (in the config directory) or file listing source/target tasks")
    sources: list[str] | str = _field([], nonblank=True, unique=True, help="source tasks; overrides the setting's list; or \"nearest:K\": "
                                        "each target's K most similar of the setting's sources (data.similarity)")
    targets: list[str] = _field([], nonblank=True, unique=True, help="target tasks; overrides the setting's list")
    k: int = _field(16, minimum=1)
    seeds: list[int] = _field(list(PAPER_SEEDS), minimum=0, unique=True, min_items=1,
                              help="split seeds (non-negative, no repeats, at least one)")
    input_format: str = _field("plain", choices=("plain", "crossfit"),
                               help="plain: the input as stored; crossfit: ' [task] ' + input, multiple-choice "
                                    "options written into the text as ' (A) ... (B) ...' (the authors' code)")
    similarity: str = _field("", help="with sources = \"nearest:K\": the stored similarity matrix, a run id (its "
                                      "analysis.json) or an analysis.json file")
    similarity_kind: str = _field("prompt", choices=("prompt", "text"), help="which of its matrices ranks the sources")

    def __post_init__(self):
        if isinstance(self.sources, str):
            nearest_k(self.sources)  # a string must read as nearest:K


NEAREST_PREFIX = "nearest:"


def nearest_k(sources: list[str] | str) -> int | None:
    """K of `data.sources = "nearest:K"` (None for a list of tasks); any other string is a PresetError."""
    if not isinstance(sources, str):
        return None
    k = sources.removeprefix(NEAREST_PREFIX)
    if not sources.startswith(NEAREST_PREFIX) or not k.isdigit() or int(k) < 1:
        raise PresetError(f"data.sources must be a list of tasks or \"nearest:K\" with K >= 1, got {sources!r}")
    return int(k)


@dataclass
class ModelConfig:
    name: str = _field("smollm2-135m", help="local directory, hub name, or embedded model")
    device: str = _field("auto", help="auto, cpu, cuda, cuda:N")
    max_input_length: int = _field(256, minimum=1)
    max_output_length: int = _field(64, minimum=2)
    precision: str = _field("auto", choices=PRECISIONS,
                            help="auto: bf16 weights on a GPU that has bf16, fp32 elsewhere; autocast: fp32 "
                                 "weights with bf16 matrix products (GPU)")
    compile: bool = _field(False, help="torch.compile the frozen model (GPU; the first steps pay the compile time)")
    compile_mode: str = _field("default", choices=("default", "reduce-overhead"),
                               help="with compile: default (dynamic shapes) or reduce-overhead (CUDA graphs; row "
                                    "widths rounded up so shapes repeat; ~2 min to compile T5-Large, then a batch-8 "
                                    "step 6x faster on an H100; cached across runs)")
    dropout: str = _field("off", choices=("off", "config"),
                          help="config: the model's own dropout rates while training a prompt (off in evaluation), "
                               "as the authors' model.train(); off: no dropout anywhere")


@dataclass
class PromptConfig:
    length: int = _field(100, minimum=1)
    placement: str = _field("before", choices=("before", "after", "after_eos"),
                            help="where the prompt goes: before the input, after it, or after the input's "
                                 "end-of-sequence token (the authors' code)")
    init: str = _field("vocab", choices=("vocab", "task_name", "task_words", "file"),
                       help="vocab: sampled tokens; task_name: one slot per task name (mean embedding of its "
                            "tokens; upstream: every source name), the rest sampled (the authors' rule); "
                            "task_words: one slot per word of the target task's name, the rest sampled")
    vocab_pool: str = _field("first_5000", choices=("first_5000", "t5_c4_top5000"),
                             help="tokens sampled (without replacement) into the prompt: the first 5000 ids of "
                                  "the vocabulary, or the authors' 5000 most frequent T5 tokens in C4")
    file: str = _field("", help="prompt .safetensors when init = 'file'")


@dataclass
class DownstreamConfig:
    learning_rates: list[float] = _field([0.5, 0.4, 0.3, 0.2], above=0.0, unique=True, min_items=1,
                                        help="the grid's learning rates (finite, above 0, no repeats, at least one)")
    optimizer: str = _field("adafactor", choices=("adafactor", "adamw"))
    batch_size: int = _field(8, minimum=1)
    steps: int = _field(3000, minimum=1)
    eval_every: int = _field(50, minimum=1)
    eval_batch_size: int = _field(64, minimum=1)
    log_every: int = _field(10, minimum=1, help="train loss written to metrics.jsonl every N steps")
    prediction: str = _field("auto", choices=("auto", "rank", "generate"),
                             help="auto: rank classification where a task has options, generation otherwise")
    max_new_tokens: int = _field(32, minimum=1)
    num_beams: int = _field(1, minimum=1, help="generation: 1 is greedy; the authors used beam search with 4")
    repetition_penalty: float = _field(1.0, minimum=0.0, help="generation (the authors: 2.5)")
    early_stopping: bool = _field(False, help="beam search ends when num_beams candidates are finished")
    max_epochs: int = _field(0, minimum=0, help="a job also stops after this many passes over its train split "
                             "(0: no cap; the authors' 1000 epochs end 16-example jobs at 1000 steps)")
    test_prompt: str = _field("best_dev", choices=("best_dev", "last"),
                              help="the prompt tested: the one with the best dev score, or the last one (what "
                                   "the authors' code tests: its saved 'best' state aliases the live prompt)")
    max_test_examples: int = _field(0, minimum=0, help="0: the whole test file")
    grad_clip: float = _field(1.0, minimum=0.0)
    weight_decay: float = _field(1e-5, minimum=0.0)
    train_seed: int = _field(0, help="seed of the data order and prompt sampling (added to each split's seed)")
    group_size: int = _field(0, minimum=0, help="grid cells trained together over the shared backbone; "
                             "0: as many as the memory budget allows (GPU), 8 on CPU")
    group_memory_fraction: float = _field(0.8, minimum=0.05, maximum=0.95,
                                          help="share of free GPU memory a group may use")
    checkpoint_every: int = _field(100, minimum=0, help="each job of a group saves its state every N steps, so a "
                                   "killed worker loses at most N steps of its group (0: only when cancelled)")

    def tuning_config(self, learning_rate: float, n_train: int, placement: str) -> TuningConfig:
        """The settings one prompt-tuning job runs with (engine.compute.tuning): the one translation of
        this section, with the job's own learning rate and its steps under `max_epochs`."""
        return TuningConfig(learning_rate=learning_rate,
                            steps=job_steps(self.steps, self.max_epochs, n_train, self.batch_size),
                            placement=placement, **{name: getattr(self, name) for name in TUNING_KEYS})


_DOWN = DownstreamConfig()  # its defaults are the defaults of a job's settings: written once, above
TUNING_KEYS = ("batch_size", "optimizer", "eval_every", "eval_batch_size", "prediction", "max_new_tokens", "num_beams",
               "repetition_penalty", "early_stopping", "grad_clip", "weight_decay", "checkpoint_every")  # as named there


@dataclass
class TuningConfig:
    """What one prompt-tuning job (a grid cell, an embedding job) runs with: `[downstream]` translated once
    by `DownstreamConfig.tuning_config`, plus the job's learning rate, steps and the prompt's placement.
    The defaults are `[downstream]`'s (tests and benchmarks build jobs directly)."""

    learning_rate: float
    steps: int
    batch_size: int = _DOWN.batch_size
    optimizer: str = _DOWN.optimizer
    eval_every: int = _DOWN.eval_every
    eval_batch_size: int = _DOWN.eval_batch_size
    prediction: str = _DOWN.prediction
    max_new_tokens: int = _DOWN.max_new_tokens
    num_beams: int = _DOWN.num_beams
    repetition_penalty: float = _DOWN.repetition_penalty
    early_stopping: bool = _DOWN.early_stopping
    grad_clip: float = _DOWN.grad_clip
    weight_decay: float = _DOWN.weight_decay
    placement: str = PromptConfig().placement
    checkpoint_every: int = 0  # a job built directly saves its state only when stopped; a run's: [downstream]'s


@dataclass
class UpstreamConfig:
    methods: list[str] = _field([], choices=method_names, unique=True,
                                help="initialisations to learn on the source tasks; PT always runs downstream")
    steps: int = _field(5000, minimum=1, help="meta-updates (MTL: optimizer steps)")
    outer_optimizer: str = _field("adafactor", choices=("adafactor", "adamw", "sgd"))
    outer_lr: float = _field(0.5, minimum=0.0)
    outer_weight_decay: float = _field(1e-5, minimum=0.0, help="the outer optimizer's weight decay (the authors: 1e-5)")
    checkpoint_every: int = _field(500, minimum=1)
    log_every: int = _field(10, minimum=1)
    seed: int = _field(0)
    batch_tasks: bool = _field(True, help="the tasks of a meta-batch in one batched pass with per-task prompts "
                               "(false: a loop over tasks; same result, less memory)")
    # each registered method's [upstream.<name>] table (engine.experiment.methods), read as upstream.<name>
    hyperparameters: dict[str, MethodConfig] = field(
        default_factory=lambda: {name: m.make_config() for name, m in METHODS.items()})

    def __getattr__(self, name: str):
        hyperparameters = self.__dict__.get("hyperparameters")
        if hyperparameters is not None and name in hyperparameters:
            return hyperparameters[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


@dataclass
class ClusterConfig:
    backend: str = _field("local", choices=("local", "ray"),
                          help="local: one device of this machine; ray: the run's units spread over a Ray cluster")
    address: str = _field("", help="ray: '' starts a local Ray instance; 'auto' or 'ray://host:port' joins a cluster")
    gpus_per_worker: float = _field(1.0, minimum=0.01, maximum=64.0,
                                    help="GPUs each Ray worker holds (fractions share a GPU: 0.5 puts two on one)")
    max_workers: int = _field(0, minimum=0, help="Ray workers; 0: as many as the cluster has GPUs "
                              "(CPUs on a CPU-only cluster)")


@dataclass
class AnalysisConfig:
    similarity: list[str] = _field([], choices=("prompt", "text"), unique=True,
                                   help="task embeddings compared after the grid: prompt (SPoT: each task's own "
                                        "prompt-tuned prompt), text (the backbone's mean hidden state over inputs)")
    embedding_steps: int = _field(100, minimum=1, help="prompt-tuning steps of each task's embedding job")
    embedding_lr: float = _field(0.3, minimum=0.0, help="learning rate of every embedding job")
    top_k: int = _field(3, minimum=1, help="most similar sources kept per target")


@dataclass
class Preset:
    name: str = _field("unnamed")
    description: str = _field("")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def to_dict(self) -> dict:
        """The preset as TOML-shaped data: each method's table under upstream.<name>."""
        raw = dataclasses.asdict(self)
        raw["upstream"].update(raw["upstream"].pop("hyperparameters"))
        return raw


# ---- validation -------------------------------------------------------------------

_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _check_scalar(value, kind, where: str):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        raise PresetError(f"{where} must be a finite number, got {value!r}")
    if kind is int and isinstance(value, bool):
        raise PresetError(f"{where} must be an integer, got {value!r}")
    if not isinstance(value, kind):
        raise PresetError(f"{where} must be {_TYPE_WORDS[kind]}, got {value!r}")
    return value


def _check_value(value, annotation, meta, where: str):
    if isinstance(annotation, types.UnionType):  # a list or a string (data.sources): the value's own kind
        kinds = typing.get_args(annotation)
        annotation = str if isinstance(value, str) and str in kinds else next(k for k in kinds if k is not str)
    origin = typing.get_origin(annotation)
    if origin is list:
        (item_kind,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise PresetError(f"{where} must be a list of {_TYPE_WORDS[item_kind][2:]}s, got {value!r}")
        value = [_check_scalar(v, item_kind, f"{where}[{i}]") for i, v in enumerate(value)]
        items = value
    else:
        value = _check_scalar(value, annotation, where)
        items = [value]
    choices = meta.get("choices")
    choices = choices() if callable(choices) else choices
    for i, item in enumerate(items):
        at = f"{where}[{i}]" if origin is list else where
        if choices and item not in choices:
            raise PresetError(f"{at} must be one of {', '.join(choices)}, got {item!r}")
        if meta.get("min") is not None and item < meta["min"]:
            raise PresetError(f"{at} must be at least {meta['min']}, got {item!r}")
        if meta.get("above") is not None and not item > meta["above"]:
            raise PresetError(f"{at} must be above {meta['above']:g}, got {item!r}")
        if meta.get("max") is not None and item > meta["max"]:
            raise PresetError(f"{at} must be at most {meta['max']}, got {item!r}")
        if meta.get("nonblank") and isinstance(item, str) and not item.strip():
            raise PresetError(f"{at} must be a non-empty string, got {item!r}")
    if origin is list:
        if meta.get("unique"):
            repeated = [v for i, v in enumerate(items) if v in items[:i]]
            if repeated:
                raise PresetError(f"{where}: {repeated[0]!r} is listed twice")
        if len(items) < (meta.get("min_items") or 0):
            raise PresetError(f"{where} must not be empty (the run needs at least {meta['min_items']})")
    return value


def list_fields(section) -> list[tuple[str, dataclasses.Field]]:
    """(key, field) of every list-valued option of a section and its sub-sections (method tables included)."""
    out = []
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.name == "hyperparameters":
            for name, table in value.items():
                out += [(f"{name}.{k}", g) for k, g in list_fields(table)]
        elif dataclasses.is_dataclass(value):
            out += [(f"{f.name}.{k}", g) for k, g in list_fields(value)]
        elif _is_list_type(hints[f.name]):
            out.append((f.name, f))
    return out


def _is_list_type(annotation) -> bool:
    kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return any(typing.get_origin(k) is list for k in kinds)


def check_lists(preset: "Preset", origin: str) -> None:
    """Every list-valued key of every section, by its declared element rule (also the ones left at
    their defaults or set by a base preset): one PresetError naming the key and `origin`."""
    for key, f in list_fields(preset):
        obj = preset
        *path, name = key.split(".")
        for part in path:
            obj = obj.hyperparameters[part] if part in getattr(obj, "hyperparameters", {}) else getattr(obj, part)
        annotation = typing.get_type_hints(type(obj))[name]
        try:
            _check_value(getattr(obj, name), annotation, f.metadata, key)
        except PresetError as exc:
            raise PresetError(f"{origin}: {exc}") from None


def _build(cls, raw: dict, prefix: str, origin: str, base=None):
    """`cls` from a TOML table, every key checked; keys not given keep `base`'s values (or the defaults)."""
    if not isinstance(raw, dict):
        raise PresetError(f"{origin}: [{prefix.rstrip('.')}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "hyperparameters"}
    methods = METHODS if cls is UpstreamConfig else {}
    kwargs, tables = {}, {}
    for key, value in raw.items():
        where = f"{prefix}{key}"
        if key in methods:
            tables[key] = _build(methods[key].config, value, f"{where}.", origin, base=methods[key].make_config())
        elif key not in known:
            raise PresetError(f"{origin}: unknown key '{where}' (known: {', '.join([*known, *methods])})")
        elif dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, f"{where}.", origin)
        else:
            try:
                kwargs[key] = _check_value(value, hints[key], known[key].metadata, where)
            except PresetError as exc:
                raise PresetError(f"{origin}: {exc}") from None
    try:
        built = dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except PresetError as exc:  # a section's own check (__post_init__)
        raise PresetError(f"{origin}: {exc}") from None
    if methods:
        built.hyperparameters.update(tables)
    return built


def parse_set(assignment: str) -> tuple[list[str], object]:
    """`a.b=value` -> (['a','b'], value); the value is read as TOML, else taken as a string."""
    if "=" not in assignment:
        raise PresetError(f"--set {assignment}: expected key=value")
    key, text = assignment.split("=", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key.strip().split("."), value


def apply_overrides(raw: dict, assignments: list[str]) -> dict:
    for assignment in assignments:
        path, value = parse_set(assignment)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PresetError(f"--set {assignment}: '{part}' is not a table")
        node[path[-1]] = value
    return raw


def builtin_presets_dir() -> Path:
    return Path(str(resources.files("engine.presets")))


def list_builtin_presets() -> list[str]:
    return sorted(p.stem for p in builtin_presets_dir().glob("*.toml"))


def find_preset(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    builtin = builtin_presets_dir() / f"{name_or_path}.toml"
    if builtin.is_file():
        return builtin
    raise PresetError(f"preset '{name_or_path}' not found: no such file, and no built-in preset of that name "
                      f"(built-in: {', '.join(list_builtin_presets())})")


def load_preset(name_or_path: str, overrides: list[str] = (), data_dir: str | None = None,
                require_data_dir: bool = True) -> tuple[Preset, Path]:
    """Read, override and type-check a preset. Paths in it are made absolute. Without `require_data_dir`
    (showing a preset), an unset data directory stays empty instead of being an error."""
    path = find_preset(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"{path}: not valid TOML ({exc})") from None
    raw = apply_overrides(raw, list(overrides))
    raw.setdefault("name", path.stem)
    origin = str(path) if not overrides else f"{path} (with --set)"
    preset = _build(Preset, raw, "", origin)
    check_lists(preset, origin)
    base = path.parent
    if data_dir:
        preset.data.dir = str(Path(data_dir).expanduser().resolve())
    elif preset.data.dir:
        preset.data.dir = str((base / Path(preset.data.dir).expanduser()).resolve())
    elif os.environ.get(DATA_DIR_ENV):
        preset.data.dir = str(Path(os.environ[DATA_DIR_ENV]).expanduser().resolve())
    elif require_data_dir:
        raise PresetError(f"{path}: data.dir is not set: pass --data-dir DIR or set ${DATA_DIR_ENV}")
    relative = [(preset.data, "config_dir"), (preset.data, "setting"), (preset.data, "similarity"),
                (preset.prompt, "file")]
    relative += [(hp, "prompt_file") for hp in preset.upstream.hyperparameters.values()]
    for obj, key in relative:
        value = getattr(obj, key)
        if value and (key not in ("setting", "similarity") or value.endswith((".json", ".toml"))):
            setattr(obj, key, str((base / Path(value).expanduser()).resolve()))
    return preset, path


def preset_from_dict(raw: dict, origin: str = "config.json") -> Preset:
    preset = _build(Preset, raw, "", origin)
    check_lists(preset, origin)
    return preset


# ---- writing presets -------------------------------------------------------------------

def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def to_toml(raw: dict, prefix: str = "") -> str:
    """A preset dict as TOML (scalars and lists in tables, nested tables after)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for key, value in raw.items():
        if isinstance(value, dict):
            lines += ["", f"[{prefix}{key}]", to_toml(value, f"{prefix}{key}.").rstrip("\n")]
    return "\n".join(lines).strip() + "\n"


def override(key: str, value) -> str:
    """A `--set` assignment that sets `key` to `value` exactly (strings quoted, lists as TOML)."""
    return f"{key}={_toml_value(value)}"


def save_preset(target: Path, base: str, overrides: list[str] = (), data_dir: str | None = None) -> Path:
    """Write preset `base` with `overrides` as a new preset file at `target`, named after it.

    The result is checked like any preset before it is written; relative paths of the base
    (data directory, setting file, prompt files) are made absolute so the copy works anywhere.
    """
    preset, _ = load_preset(base, list(overrides), data_dir)  # refuses what would not run
    target = Path(target).expanduser()
    raw = preset.to_dict()
    raw["name"] = target.stem
    try:
        target.write_text(to_toml(raw), encoding="utf-8")
    except OSError as exc:
        raise PresetError(f"save as {target}: cannot write ({exc.strerror})") from None
    return target


def job_steps(steps: int, max_epochs: int, n_train: int, batch_size: int) -> int:
    """A job's optimizer steps: `steps`, or fewer when `max_epochs` passes over its train split end first
    (the authors' loop stops at whichever of total_steps and num_train_epochs comes first)."""
    if not max_epochs:
        return steps
    return min(steps, max_epochs * math.ceil(n_train / batch_size))
