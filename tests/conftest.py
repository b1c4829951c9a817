"""Shared fixtures: tiny randomly initialised models of real architectures.

Each model is saved with `save_pretrained` to a temporary directory together with
a tokenizer trained here on the real task texts, and loaded back through the
project's own loading path, exactly as a hub model would be.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MPT_TUI_SHARED_DATA", REPO.parent / "shared" / "data"))
SHARED_TASKS = SHARED_DATA / "metaicl"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # single-threaded training: the same tiny tokenizer each run
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


# The shipped demo data serves every test that needs real task files but no particular task; tests of
# ../shared/data itself (its layout, the paper's settings) need that and skip without it, except in CI,
# where a missing copy is an error rather than a silent skip.
DEMO_DATA = REPO / "presets" / "demo-data"
SMALL_SOURCES = ["demo-movie_sentiment", "demo-spam"]
SMALL_TARGETS = ["demo-emotion", "demo-formality"]
SMALL_SEEDS = [1, 2]


def require_shared_data() -> Path:
    if not SHARED_TASKS.is_dir():
        message = f"shared task data not found at {SHARED_TASKS} (set MPT_TUI_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


def _corpus() -> list[str]:
    texts = []
    roots = [REPO / "presets" / "demo-data" / "tasks"]
    if SHARED_TASKS.is_dir():
        roots.append(SHARED_TASKS)
    for root in roots:
        for path in sorted(root.glob("*/*_16_*_train.jsonl"))[:60]:
            for line in path.read_text().splitlines():
                ex = json.loads(line)
                texts.append(ex["input"])
                texts.append(ex["output"])
                texts.extend(ex.get("options", []))
    return texts or ["a small corpus for the tokenizer"]


def _train_tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":  # byte-level BPE like Llama/SmolLM2/GPT-2
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<|endoftext|>", "<pad>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(_corpus(), trainer)
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>")
    # unigram with T5's special tokens (pad=0, eos=1, unk=2)
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=800, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def build_tiny_model(kind: str, out: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    if kind == "llama":
        tok = _train_tokenizer("bpe")
        config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             bos_token_id=tok.eos_token_id)
        model = LlamaForCausalLM(config)
    elif kind == "t5":
        tok = _train_tokenizer("unigram")
        config = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                          num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)
        model = T5ForConditionalGeneration(config)
    else:
        raise ValueError(kind)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _defaults(lines: str, **values: str) -> str:
    """TOML lines for the keys `lines` does not set itself (a key may appear once per table)."""
    given = {line.split("=")[0].strip() for line in lines.splitlines() if "=" in line}
    return "\n".join(f"{k} = {v}" for k, v in values.items() if k not in given)


def small_run(root: Path, model: Path, *, name: str = "small", **lines: str):
    """A run directory for a small two-target run on the shipped demo data (the CLI's own path:
    engine.runner.prepare); `lines` as for `small_preset`."""
    from engine.runner.prepare import check_preset, prepare_run

    preset_file = small_preset(Path(root).parent / f"{name}.toml", model, name=name, **lines)
    return prepare_run(root, check_preset(str(preset_file)))


def small_preset(preset_file: Path, model: Path, *, name: str = "small", downstream: str = "", upstream: str = "",
                 data: str = "", model_keys: str = "", prompt: str = "") -> Path:
    """The preset file of a small two-target run on the shipped demo data, with `data`/`model_keys`/`prompt`/
    `downstream`/`upstream` TOML lines added to those tables."""
    preset_file.parent.mkdir(parents=True, exist_ok=True)
    preset_file.write_text(f"""
name = "{name}"
[data]
dir = "{DEMO_DATA}"
sources = {json.dumps(SMALL_SOURCES)}
targets = {json.dumps(SMALL_TARGETS)}
seeds = {SMALL_SEEDS}
{data}
[model]
name = "{model}"
device = "cpu"
max_input_length = 40
{model_keys}
[prompt]
length = 4
{prompt}
[downstream]
{_defaults(downstream, learning_rates="[0.3]", batch_size="4", max_test_examples="20", log_every="1")}
{downstream}
[upstream]
{upstream}
""", encoding="utf-8")
    return preset_file


# ---- parallel runs (pytest-xdist; pyproject's addopts: `-n auto --dist loadgroup`) ----

# Tests in one xdist_group run one after another on one worker, in file order, while other workers run the
# rest. "serial": the tests that must not overlap each other: the local Ray instance (marker `ray`: a head
# node with 2 CPUs, Ray's shared /tmp/ray), the tmux session, and the tests with a wall-clock bound (marker
# `serial`). A module whose module-scoped fixture is an expensive run that its tests share, and change in
# turn, keeps them together with its own `pytestmark = pytest.mark.xdist_group(...)`.
SERIAL_GROUP = "serial"

# The longest tests (`--durations`), handed out first so that none starts last and runs alone at the end.
# Module names, longest first; the rest keep their order.
LONGEST_FIRST = ("test_faults", "test_bench", "test_launch", "test_grid", "test_headless", "test_app",
                 "test_estimate")


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker more than the cores (the tests spend much of their time waiting on the
    subprocesses they start), at least 2; PYTEST_XDIST_AUTO_NUM_WORKERS overrides it."""
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if env:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(2, cores + 1)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("ray") or item.get_closest_marker("serial"):
            item.add_marker(pytest.mark.xdist_group(SERIAL_GROUP))
    if hasattr(config, "workerinput"):  # an xdist worker (each sorts its identical collection the same way)
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.module.__name__ if item.module else "", len(rank)))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest on one thread (a busy 2-core machine makes OpenMP threads spin)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def snapshot_weights(backbone) -> dict:
    model = backbone.model
    return {"params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "buffers": {n: b.detach().clone() for n, b in model.named_buffers()}}


def assert_weights_unchanged(backbone, before: dict) -> None:
    """The frozen backbone: bit-identical weights, no gradient anywhere."""
    import torch

    params = dict(backbone.model.named_parameters())
    assert params.keys() == before["params"].keys()
    for name, p in params.items():
        assert torch.equal(p, before["params"][name]), f"backbone parameter {name} changed"
        assert not p.requires_grad, f"backbone parameter {name} requires grad"
        assert p.grad is None, f"backbone parameter {name} has a .grad"
    for name, b in backbone.model.named_buffers():
        assert torch.equal(b, before["buffers"][name]), f"backbone buffer {name} changed"


def session_dir(tmp_path_factory) -> Path:
    """A temporary directory of this test session that every pytest-xdist worker sees (the workers' base
    temporary directories are `popen-gw<N>` folders inside the controller's); the base temp without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(directory)` once per test session, shared by all xdist workers (the first builds it under a
    file lock, the others wait for it and reuse it). Only for what the tests read and never change: a
    session-scoped fixture without xdist already shares it between all of the session's tests."""
    from filelock import FileLock

    root = session_dir(tmp_path_factory)
    target, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            if target.exists():  # a build that failed half-way in another worker
                shutil.rmtree(target)
            target.mkdir()
            build(target)
            done.touch()
    return target


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "tiny-llama", lambda out: build_tiny_model("llama", out))


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "tiny-t5", lambda out: build_tiny_model("t5", out))


@pytest.fixture(params=["llama", "t5"])
def tiny_model(request, tiny_llama, tiny_t5) -> Path:
    return {"llama": tiny_llama, "t5": tiny_t5}[request.param]


# ---- synthetic grid-cell records (run through the real selection code; nothing trains) ----

def cell(method, task, seed, lr, dev, test, metric="accuracy", best_step=10):
    return {"method": method, "task": task, "seed": seed, "lr": lr, "dev": dev, "test": test,
            "metric": metric, "best_step": best_step}


def synthetic_cells() -> list[dict]:
    """Grid order (method, task, seed, lr) with learning rates [0.3, 0.1]."""
    return [
        # task-a: seed 13 picks lr 0.1; seed 42 ties and keeps 0.3 (listed first); seed 100 picks 0.3
        cell("pt", "task-a", 13, 0.3, 0.5, 0.6), cell("pt", "task-a", 13, 0.1, 0.7, 0.8),
        cell("pt", "task-a", 42, 0.3, 0.6, 0.7), cell("pt", "task-a", 42, 0.1, 0.6, 0.1),
        cell("pt", "task-a", 100, 0.3, 0.9, 0.9), cell("pt", "task-a", 100, 0.1, 0.2, 0.3),
        # task-b (f1): tests chosen .2, .4, .6
        cell("pt", "task-b", 13, 0.3, 0.4, 0.5, "f1"), cell("pt", "task-b", 13, 0.1, 0.45, 0.2, "f1"),
        cell("pt", "task-b", 42, 0.3, 0.3, 0.4, "f1"), cell("pt", "task-b", 42, 0.1, 0.1, 0.9, "f1"),
        cell("pt", "task-b", 100, 0.3, 0.5, 0.6, "f1"), cell("pt", "task-b", 100, 0.1, 0.5, 0.0, "f1"),
        # task-c: one split; a NaN dev score never wins
        cell("pt", "task-c", 13, 0.3, float("nan"), 0.1), cell("pt", "task-c", 13, 0.1, 0.2, 0.3),
        # a second method, kept apart from the first
        cell("mpt", "task-a", 13, 0.3, 0.1, 0.2), cell("mpt", "task-a", 13, 0.1, 0.0, 0.9),
    ]


EXPECTED_CHOICE = {  # (method, task, seed) -> (lr, test)
    ("pt", "task-a", 13): (0.1, 0.8), ("pt", "task-a", 42): (0.3, 0.7), ("pt", "task-a", 100): (0.3, 0.9),
    ("pt", "task-b", 13): (0.1, 0.2), ("pt", "task-b", 42): (0.3, 0.4), ("pt", "task-b", 100): (0.3, 0.6),
    ("pt", "task-c", 13): (0.1, 0.3), ("mpt", "task-a", 13): (0.3, 0.2),
}


# ---- processes that race each other (run directories, the index) ----

FORK = multiprocessing.get_context("fork")


def join_all(procs, timeout=120) -> None:
    deadline = time.time() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.time()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
