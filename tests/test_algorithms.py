"""Tests for the upstream algorithms (MAML, FoMAML, Reptile, MTL) and their outer loop.

Every expected value comes from an independent computation on the same batches:
MAML's meta-gradient is rebuilt with plain `torch.autograd.grad(create_graph=True)`
through a hand-written inner SGD loop, FoMAML's from the query gradient at a
hand-adapted prompt, Reptile's outer step from hand-run inner steps, MTL's from
the plain loss gradient. The batches an algorithm drew are recorded by a
`MetaSampler` subclass and replayed in the reference, so both sides see exactly
the same examples. The shared tests (batched = looped, frozen backbone, seeded,
resume, attention refusals) are parametrised over the method registry
(`engine.experiment.methods.METHODS`), so a newly registered method runs them too. The inner-loop methods run a meta-batch's tasks as one
batched pass on a prompt bank; they are checked against the references in that
mode and against their own per-task loop (`batch_tasks=False`) on the same
sample. Models are the tiny random Llama and T5 built by conftest, data the
project's shipped demo tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import pytest
import torch

import engine.compute.upstream as upstream
from engine.compute.algorithms.base import Algorithm, MetaSampler, MetaTask
from engine.compute.backbone import Backbone
from engine.experiment.config import UpstreamConfig
from engine.experiment.data import TaskData
from engine.compute.kernels import FUSED_SDPA
from engine.experiment.methods import METHODS, InnerLoopConfig, MTLConfig, ReptileConfig
from engine.compute.upstream import UpstreamError, learn_initialisation, second_order_context

from conftest import assert_weights_unchanged, snapshot_weights

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "presets" / "demo-data"
META_TASKS = [("demo-movie_sentiment", 1), ("demo-news_topic", 1), ("demo-spam", 1),
              ("demo-question_or_statement", 2)]
PROMPT_LEN = 4
PLACEMENT = "before"
MAX_INPUT = 24  # short rows keep every forward cheap

ALL_METHODS = list(METHODS)
# the methods with an inner loop ([upstream.<name>] has inner_lr, inner_steps, support/query batches, ...)
INNER_LOOP_METHODS = [m for m, spec in METHODS.items() if issubclass(spec.config, InnerLoopConfig)]
SECOND_ORDER_METHODS = [m for m, spec in METHODS.items() if spec.second_order]
QUERYLESS = {"reptile"}  # inner-loop methods that draw no query batch (Reptile steps towards theta')


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def meta_tasks() -> list[MetaTask]:
    data = TaskData(DEMO_DATA)
    tasks = []
    for task, seed in META_TASKS:
        split = data.load_split(task, 16, seed)
        tasks.append(MetaTask(task, seed, split.train, split.dev))
    return tasks


def record_samplers(monkeypatch) -> list:
    """Make learn_initialisation build RecordingSamplers; returns the list they are added to."""
    samplers: list[RecordingSampler] = []

    class Recorder(RecordingSampler):
        def __init__(self, tasks, seed):
            super().__init__(tasks, seed)
            samplers.append(self)

    monkeypatch.setattr(upstream, "MetaSampler", Recorder)
    return samplers


def _models(tiny_llama, tiny_t5) -> dict[str, Path]:
    return {"llama": tiny_llama, "t5": tiny_t5}


def _load(model_dir: Path, *, double: bool = False, attn: str | None = None) -> Backbone:
    backbone = Backbone.load(str(model_dir), attn_implementation=attn, max_input_length=MAX_INPUT)
    if double:
        backbone.model.double()
    return backbone


def _prompt(backbone: Backbone, seed: int = 0) -> torch.Tensor:
    """A prompt of the backbone's dtype, scaled like its embeddings."""
    g = torch.Generator().manual_seed(seed)
    weight = backbone.embeddings.weight
    scale = float(weight.detach().float().std())
    return (torch.randn(PROMPT_LEN, backbone.hidden_size, generator=g) * scale).to(weight.dtype)


class RecordingSampler(MetaSampler):
    """The project's sampler, unchanged, except that it remembers what it handed out."""

    def __init__(self, tasks, seed):
        super().__init__(tasks, seed)
        self.meta_batches: list[list[MetaTask]] = []
        self.batches: list[tuple[list, list]] = []  # (the list sampled from, the batch drawn)

    def meta_batch(self, size):
        out = super().meta_batch(size)
        self.meta_batches.append(list(out))
        return out

    def batch(self, examples, size):
        out = super().batch(examples, size)
        self.batches.append((list(examples), list(out)))
        return out


def _loss(backbone: Backbone, prompt: torch.Tensor, examples, placement: str = PLACEMENT) -> torch.Tensor:
    return backbone.loss(prompt, [e.input for e in examples], [e.output for e in examples], placement)


def _task_batches(sampler: RecordingSampler, tasks: list[MetaTask], inner_steps: int, with_query: bool):
    """Split the recorded batches per task: `inner_steps` support batches from train, then a query from dev."""
    per_task = inner_steps + (1 if with_query else 0)
    assert len(sampler.batches) == per_task * len(tasks), "unexpected number of batches drawn"
    out = []
    for t, task in enumerate(tasks):
        chunk = sampler.batches[t * per_task:(t + 1) * per_task]
        supports = []
        for source, batch in chunk[:inner_steps]:
            assert source == task.train, f"support batch of {task.name} not drawn from its train split"
            supports.append(batch)
        query = None
        if with_query:
            source, query = chunk[-1]
            assert source == task.dev, f"query batch of {task.name} not drawn from its dev split"
        out.append((supports, query))
    return out


def _adapt(backbone, theta, supports, inner_lr: float, create_graph: bool, placement: str = PLACEMENT) -> torch.Tensor:
    """theta' = theta - alpha * grad L_support(theta), once per support batch, by hand."""
    p = theta
    for support in supports:
        (g,) = torch.autograd.grad(_loss(backbone, p, support, placement), p, create_graph=create_graph)
        p = p - inner_lr * g
        if not create_graph:
            p = p.detach().requires_grad_(True)
    return p


def reference_maml(backbone, prompt, batches, inner_lr, second_order: bool = True,
                   placement: str = PLACEMENT):
    """Second order: d L_query(theta'(theta)) / d theta. First order: dL_query/dtheta' at theta'."""
    grad = torch.zeros_like(prompt)
    loss = 0.0
    for supports, query in batches:
        theta = prompt.detach().clone().requires_grad_(True)
        adapted = _adapt(backbone, theta, supports, inner_lr, create_graph=second_order, placement=placement)
        query_loss = _loss(backbone, adapted, query, placement)
        (g,) = torch.autograd.grad(query_loss, theta if second_order else adapted)
        grad += g / len(batches)
        loss += float(query_loss.detach()) / len(batches)
    return grad, loss


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * float(b.abs().max())))


def _tiny_hyperparameters(spec):
    """A registered method's [upstream.<name>] table, shrunk: small batches, a visible inner loop."""
    if issubclass(spec.config, InnerLoopConfig):
        return spec.make_config(inner_lr=0.5, inner_steps=2, support_batch=2, query_batch=2, tasks_per_step=2)
    if issubclass(spec.config, MTLConfig):
        return spec.make_config(batch_size=3)
    return spec.make_config()


def _cfg(method: str, **kw) -> UpstreamConfig:
    """A tiny upstream config: few steps, small batches, a visible inner loop.

    A registered method's name as a keyword (`reptile=InnerLoopConfig(...)`) replaces that method's
    hyperparameters, as its [upstream.<name>] table would; every other keyword is an UpstreamConfig field.
    """
    tables = {name: kw.pop(name) for name in list(kw) if name in METHODS}
    base = dict(methods=[method], steps=3, outer_optimizer="adamw", outer_lr=0.05, outer_weight_decay=0.0,
                checkpoint_every=1, seed=0)
    base.update(kw)
    cfg = UpstreamConfig(**base)
    cfg.hyperparameters.update({name: _tiny_hyperparameters(spec) for name, spec in METHODS.items()})
    cfg.hyperparameters.update(tables)
    return cfg


def _run(backbone, method, tasks, init, cfg, placement: str = PLACEMENT, **kw):
    return learn_initialisation(backbone, method, tasks, init, cfg, placement=placement, **kw)


# ---------------------------------------------------------------- 0. the registry and the implementations agree


@pytest.mark.parametrize("method", ALL_METHODS)
def test_registry_declares_what_the_implementation_does(method):
    """`second_order` is declared twice (the registry, read torch-free by the worker's early checks, and the
    class, read by the outer loop); both must say the same, and the class must be an Algorithm."""
    spec = METHODS[method]
    cls = spec.algorithm()
    assert isinstance(cls, type) and issubclass(cls, Algorithm), f"{spec.implementation} is not an Algorithm"
    assert spec.second_order == cls.second_order, f"{method}: registry and {cls.__name__} disagree on second order"
    assert spec.name == method
    # its defaults are fields of its own config table, and the algorithm takes that table
    hp = spec.make_config()
    assert isinstance(hp, spec.config)
    assert isinstance(cls(hp, PLACEMENT, batch_tasks=False), Algorithm)


def test_registry_covers_the_paper_methods():
    """The shared tests below are parametrised over the registry: they must at least cover the paper's methods."""
    assert {"mtl", "maml", "fomaml", "reptile"} <= set(ALL_METHODS)
    assert "maml" in SECOND_ORDER_METHODS and not {"mtl", "fomaml", "reptile"} & set(SECOND_ORDER_METHODS)
    assert {"maml", "fomaml", "reptile"} <= set(INNER_LOOP_METHODS) and "mtl" not in INNER_LOOP_METHODS


# ---------------------------------------------------------------- 1. MAML == hand-written second-order MAML


def _check_maml_against_reference(backbone, tasks, inner_steps, *, use_context: bool, rtol: float = 1e-6,
                                  placement: str = PLACEMENT, batch_tasks: bool = True):
    hp = InnerLoopConfig(inner_lr=2.0, inner_steps=inner_steps, support_batch=2, query_batch=2, tasks_per_step=3,
                         task_reduction="mean")
    prompt = _prompt(backbone)
    sampler = RecordingSampler(tasks, seed=3)
    algorithm = METHODS["maml"].algorithm()(hp, placement, batch_tasks=batch_tasks)

    def ctx():
        return second_order_context(backbone) if use_context else torch.enable_grad()

    with ctx():
        grad, loss = algorithm.meta_gradient(backbone, prompt, sampler)
    assert len(sampler.meta_batches) == 1 and len(sampler.meta_batches[0]) == hp.tasks_per_step
    batches = _task_batches(sampler, sampler.meta_batches[0], inner_steps, with_query=True)
    with ctx():
        ref, ref_loss = reference_maml(backbone, prompt, batches, hp.inner_lr,
                                       placement=placement)
        first_order, _ = reference_maml(backbone, prompt, batches, hp.inner_lr,
                                        second_order=False, placement=placement)
        # what a batched inner step on the MEAN of the task losses would give: each row moving by inner_lr / T
        mean_step, _ = reference_maml(backbone, prompt, batches, hp.inner_lr / hp.tasks_per_step,
                                      placement=placement)

    assert grad.shape == prompt.shape and grad.dtype == prompt.dtype
    assert torch.isfinite(ref).all() and float(ref.abs().max()) > 0
    # the test means something: the second-order term changes the gradient well beyond the tolerance
    assert not _close(first_order, ref, rtol=1e-3), "inner loop too weak: second-order term is negligible"
    assert not _close(mean_step, ref, rtol=1e-3), "inner loop too weak: a mean over tasks would pass"
    torch.testing.assert_close(grad, ref, rtol=rtol, atol=rtol * float(ref.abs().max()))
    assert math.isclose(loss, ref_loss, rel_tol=rtol)


@pytest.mark.parametrize("batch_tasks", [True, False])
@pytest.mark.parametrize("inner_steps, placement", [(1, "before"), (3, "before"), (2, "after")])
@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_maml_meta_gradient_equals_hand_written_second_order(tiny_llama, tiny_t5, meta_tasks, kind, inner_steps,
                                                             placement, batch_tasks):
    """The batched meta-gradient (one pass over a prompt bank, with `higher`) and the per-task loop both equal
    plain autograd through a hand-written inner loop, task by task, without `higher`."""
    backbone = _load(_models(tiny_llama, tiny_t5)[kind], double=True)
    # SDPA with the fused-kernel bias path (engine.compute.kernels): the context is what makes double backward work
    assert backbone.model.config._attn_implementation == FUSED_SDPA
    _check_maml_against_reference(backbone, meta_tasks, inner_steps, use_context=True, placement=placement,
                                  batch_tasks=batch_tasks)


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_maml_with_eager_attention_needs_no_context(tiny_llama, tiny_t5, meta_tasks, kind):
    # float32 here: Llama's eager attention turns padded rows into NaN in float64 (a transformers
    # quirk of its float64 mask, unrelated to MAML), so the tolerance is float32's
    backbone = _load(_models(tiny_llama, tiny_t5)[kind], attn="eager")
    assert backbone.model.config._attn_implementation == "eager"
    _check_maml_against_reference(backbone, meta_tasks, 2, use_context=False, rtol=1e-4)


# ---------------------------------------------------------------- 2. FoMAML


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_fomaml_is_query_gradient_at_adapted_prompt_and_differs_from_maml(tiny_llama, tiny_t5, meta_tasks, kind):
    backbone = _load(_models(tiny_llama, tiny_t5)[kind], double=True)
    hp = InnerLoopConfig(inner_lr=2.0, inner_steps=2, support_batch=2, query_batch=2, tasks_per_step=2,
                         task_reduction="mean")
    prompt = _prompt(backbone, seed=1)

    fo_sampler = RecordingSampler(meta_tasks, seed=5)
    fo_grad, fo_loss = METHODS["fomaml"].algorithm()(hp, PLACEMENT).meta_gradient(backbone, prompt, fo_sampler)
    tasks = fo_sampler.meta_batches[0]
    batches = _task_batches(fo_sampler, tasks, hp.inner_steps, with_query=True)

    # by hand: adapt with plain SGD steps (no graph), take the query gradient there, average over tasks
    expected = torch.zeros_like(prompt)
    expected_loss = 0.0
    for supports, query in batches:
        adapted = _adapt(backbone, prompt.detach().clone().requires_grad_(True), supports, hp.inner_lr,
                         create_graph=False)
        assert not torch.allclose(adapted, prompt), "the inner loop did not move the prompt"
        query_loss = _loss(backbone, adapted, query)
        (g,) = torch.autograd.grad(query_loss, adapted)
        expected += g / len(batches)
        expected_loss += float(query_loss.detach()) / len(batches)
    torch.testing.assert_close(fo_grad, expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max()))
    assert math.isclose(fo_loss, expected_loss, rel_tol=1e-6)
    # the gradient at the adapted prompt is not the gradient at the initial one
    at_theta = torch.zeros_like(prompt)
    for supports, query in batches:
        p = prompt.detach().clone().requires_grad_(True)
        at_theta += torch.autograd.grad(_loss(backbone, p, query), p)[0] / len(batches)
    assert not _close(fo_grad, at_theta, rtol=1e-3)

    # MAML on the very same batches (same seed, same draw order) differs: the second-order term is missing
    so_sampler = RecordingSampler(meta_tasks, seed=5)
    with second_order_context(backbone):
        maml_grad, maml_loss = METHODS["maml"].algorithm()(hp, PLACEMENT).meta_gradient(backbone, prompt, so_sampler)
    assert so_sampler.meta_batches == fo_sampler.meta_batches and so_sampler.batches == fo_sampler.batches
    assert math.isclose(maml_loss, fo_loss, rel_tol=1e-9)  # same query losses ...
    assert not _close(maml_grad, fo_grad, rtol=1e-3)  # ... different gradients


@pytest.mark.parametrize("method", INNER_LOOP_METHODS)
def test_task_reduction_sum_is_the_meta_batch_size_times_the_mean(tiny_t5, meta_tasks, method):
    """The authors' MAML and FoMAML run dev_loss.backward() task by task: their meta-gradient is the sum
    over the meta-batch (the default for both); their Reptile averages."""
    backbone = _load(tiny_t5, double=True)
    grads = {}
    for reduction in ("sum", "mean"):
        hp = METHODS[method].make_config(inner_lr=2.0, inner_steps=2, support_batch=2, query_batch=2,
                                         tasks_per_step=3, task_reduction=reduction)
        grads[reduction], _, _ = _meta_gradient(backbone, method, hp, _prompt(backbone), meta_tasks, batch_tasks=True)
    assert float(grads["mean"].abs().max()) > 0
    torch.testing.assert_close(grads["sum"], 3 * grads["mean"])
    expected = "mean" if method == "reptile" else "sum"
    assert METHODS[method].make_config().task_reduction == expected


# ---------------------------------------------------------------- 3. Reptile outer step


@pytest.mark.parametrize("pseudo_gradient", ["difference", "scaled"])
@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_reptile_sgd_step_moves_prompt_by_outer_lr_times_mean_displacement(tiny_llama, tiny_t5, meta_tasks,
                                                                          monkeypatch, kind, placement,
                                                                          pseudo_gradient):
    """difference: theta <- theta + lr * mean(theta' - theta); scaled, the authors' formula
    (run_reptile_ddp_prompt.py: (theta - theta') / inner_lr / tasks as the gradient): lr / inner_lr times that."""
    backbone = _load(_models(tiny_llama, tiny_t5)[kind])
    samplers = record_samplers(monkeypatch)
    inner = ReptileConfig(inner_lr=0.8, inner_steps=3, support_batch=2, tasks_per_step=3, task_reduction="mean",
                          pseudo_gradient=pseudo_gradient)
    outer_lr = 0.7
    cfg = _cfg("reptile", steps=1, outer_optimizer="sgd", outer_lr=outer_lr, reptile=inner)
    init = _prompt(backbone, seed=2)
    losses = []
    result = _run(backbone, "reptile", meta_tasks, init, cfg, placement=placement,
                  on_step=lambda s, l: losses.append((s, l)))

    (sampler,) = samplers
    tasks = sampler.meta_batches[0]
    assert len(tasks) == inner.tasks_per_step and len({t.name for t in tasks}) == len(tasks)
    batches = _task_batches(sampler, tasks, inner.inner_steps, with_query=False)
    displacement = torch.zeros_like(init)
    support_loss = 0.0
    for supports, _ in batches:
        p = init.detach().clone().requires_grad_(True)
        for support in supports:  # plain inner SGD, by hand
            loss = _loss(backbone, p, support, placement)
            support_loss += float(loss.detach()) / (len(batches) * len(supports))
            (g,) = torch.autograd.grad(loss, p)
            p = (p - inner.inner_lr * g).detach().requires_grad_(True)
        displacement += (p.detach() - init) / len(batches)
    expected = init + outer_lr * displacement / (inner.inner_lr if pseudo_gradient == "scaled" else 1.0)

    assert float(displacement.abs().max()) > 1e-3, "the inner loop barely moved the prompt"
    torch.testing.assert_close(result.prompt, expected, rtol=1e-5, atol=1e-5 * float(displacement.abs().max()))
    assert [s for s, _ in losses] == [1]
    assert math.isclose(losses[0][1], support_loss, rel_tol=1e-5)


# ---------------------------------------------------------------- 3b. batched tasks == the per-task loop


def _meta_gradient(backbone, method: str, hp, prompt, tasks, *, batch_tasks: bool, seed: int = 13):
    sampler = RecordingSampler(tasks, seed)
    algorithm = METHODS[method].algorithm()(hp, PLACEMENT, batch_tasks=batch_tasks)
    with second_order_context(backbone) if algorithm.second_order else contextlib.nullcontext():
        grad, loss = algorithm.meta_gradient(backbone, prompt, sampler)
    return grad, loss, sampler


@pytest.mark.parametrize("method", INNER_LOOP_METHODS)
@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_batched_tasks_equal_per_task_loop(tiny_llama, tiny_t5, meta_tasks, kind, method):
    backbone = _load(_models(tiny_llama, tiny_t5)[kind], double=True)
    hp = METHODS[method].make_config(inner_lr=2.0, inner_steps=2, support_batch=2, query_batch=3, tasks_per_step=3)
    prompt = _prompt(backbone, seed=10)
    grad, loss, sampler = _meta_gradient(backbone, method, hp, prompt, meta_tasks, batch_tasks=True)
    loop_grad, loop_loss, loop_sampler = _meta_gradient(backbone, method, hp, prompt, meta_tasks, batch_tasks=False)

    # the very same sample: meta-batch, then every batch in the per-task loop's order
    assert sampler.meta_batches == loop_sampler.meta_batches and sampler.batches == loop_sampler.batches
    tasks = sampler.meta_batches[0]
    assert len({t.task for t in tasks}) == hp.tasks_per_step  # different data in every row of the bank
    _task_batches(sampler, tasks, hp.inner_steps, with_query=method not in QUERYLESS)
    assert float(loop_grad.abs().max()) > 0
    torch.testing.assert_close(grad, loop_grad, rtol=1e-7, atol=1e-7 * float(loop_grad.abs().max()))
    assert math.isclose(loss, loop_loss, rel_tol=1e-7)
    # sharp enough to catch a mean over tasks in the batched inner step (each row moving by inner_lr / T)
    weak = dataclasses.replace(hp, inner_lr=hp.inner_lr / hp.tasks_per_step)
    weak_grad, _, _ = _meta_gradient(backbone, method, weak, prompt, meta_tasks, batch_tasks=False)
    assert not _close(weak_grad, loop_grad, rtol=1e-3)


def test_upstream_hands_batch_tasks_to_the_algorithm(tiny_llama, meta_tasks, monkeypatch):
    backbone = _load(tiny_llama)
    chunk_sizes = []
    chunks = Algorithm.chunks

    def recording_chunks(self, batches):
        out = chunks(self, batches)
        chunk_sizes.append([len(c) for c in out])
        return out

    monkeypatch.setattr(Algorithm, "chunks", recording_chunks)
    init = _prompt(backbone, seed=11)
    batched = _run(backbone, "reptile", meta_tasks, init, _cfg("reptile", steps=1, batch_tasks=True)).prompt
    looped = _run(backbone, "reptile", meta_tasks, init, _cfg("reptile", steps=1, batch_tasks=False)).prompt
    assert chunk_sizes == [[2], [1, 1]]
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- 4. MTL


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_mtl_gradient_is_plain_loss_gradient_on_drawn_batch(tiny_llama, tiny_t5, meta_tasks, monkeypatch, kind):
    backbone = _load(_models(tiny_llama, tiny_t5)[kind])
    prompt = _prompt(backbone, seed=4)
    pool = [e for task in meta_tasks for e in task.train]

    sampler = RecordingSampler(meta_tasks, seed=9)
    algorithm = METHODS["mtl"].algorithm()(MTLConfig(batch_size=5), PLACEMENT)
    grads = []
    for _ in range(2):  # two draws: the pool is reused, each batch is fresh
        grad, loss = algorithm.meta_gradient(backbone, prompt, sampler)
        source, drawn = sampler.batches[-1]
        assert source == pool, "MTL must draw from the pooled train examples of every meta-task"
        assert len(drawn) == 5
        p = prompt.detach().clone().requires_grad_(True)
        ref_loss = _loss(backbone, p, drawn)
        (ref,) = torch.autograd.grad(ref_loss, p)
        torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
        assert math.isclose(loss, float(ref_loss.detach()), rel_tol=1e-6)
        grads.append(grad)
    assert len(sampler.batches) == 2 and sampler.batches[0][1] != sampler.batches[1][1]
    assert not torch.allclose(grads[0], grads[1])

    # through the outer loop with SGD: one step is exactly prompt - lr * grad
    samplers = record_samplers(monkeypatch)
    cfg = _cfg("mtl", steps=1, outer_optimizer="sgd", outer_lr=0.3, mtl=MTLConfig(batch_size=4))
    result = _run(backbone, "mtl", meta_tasks, prompt, cfg)
    (_, drawn), = samplers[0].batches
    p = prompt.detach().clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(_loss(backbone, p, drawn), p)
    torch.testing.assert_close(result.prompt, prompt - 0.3 * ref, rtol=1e-5, atol=1e-6)


def test_mtl_with_use_dev_trains_on_train_and_dev_files_for_its_epochs(tiny_llama, meta_tasks):
    """The authors' MTL (CrossFit_multi, data_split="all"): every source split's train and dev examples,
    20 passes over them with batch 4, whatever upstream.steps says."""
    backbone = _load(tiny_llama)
    with_dev = [e for task in meta_tasks for e in task.train + task.dev]
    sampler = RecordingSampler(meta_tasks, seed=9)
    hp = MTLConfig(batch_size=4, use_dev=True, epochs=3)
    algorithm = METHODS["mtl"].algorithm()(hp, PLACEMENT)
    algorithm.meta_gradient(backbone, _prompt(backbone), sampler)
    assert sampler.batches[-1][0] == with_dev and len(with_dev) > len([e for t in meta_tasks for e in t.train])
    assert algorithm.total_steps(hp, 5000, meta_tasks) == 3 * math.ceil(len(with_dev) / 4)
    assert algorithm.total_steps(MTLConfig(batch_size=4), 5000, meta_tasks) == 5000
    cfg = _cfg("mtl", steps=1000, mtl=MTLConfig(batch_size=len(with_dev), use_dev=True, epochs=2))
    steps = []
    _run(backbone, "mtl", meta_tasks, _prompt(backbone), cfg, on_step=lambda s, _: steps.append(s))
    assert steps == [1, 2]


def test_the_outer_optimizer_applies_its_weight_decay(tiny_llama, meta_tasks):
    """upstream.outer_weight_decay (the authors' Adafactor: 1e-5). Under SGD one step with decay wd is the
    step without it minus lr * wd * prompt."""
    backbone = _load(tiny_llama)
    init = _prompt(backbone, seed=6)
    plain = _run(backbone, "mtl", meta_tasks, init, _cfg("mtl", steps=1, outer_optimizer="sgd", outer_lr=0.3))
    decayed = _run(backbone, "mtl", meta_tasks, init, _cfg("mtl", steps=1, outer_optimizer="sgd", outer_lr=0.3,
                                                            outer_weight_decay=0.1))
    torch.testing.assert_close(decayed.prompt, plain.prompt - 0.3 * 0.1 * init, rtol=1e-5, atol=1e-6)
    assert UpstreamConfig().outer_weight_decay == 1e-5


# ---------------------------------------------------------------- 5. the backbone stays frozen


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_learn_initialisation_leaves_backbone_bit_identical(tiny_llama, tiny_t5, meta_tasks, method, kind):
    backbone = _load(_models(tiny_llama, tiny_t5)[kind])  # SDPA: MAML must go through the context itself
    weights_before = snapshot_weights(backbone)
    init = _prompt(backbone, seed=6)
    init_copy = init.clone()
    steps = []
    result = _run(backbone, method, meta_tasks, init, _cfg(method, steps=3),
                  on_step=lambda s, l: steps.append((s, l)))

    assert [s for s, _ in steps] == [1, 2, 3]
    assert all(math.isfinite(l) for _, l in steps)
    assert_weights_unchanged(backbone, weights_before)
    # the caller's prompt is untouched; the learned one moved
    assert torch.equal(init, init_copy)
    assert result.prompt.shape == init.shape and result.prompt.dtype == torch.float32
    assert not result.prompt.requires_grad
    assert float((result.prompt - init).abs().max()) > 1e-4
    assert result.steps == 3 and result.last_loss == steps[-1][1]


# ---------------------------------------------------------------- 6. seeded


@pytest.mark.parametrize("method", ALL_METHODS)
def test_same_seed_same_prompt_other_seed_other_prompt(tiny_llama, meta_tasks, method):
    backbone = _load(tiny_llama)
    init = _prompt(backbone, seed=7)
    a = _run(backbone, method, meta_tasks, init, _cfg(method, steps=2, seed=11)).prompt
    b = _run(backbone, method, meta_tasks, init, _cfg(method, steps=2, seed=11)).prompt
    c = _run(backbone, method, meta_tasks, init, _cfg(method, steps=2, seed=12)).prompt
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


# ---------------------------------------------------------------- 7. checkpoint and resume


# every registered method with the default outer optimizer, and the stateful AdamW on two of them
@pytest.mark.parametrize("method, optimizer", [*[(m, "adafactor") for m in ALL_METHODS],
                                               ("reptile", "adamw"), ("maml", "adamw")])
def test_resume_from_checkpoint_equals_straight_run(tiny_llama, meta_tasks, tmp_path, method, optimizer):
    backbone = _load(tiny_llama)
    init = _prompt(backbone, seed=8)
    straight = _run(backbone, method, meta_tasks, init, _cfg(method, steps=4, outer_optimizer=optimizer))

    ckpt = tmp_path / "upstream.pt"
    first_steps, resumed_steps = [], []
    half = _run(backbone, method, meta_tasks, init, _cfg(method, steps=2, outer_optimizer=optimizer),
                checkpoint=ckpt, on_step=lambda s, l: first_steps.append(s))
    assert ckpt.is_file()
    assert not torch.allclose(half.prompt, straight.prompt)  # stopping half way really is half way
    resumed = _run(backbone, method, meta_tasks, init, _cfg(method, steps=4, outer_optimizer=optimizer),
                   checkpoint=ckpt, on_step=lambda s, l: resumed_steps.append(s))

    assert first_steps == [1, 2] and resumed_steps == [3, 4]
    assert torch.equal(resumed.prompt, straight.prompt)
    assert resumed.last_loss == straight.last_loss
    # the checkpoint now holds the finished run; running again to 4 steps does nothing more
    again = _run(backbone, method, meta_tasks, torch.zeros_like(init),
                 _cfg(method, steps=4, outer_optimizer=optimizer), checkpoint=ckpt)
    assert torch.equal(again.prompt, straight.prompt)


# ---------------------------------------------------------------- 8. refusals


@pytest.mark.parametrize("method", SECOND_ORDER_METHODS)
def test_second_order_context_refuses_other_attention(tiny_llama, meta_tasks, method):
    backbone = _load(tiny_llama)
    backbone.model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UpstreamError, match="flash_attention_2"):
        second_order_context(backbone)
    init = _prompt(backbone)
    with pytest.raises(UpstreamError, match="flash_attention_2"):  # before any training step
        _run(backbone, method, meta_tasks, init, _cfg(method, steps=1),
             on_step=lambda s, l: pytest.fail(f"{method} trained on an attention with no second derivative"))


@pytest.mark.parametrize("impl, installed", [("eager", "eager"), ("sdpa", FUSED_SDPA)])
def test_second_order_context_accepts_eager_and_sdpa(tiny_llama, impl, installed):
    backbone = _load(tiny_llama, attn=impl)
    assert backbone.model.config._attn_implementation == installed
    with second_order_context(backbone):
        pass


def test_unknown_algorithm_is_refused(tiny_llama, meta_tasks):
    backbone = _load(tiny_llama)
    with pytest.raises(UpstreamError, match="protomaml"):
        _run(backbone, "protomaml", meta_tasks, _prompt(backbone), _cfg("maml", steps=1))


@pytest.fixture
def first_order_only_attention():
    """An attention implementation that works (SDPA underneath) but that `second_order_context` does not
    know, registered with transformers under a name of its own; yields (name, calls)."""
    try:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as exc:  # pragma: no cover - older transformers
        pytest.skip(f"this transformers has no attention registry ({exc})")
    name = "mpt_test_first_order_only"
    calls = []

    def forward(*args, **kwargs):
        calls.append(1)
        return sdpa_attention_forward(*args, **kwargs)

    AttentionInterface.register(name, forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    yield name, calls
    for registry in (AttentionInterface, AttentionMaskInterface):
        getattr(registry, "_global_mapping", {}).pop(name, None)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_only_second_order_maml_is_refused_an_unknown_attention(tiny_llama, meta_tasks, first_order_only_attention,
                                                                method):
    name, calls = first_order_only_attention
    backbone = _load(tiny_llama)
    backbone.model.config._attn_implementation = name
    init = _prompt(backbone, seed=9)
    if METHODS[method].second_order:
        with pytest.raises(UpstreamError, match=name):
            _run(backbone, method, meta_tasks, init, _cfg(method, steps=1))
        assert not calls, f"{method} ran a forward pass before refusing the attention"
        return
    # first-order methods never differentiate through a backward pass: any attention will do
    result = _run(backbone, method, meta_tasks, init, _cfg(method, steps=1))
    assert calls, "the registered attention was not used"
    assert float((result.prompt - init).abs().max()) > 1e-4
