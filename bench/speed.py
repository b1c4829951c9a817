"""Speed benchmark of issue 5: multi-prompt grids, the PT step vs PEFT, batched meta-updates.

    python bench/speed.py --mode cpu   # SmolLM2-135M architecture (real weights if pulled), 2-core budget
    python bench/speed.py --mode gpu   # T5-Large (LM-adapted) architecture, random weights, bf16 weights
    python bench/speed.py --mode tiny  # a tiny Llama in seconds: CI proves the script still works

Everything is measured in this one process, side by side:
  1. grid: R prompt-tuning jobs one after another vs. as one multi-prompt group (wall time,
     training sequences/s, TFLOP/s by the issue's count 4 x params x tokens / time), and the
     training step alone (no evaluation) of one job and of the group;
  2. pt_step: the project's single-job PT step vs. PEFT's prompt tuning (PromptTuningConfig)
     on the same model, batch and optimizer (skipped with a note where peft is not installed);
  3. meta: MAML, FoMAML and Reptile meta-update time and peak memory, the meta-batch's tasks
     batched in one pass vs. a loop over tasks.
It prints one JSON report (also written to --json) and a human table. Inputs are random
token sequences of fixed length: speed does not depend on what the tokens say.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from engine.compute.backbone import Backbone  # noqa: E402
from engine.experiment.data import Example, TaskInfo  # noqa: E402


@dataclass
class Mode:
    arch: str
    device: str
    input_tokens: int
    prompt_tokens: int
    target_tokens: int  # the answer's tokens, end-of-sequence included
    batch: int
    jobs: int  # grid jobs, trained one by one and as one group
    grid_steps: int
    pt_steps: int
    meta_steps: int
    dev_examples: int
    eval_batch: int = 64  # rows per evaluation pass


MODES = {
    "tiny": Mode("llama-tiny", "cpu", 24, 8, 3, 4, jobs=4, grid_steps=3, pt_steps=3, meta_steps=2, dev_examples=4),
    "cpu": Mode("smollm2-135m", "cpu", 64, 20, 4, 8, jobs=4, grid_steps=3, pt_steps=4, meta_steps=2, dev_examples=8),
    "gpu": Mode("t5-large", "cuda", 128, 100, 8, 8, jobs=32, grid_steps=6, pt_steps=12, meta_steps=3,
                dev_examples=16, eval_batch=256),
}

# bf16 dense tensor peak (no sparsity), for the share-of-peak column
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


# ---- model and data -------------------------------------------------------------------

def word_tokenizer(vocab_size: int):
    """A word-level tokenizer over w0..wN: one token per word, so sequence lengths are exact."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(vocab_size - 3)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_model(arch: str, device: str):
    """The model and tokenizer; weights random except a pulled SmolLM2 (speed does not depend on them)."""
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    if arch == "smollm2-135m":
        from engine.store.models import is_pulled
        from engine.compute.models import load_pretrained

        if is_pulled(arch):
            model, tokenizer, _ = load_pretrained(arch)
            return model, tokenizer, "real weights"
        config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                             rope_theta=100000.0, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)
        cls = LlamaForCausalLM
    elif arch == "llama-tiny":
        config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1)
        cls = LlamaForCausalLM
    elif arch == "t5-tiny":
        config = T5Config(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                          feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0,
                          eos_token_id=1, decoder_start_token_id=0)
        cls = T5ForConditionalGeneration
    elif arch == "t5-large":  # google/t5-large-lm-adapt's configuration
        config = T5Config(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16,
                          feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0,
                          eos_token_id=1, decoder_start_token_id=0)
        cls = T5ForConditionalGeneration
    else:
        raise SystemExit(f"unknown architecture {arch}")
    torch.manual_seed(0)
    with torch.device(device):  # initialise where it runs: T5-Large's init on CPU alone takes a while
        model = cls(config)
    return model, word_tokenizer(config.vocab_size), "random weights"


class TextMaker:
    def __init__(self, tokenizer, seed: int = 0):
        self.tokenizer = tokenizer
        self.generator = torch.Generator().manual_seed(seed)
        self.low = 3 if "w0" in tokenizer.get_vocab() else 1000  # skip special tokens

    def text(self, tokens: int) -> str:
        ids = torch.randint(self.low, len(self.tokenizer) - 1, (tokens,), generator=self.generator).tolist()
        return self.tokenizer.decode(ids)


def make_task(maker: TextMaker, mode: Mode, n_train: int, name: str):
    """A two-option classification task of random token sequences (train, dev, info)."""
    options = (maker.text(mode.target_tokens - 1), maker.text(mode.target_tokens - 1))

    def example(i):
        return Example(maker.text(mode.input_tokens), options[i % 2], options)

    info = TaskInfo(name=name, task_type="classification", options=options, layout="metaicl")
    return [example(i) for i in range(n_train)], [example(i) for i in range(mode.dev_examples)], info


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:  # Linux: resident pages are the second field
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def peak_memory(device):
    """Peak bytes above the level at entry: CUDA's allocator count, or on CPU the process's resident
    memory sampled every millisecond (in a fresh process, as freed memory is not always returned)."""
    box = {}
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield box
        sync(device)
        box["bytes"] = torch.cuda.max_memory_allocated(device) - before
        return
    before, peak, done = _resident_bytes(), [0], threading.Event()

    def sample():
        while not done.wait(0.001):
            peak[0] = max(peak[0], _resident_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield box
    finally:
        done.set()
        sampler.join()
        box["bytes"] = max(peak[0], _resident_bytes()) - before


# ---- 1. the grid ----------------------------------------------------------------------------

def make_jobs(backbone, mode: Mode, maker: TextMaker, count: int, dev_examples: int | None = None, **cfg) -> list:
    """`count` prompt-tuning jobs on four random-token tasks, lr 0.3, the mode's batch; `cfg` sets the rest."""
    from engine.compute.prompt import initial_prompt
    from engine.compute.tuning import Job, TuningConfig

    jobs = []
    for r in range(count):
        train, dev, info = make_task(maker, mode, 16, f"task{r % 4}")
        jobs.append(Job(initial_prompt(backbone, length=mode.prompt_tokens, method="vocab", seed=r), train,
                        dev[:dev_examples], info, TuningConfig(learning_rate=0.3, batch_size=mode.batch, **cfg),
                        seed=r))
    return jobs


def bench_grid(backbone, mode: Mode, maker: TextMaker, flops_per_seq: float) -> dict:
    from engine.compute.tuning import prompt_tune_group

    jobs = make_jobs(backbone, mode, maker, mode.jobs, steps=mode.grid_steps, eval_every=mode.grid_steps,
                     eval_batch_size=mode.eval_batch)
    warm = make_jobs(backbone, mode, maker, mode.jobs, steps=1)
    prompt_tune_group(backbone, warm[:1])  # warm-up: kernels, allocator, caches
    prompt_tune_group(backbone, warm)
    sync(backbone.device)
    t = time.perf_counter()
    for job in jobs:
        prompt_tune_group(backbone, [job])
    sync(backbone.device)
    sequential = time.perf_counter() - t
    t = time.perf_counter()
    prompt_tune_group(backbone, jobs)
    sync(backbone.device)
    grouped = time.perf_counter() - t
    sequences = mode.jobs * mode.grid_steps * mode.batch
    one_step = group_step_time(backbone, mode, maker, 1, mode.pt_steps)
    group_step = group_step_time(backbone, mode, maker, mode.jobs, max(2, mode.grid_steps // 2))
    steps = {"one_job_step_s": one_step, "group_step_s": group_step,
             "step_speedup": mode.jobs * one_step / group_step,
             "group_step_tflops": flops_per_seq * mode.jobs * mode.batch / group_step / 1e12}
    auto = {}
    if backbone.device.type == "cuda":  # what the grid runner's memory probe packs (80% of free memory)
        from engine.compute.tuning import group_size_that_fits

        size, probe = group_size_that_fits(backbone, [e for job in jobs for e in job.train], mode.batch,
                                           jobs[0].init_prompt, "before", 0.8)
        auto = {"auto_group_size": size, **{f"probe_{k}": v for k, v in probe.items()}}
    return {**auto, **steps, "jobs": mode.jobs, "steps": mode.grid_steps, "batch": mode.batch, "dev_examples": mode.dev_examples,
            "sequential_s": sequential, "grouped_s": grouped,
            "sequential_seq_per_s": sequences / sequential, "grouped_seq_per_s": sequences / grouped,
            "sequential_tflops": flops_per_seq * sequences / sequential / 1e12,
            "grouped_tflops": flops_per_seq * sequences / grouped / 1e12,
            "speedup": sequential / grouped,
            "note": "wall time of the whole jobs: training steps plus a dev evaluation at the last step"}


def group_step_time(backbone, mode: Mode, maker: TextMaker, jobs: int, steps: int) -> float:
    """Seconds per training step of a group of `jobs` (on_step timestamps: no evaluation inside)."""
    from engine.compute.tuning import prompt_tune_group

    group = make_jobs(backbone, mode, maker, jobs, dev_examples=1, steps=steps + 1, eval_every=10**9)
    stamps: dict[int, float] = {}

    def on_step(j, step, loss):
        stamps.setdefault(step, time.perf_counter())  # losses are read back: the step is finished

    prompt_tune_group(backbone, group, on_step=on_step)
    return (stamps[steps + 1] - stamps[1]) / steps


# ---- 2. the PT step vs PEFT ------------------------------------------------------------------

def bench_pt_step(backbone, mode: Mode, maker: TextMaker) -> dict:
    ours = group_step_time(backbone, mode, maker, 1, mode.pt_steps)
    report = {"batch": mode.batch, "steps": mode.pt_steps, "ours_s": ours}
    try:
        import peft
    except ImportError:
        report["peft_s"] = None
        report["note"] = "peft is not installed: pip install peft"
        return report
    report["peft_version"] = peft.__version__
    try:
        report["peft_s"] = peft_step_time(backbone, mode, maker)
    except Exception as exc:  # noqa: BLE001 - a PEFT that breaks on this transformers is a note, not a crash
        report["peft_s"], report["note"] = None, f"PEFT failed: {type(exc).__name__}: {str(exc)[:160]}"
        return report
    report["ours_vs_peft"] = report["peft_s"] / ours
    return report


def peft_step_time(backbone, mode: Mode, maker: TextMaker) -> float:
    """PEFT prompt tuning on the same frozen model: the same batch, Adafactor and clipping. Its float32
    prompt meets bfloat16 weights under autocast, the usual way to run PEFT on a bf16 model."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    from engine.compute.tuning import make_optimizer

    model, device = backbone.model, backbone.device
    task_type = TaskType.SEQ_2_SEQ_LM if backbone.is_encoder_decoder else TaskType.CAUSAL_LM
    peft_model = get_peft_model(model, PromptTuningConfig(task_type=task_type, num_virtual_tokens=mode.prompt_tokens))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = make_optimizer("adafactor", params, 0.3, 1e-5)
    train, _, _ = make_task(maker, mode, 16, "peft")

    def batch(step):
        rows = [train[(step * mode.batch + i) % len(train)] for i in range(mode.batch)]
        ins = [backbone._ids(e.input, "input") for e in rows]
        outs = [backbone._ids(e.output, "target") for e in rows]
        if backbone.is_encoder_decoder:
            ids = torch.tensor([i + [backbone.eos_id] for i in ins])
            return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                    "labels": torch.tensor(outs).to(device)}
        ids = torch.tensor([i + o for i, o in zip(ins, outs)])
        labels = torch.tensor([[-100] * len(i) + o for i, o in zip(ins, outs)])
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                "labels": labels.to(device)}

    times = []
    try:
        for step in range(mode.pt_steps + 1):
            inputs = batch(step)
            sync(device)
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=backbone.precision != "fp32"):
                loss = peft_model(**inputs).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            loss.item()  # wait for the step
            times.append(time.perf_counter() - t)
    finally:  # prompt learning leaves the base model's modules as they were; keep it frozen
        backbone.model.requires_grad_(False)
    return statistics.mean(times[1:])  # the first step warms up


# ---- 4. kernels: transformers' own modules vs engine/compute/kernels.py ----------------------------------

def training_step_choices(backbone, mode: Mode, maker: TextMaker) -> dict:
    """Which SDPA kernel each attention call of one training step (forward and backward) would run."""
    from engine.compute import kernels
    from engine.compute.prompt import initial_prompt

    train, _, _ = make_task(maker, mode, mode.batch, "probe")
    prompt = initial_prompt(backbone, length=mode.prompt_tokens, method="vocab", seed=0).to(backbone.device)
    prompt.requires_grad_(True)
    with kernels.sdpa_choices() as choices:
        backbone.token_totals(prompt, [e.input for e in train], [e.output for e in train]).mean_loss().backward()
    return dict(choices)


def fused_only_failure(backbone, mode: Mode, maker: TextMaker) -> str:
    """'' when a training step runs with SDPA's fused kernels alone (no math fallback), else why not
    (PyTorch's own warnings say why each kernel refused)."""
    import warnings

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if backbone.device.type != "cuda":
        return "n/a on CPU"
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with warnings.catch_warnings(record=True) as caught, sdpa_kernel(fused):
        warnings.simplefilter("always")
        try:
            training_step_choices(backbone, mode, maker)
            return ""
        except RuntimeError as exc:
            reasons = sorted({str(w.message).splitlines()[0][:160] for w in caught})
            return f"{str(exc).splitlines()[0][:120]} | " + " | ".join(reasons[:6])


def cuda_profile(backbone, mode: Mode, maker: TextMaker, jobs: int) -> dict:
    """Where the GPU time of two training steps of a group goes: the top kernels' shares, and the
    step's host (CPU) time against its GPU time (host-bound when the first is larger)."""
    from torch.profiler import ProfilerActivity, profile

    from engine.compute.tuning import prompt_tune_group

    if backbone.device.type != "cuda":
        return {}
    group = make_jobs(backbone, mode, maker, jobs, dev_examples=1, steps=2, eval_every=10**9)
    sync(backbone.device)
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        prompt_tune_group(backbone, group)
        sync(backbone.device)
    wall = time.perf_counter() - started
    rows = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    gpu_us = sum(e.self_device_time_total for e in rows)
    top = sorted(rows, key=lambda e: -e.self_device_time_total)[:10]
    return {"jobs": jobs, "wall_s": wall, "gpu_busy_s": gpu_us / 1e6,
            "top_kernels": [[e.key[:90], round(e.self_device_time_total / gpu_us, 3)] for e in top]}


def kernel_variant(backbone, mode: Mode, maker: TextMaker, flops_per_seq: float) -> dict:
    one = group_step_time(backbone, mode, maker, 1, mode.pt_steps)
    group = group_step_time(backbone, mode, maker, mode.jobs, max(2, mode.grid_steps // 2))
    return {"one_job_step_s": one, "group_step_s": group, "step_speedup": mode.jobs * one / group,
            "group_step_tflops": flops_per_seq * mode.jobs * mode.batch / group / 1e12,
            "sdpa_choices": training_step_choices(backbone, mode, maker),
            "fused_only": fused_only_failure(backbone, mode, maker) or "ok",
            "profile_group": cuda_profile(backbone, mode, maker, mode.jobs),
            "profile_one_job": cuda_profile(backbone, mode, maker, 1)}


def bench_kernels(backbone, mode: Mode, maker: TextMaker, flops_per_seq: float) -> dict:
    """The same steps with transformers' own attention, norms and GELU, then with engine/compute/kernels.py
    installed into the same model (the backbone must have been made with fused_kernels=False)."""
    from engine.compute import kernels

    assert not backbone.kernels, "bench_kernels starts from the model's own modules"
    report = {"transformers": kernel_variant(backbone, mode, maker, flops_per_seq)}
    backbone.kernels = kernels.install(backbone.model)
    report["installed"] = backbone.kernels
    report["fused"] = kernel_variant(backbone, mode, maker, flops_per_seq)
    report["group_step_gain"] = report["transformers"]["group_step_s"] / report["fused"]["group_step_s"]
    report["one_job_step_gain"] = report["transformers"]["one_job_step_s"] / report["fused"]["one_job_step_s"]
    return report


def bench_compile(backbone, mode: Mode, maker: TextMaker) -> dict:
    """The single-job step (fixed shapes) with the model compiled in "reduce-overhead" mode (CUDA graphs)
    against eager; the first compiled steps' extra time is the compile time."""
    if backbone.device.type != "cuda":
        return {"note": "CUDA graphs are a GPU feature: not measured on CPU"}
    eager = group_step_time(backbone, mode, maker, 1, mode.pt_steps)
    original = backbone.model.forward
    backbone.model.forward = torch.compile(original, mode="reduce-overhead", dynamic=False)
    try:
        started = time.perf_counter()
        group_step_time(backbone, mode, maker, 1, 2)  # compiles (forward, backward), records the graphs
        first = time.perf_counter() - started
        compiled = group_step_time(backbone, mode, maker, 1, mode.pt_steps)
    except Exception as exc:  # noqa: BLE001 - a compiler failure is a result to report, not a crash
        return {"eager_s": eager, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    finally:
        backbone.model.forward = original
    return {"eager_s": eager, "compiled_s": compiled, "speedup": eager / compiled,
            "compile_and_first_steps_s": first}


# ---- 5. evaluation: rank classification, shared prefix, beam search -------------------------------

def eval_examples(backbone, mode: Mode, maker: TextMaker, real_weights: bool) -> tuple[list, str]:
    """(prompt, examples) per job: the demo's targets and splits (dev sets) on the real SmolLM2, else
    random three-option tasks."""
    from engine.compute.prompt import initial_prompt

    if real_weights:
        from engine.experiment.config import load_preset
        from engine.experiment.data import TaskData
        from engine.experiment.plan import make_plan

        preset, _ = load_preset("demo")
        plan = make_plan(preset)
        data = TaskData(preset.data.dir)
        items = [(initial_prompt(backbone, length=preset.prompt.length, method="task_name", task_names=[t], seed=s),
                  data.load_split(t, preset.data.k, s).dev) for t in plan.targets for s in plan.seeds]
        return items, f"the demo's {len(plan.targets)} targets x {len(plan.seeds)} splits, dev sets"
    items = []
    for r in range(4):
        options = tuple(maker.text(mode.target_tokens - 1) for _ in range(3))
        examples = [Example(maker.text(mode.input_tokens), options[i % 3], options) for i in range(mode.dev_examples)]
        items.append((initial_prompt(backbone, length=mode.prompt_tokens, method="vocab", seed=r), examples))
    return items, f"4 random 3-option tasks x {mode.dev_examples} examples"


def bench_eval(backbone, mode: Mode, maker: TextMaker, real_weights: bool) -> dict:
    """One multi-prompt evaluation pass, each way: a pass per option, the shared prefix, beam search."""
    items, source = eval_examples(backbone, mode, maker, real_weights)
    bank = torch.stack([p for p, _ in items]).to(backbone.device)
    owner = torch.tensor([j for j, (_, ex) in enumerate(items) for _ in ex])
    examples = [e for _, ex in items for e in ex]
    inputs, options = [e.input for e in examples], [list(e.options) for e in examples]
    prefix = [len(backbone._ids(t, "input")) + bank.shape[1] + (1 if backbone.is_encoder_decoder else 0)
              for t in inputs]
    answer = [[len(backbone._ids(o, "target")) for o in opts] for opts in options]
    full_tokens = sum(p * len(a) + sum(a) for p, a in zip(prefix, answer))
    shared_tokens = sum(p + sum(a) for p, a in zip(prefix, answer))
    rows = mode.eval_batch

    def timed(fn):
        sync(backbone.device)
        started = time.perf_counter()
        out = fn()
        sync(backbone.device)
        return time.perf_counter() - started, out

    backbone.rank_options(bank, inputs[:4], options[:4], batch_rows=rows, owner=owner[:4])  # warm-up
    per_option_s, picks_full = timed(lambda: backbone.rank_options(bank, inputs, options, batch_rows=rows,
                                                                   owner=owner, shared_prefix=False))
    shared_s, picks_shared = timed(lambda: backbone.rank_options(bank, inputs, options, batch_rows=rows,
                                                                 owner=owner))
    beams = {"num_beams": 4, "repetition_penalty": 2.5, "early_stopping": True, "max_new_tokens": 32}
    few = min(len(inputs), 16)  # beam search is slow on a CPU: timed on the first examples, compared per example
    beam_s, _ = timed(lambda: backbone.generate(bank, inputs[:few], batch_rows=max(1, rows // 4), owner=owner[:few],
                                                **beams))
    bound = full_tokens / shared_tokens
    return {"source": source, "examples": len(examples), "options_per_example": sum(map(len, options)) / len(options),
            "rank_pass_per_option_s": per_option_s, "rank_shared_prefix_s": shared_s,
            "shared_prefix_gain": per_option_s / shared_s, "token_bound": bound,
            "share_of_bound": per_option_s / shared_s / bound, "same_picks": picks_full == picks_shared,
            "beam4_32_tokens_s": beam_s, "beam_examples": few,
            "beam_vs_shared_rank": (beam_s / few) / (shared_s / len(inputs)),
            "sdpa_kernels": backbone.kernels.get("attention", "transformers' own")}


# ---- 3. meta-updates ---------------------------------------------------------------------------

def meta_tasks(mode: Mode, maker: TextMaker) -> list:
    from engine.compute.algorithms.base import MetaTask

    return [MetaTask(f"source{t}", 0, *make_task(maker, mode, 16, f"source{t}")[:2]) for t in range(4)]


def meta_variant(backbone, mode: Mode, maker: TextMaker, method: str, batched: bool) -> dict:
    """Seconds per meta-update and peak memory, with the paper's inner-loop settings."""
    from engine.compute.algorithms.base import MetaSampler
    from engine.experiment.methods import METHODS
    from engine.compute.prompt import initial_prompt
    from engine.compute.upstream import second_order_context

    spec = METHODS[method]
    hp = spec.make_config()  # the method's defaults, as an [upstream.<method>] table left empty gives them
    algorithm = spec.algorithm()(hp, "before", batch_tasks=batched)
    sampler = MetaSampler(meta_tasks(mode, maker), 0)
    prompt = initial_prompt(backbone, length=mode.prompt_tokens, method="vocab", seed=0).to(backbone.device)
    context = second_order_context(backbone) if algorithm.second_order else contextlib.nullcontext()
    times = []
    with context, peak_memory(backbone.device) as mem:
        for step in range(mode.meta_steps + 1):
            sync(backbone.device)
            t = time.perf_counter()
            algorithm.meta_gradient(backbone, prompt, sampler)
            sync(backbone.device)
            times.append(time.perf_counter() - t)
    return {"tasks": hp.tasks_per_step, "inner_steps": hp.inner_steps, "support": hp.support_batch,
            "query": hp.query_batch, "s": statistics.mean(times[1:]), "peak_mib": mem["bytes"] / 2**20}


def bench_meta(backbone, mode_name: str, mode: Mode, maker: TextMaker) -> dict:
    """Each algorithm looped over tasks and batched. On CPU each variant runs in a fresh process,
    where the growth of the RSS high-water mark is its peak memory."""
    report = {}
    for method in ("maml", "fomaml", "reptile"):
        row = {}
        for batched in (False, True):
            if backbone.device.type == "cuda":
                result = meta_variant(backbone, mode, maker, method, batched)
            else:
                proc = subprocess.run([sys.executable, __file__, "--mode", mode_name, "--arch", mode.arch,
                                       "--meta-probe", f"{method}:{int(batched)}"],
                                      capture_output=True, text=True, check=True)
                result = json.loads(proc.stdout.strip().splitlines()[-1])
            key = "batched" if batched else "loop"
            row.update({k: v for k, v in result.items() if k not in ("s", "peak_mib")})
            row[f"{key}_s"], row[f"{key}_peak_mib"] = result["s"], result["peak_mib"]
        row["speedup"] = row["loop_s"] / row["batched_s"]
        report[method] = row
    return report


# ---- report --------------------------------------------------------------------------------------

def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def matmul_tflops(device) -> float:
    """What this GPU reaches on a large bf16 matrix product (8192^3), for scale."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 2 * 8192**3 * 10 / (time.perf_counter() - t) / 1e12


def print_table(report: dict) -> None:
    print(f"\n{report['mode']} mode on {report['device']}: {report['arch']} ({report['weights']}, "
          f"{report['params'] / 1e6:.0f}M parameters), {report['tokens_per_sequence']} tokens per sequence "
          f"({report['input_tokens']} input + {report['prompt_tokens']} prompt + {report['target_tokens']} target), "
          f"precision {report['precision']}")
    if "grid" in report:
        print_grid(report)
    if "pt_step" in report:
        p = report["pt_step"]
        peft_text = (f"{p['peft_s'] * 1e3:.1f} ms (ours runs at {p['ours_vs_peft']:.2f}x PEFT's speed)"
                     if p["peft_s"] else p["note"])
        print(f"\n2. single-job PT step, batch {p['batch']}: ours {p['ours_s'] * 1e3:.1f} ms; PEFT {peft_text}")
    if "meta" in report:
        print_meta(report)
    if "kernels" in report:
        print_kernels(report["kernels"])
    if "compiled_step" in report:
        c = report["compiled_step"]
        print("\n5. single-job step compiled (reduce-overhead, CUDA graphs): "
              + (f"eager {c['eager_s'] * 1e3:.1f} ms, compiled {c['compiled_s'] * 1e3:.1f} ms ({c['speedup']:.2f}x), "
                 f"compile and first steps {c['compile_and_first_steps_s']:.0f} s" if "compiled_s" in c
                 else c.get("error") or c["note"]))
    if "eval" in report:
        e = report["eval"]
        print(f"\n6. evaluation, {e['examples']} examples ({e['source']}), {e['options_per_example']:.2f} options "
              f"each:\n   rank, a pass per option {e['rank_pass_per_option_s']:.2f} s; shared prefix "
              f"{e['rank_shared_prefix_s']:.2f} s: {e['shared_prefix_gain']:.2f}x (token bound "
              f"{e['token_bound']:.2f}x, {e['share_of_bound']:.0%} of it; same picks: {e['same_picks']})\n"
              f"   beam search (4 beams, 32 tokens) {e['beam4_32_tokens_s']:.2f} s for {e['beam_examples']} examples: "
              f"{e['beam_vs_shared_rank']:.1f}x rank classification's time per example")


def print_grid(report: dict) -> None:
    g = report["grid"]
    print(f"\n1. grid of {g['jobs']} jobs x {g['steps']} steps, batch {g['batch']}")
    print(f"   {'':12s} {'wall s':>8s} {'seq/s':>8s} {'TFLOP/s':>8s}")
    for key in ("sequential", "grouped"):
        print(f"   {key:12s} {g[key + '_s']:8.2f} {g[key + '_seq_per_s']:8.1f} {g[key + '_tflops']:8.2f}")
    share = ""
    if report.get("grouped_peak_share"):
        share = (f", {report['grouped_peak_share']:.0%} of the {report['bf16_peak_tflops']:.0f} TFLOP/s bf16 "
                 f"dense peak ({report['grouped_matmul_share']:.0%} of the {report['matmul_tflops']:.0f} TFLOP/s "
                 f"an 8192^3 matmul reaches here)")
    print(f"   multi-prompt group: {g['speedup']:.2f}x the sequential throughput{share}")
    step_share = f", {report['group_step_peak_share']:.0%} of peak" if report.get("group_step_peak_share") else ""
    print(f"   training step alone: one job {g['one_job_step_s'] * 1e3:.1f} ms, the group of {g['jobs']} "
          f"{g['group_step_s'] * 1e3:.1f} ms ({g['step_speedup']:.2f}x the throughput, "
          f"{g['group_step_tflops']:.2f} TFLOP/s{step_share})")


def print_kernels(k: dict) -> None:
    print(f"\n4. kernels, transformers' own vs engine/compute/kernels.py ({k['installed']})")
    for variant in ("transformers", "fused"):
        v = k[variant]
        share = f", {v['group_step_peak_share']:.0%} of peak" if v.get("group_step_peak_share") else ""
        print(f"   {variant:12s} one job {v['one_job_step_s'] * 1e3:8.1f} ms, group {v['group_step_s'] * 1e3:8.1f} ms "
              f"({v['group_step_tflops']:.1f} TFLOP/s{share}, step speed-up {v['step_speedup']:.2f}x); "
              f"SDPA kernels {v['sdpa_choices']}; fused kernels alone: {v['fused_only']}")
    print(f"   gain: group step {k['group_step_gain']:.2f}x, one-job step {k['one_job_step_gain']:.2f}x")


def print_meta(report: dict) -> None:
    m = report["meta"]
    print(f"\n3. meta-update (paper inner-loop settings)   {'loop s':>8s} {'batched s':>10s} {'speedup':>8s} "
          f"{'loop MiB':>9s} {'batched MiB':>12s}")
    for method, row in m.items():
        print(f"   {method:8s} {row['tasks']} tasks, {row['inner_steps']:2d} inner steps   {row['loop_s']:8.3f} "
              f"{row['batched_s']:10.3f} {row['speedup']:7.2f}x {row['loop_peak_mib']:9.0f} "
              f"{row['batched_peak_mib']:12.0f}")
    if report["device_type"] == "cpu":
        print("   (CPU memory: peak resident memory of a fresh process above its level after the model's load)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="cpu")
    parser.add_argument("--jobs", type=int, help="grid jobs (default: the mode's)")
    parser.add_argument("--arch", choices=("llama-tiny", "t5-tiny", "smollm2-135m", "t5-large"),
                        help="another architecture than the mode's")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--compile", action="store_true", help="torch.compile the frozen model")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "autocast", "fp32"),
                        help="the backbone's precision (auto: bf16 weights on a bf16 GPU, fp32 on CPU)")
    parser.add_argument("--only", default="grid,pt_step,meta,eval",
                        help="comma-separated sections to run: grid, pt_step, meta, eval, and kernels (transformers' "
                             "own modules, then engine/compute/kernels.py, measured first), compile (GPU)")
    parser.add_argument("--meta-probe", help=argparse.SUPPRESS)  # METHOD:0|1, one CPU meta variant (bench_meta)
    args = parser.parse_args(argv)
    mode = MODES[args.mode]
    if args.jobs:
        mode.jobs = args.jobs
    if args.arch:
        mode.arch = args.arch
    if mode.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu mode needs a CUDA device")
    started = time.perf_counter()
    model, tokenizer, weights = build_model(mode.arch, mode.device)
    sections = set(args.only.split(","))
    backbone = Backbone(model, tokenizer, mode.arch, device=mode.device, max_input_length=mode.input_tokens,
                        max_output_length=mode.target_tokens, precision=args.precision, compile=args.compile,
                        fused_kernels="kernels" not in sections)
    bf16 = backbone.precision in ("bf16", "autocast")
    maker = TextMaker(tokenizer)
    if args.meta_probe:
        method, batched = args.meta_probe.split(":")
        print(json.dumps(meta_variant(backbone, mode, maker, method, batched == "1")))
        return {}
    params = sum(p.numel() for p in model.parameters())
    tokens = mode.input_tokens + mode.prompt_tokens + mode.target_tokens
    flops_per_seq = 4 * params * tokens  # the count: forward + backward to the activations
    report = {"mode": args.mode, "device": device_name(backbone.device), "device_type": backbone.device.type,
              "arch": mode.arch, "weights": weights, "params": params, "precision": backbone.precision,
              "compile": args.compile,
              "input_tokens": mode.input_tokens, "prompt_tokens": mode.prompt_tokens,
              "target_tokens": mode.target_tokens, "tokens_per_sequence": tokens,
              "torch": torch.__version__}
    if "kernels" in sections:  # first: it installs engine/compute/kernels.py, which every later section uses
        report["kernels"] = bench_kernels(backbone, mode, maker, flops_per_seq)
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in report["device"]), None)
        if peak and bf16 and backbone.device.type == "cuda":
            for variant in ("transformers", "fused"):
                k = report["kernels"][variant]
                k["group_step_peak_share"] = k["group_step_tflops"] / peak
    report["attention"] = backbone.kernels.get("attention", "transformers' " +
                                               str(getattr(backbone.model.config, "_attn_implementation", "")))
    if "grid" in sections:
        report["grid"] = bench_grid(backbone, mode, maker, flops_per_seq)
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in report["device"]), None)
        if peak and bf16 and backbone.device.type == "cuda":
            report["bf16_peak_tflops"] = peak
            report["grouped_peak_share"] = report["grid"]["grouped_tflops"] / peak
            report["group_step_peak_share"] = report["grid"]["group_step_tflops"] / peak
            report["matmul_tflops"] = matmul_tflops(backbone.device)
            report["grouped_matmul_share"] = report["grid"]["grouped_tflops"] / report["matmul_tflops"]
    if "pt_step" in sections:
        report["pt_step"] = bench_pt_step(backbone, mode, maker)
    if "meta" in sections:
        report["meta"] = bench_meta(backbone, args.mode, mode, maker)
    if "compile" in sections:
        report["compiled_step"] = bench_compile(backbone, mode, maker)
    if "eval" in sections:
        report["eval"] = bench_eval(backbone, mode, maker, real_weights=weights == "real weights")
    report["total_s"] = time.perf_counter() - started
    text = json.dumps(report, default=float)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print_table(report)
    print(f"\ntotal {report['total_s']:.0f} s")
    return report


if __name__ == "__main__":
    main()
