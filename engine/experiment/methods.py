"""The upstream methods, declared once: name, label, hyperparameters, implementation.

Everything that needs to know which methods exist reads this registry: preset
validation (`upstream.methods`, the `[upstream.<name>]` tables), the worker's
early checks, the report's column order and labels, the app's method picker and
the shared algorithm tests. It is torch-free; the implementation is imported
only when a method runs (`Method.algorithm()`).

Adding an algorithm: one file under `engine/compute/algorithms/` with an `Algorithm`
subclass, one `register_method(...)` line below, one test of its update rule
(the shared tests in tests/test_algorithms.py are parametrised over this
registry).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field, replace

from engine.base.fields import option

PT = "pt"  # the baseline: plain prompt tuning downstream, no upstream stage
PT_LABEL = "PT"


@dataclass
class MethodConfig:
    """What every method's `[upstream.<name>]` table has."""

    prompt_file: str = option("", help="reuse this learned prompt instead of training it")

    def outer_steps(self, steps: int, split_sizes: list[tuple[int, int]]) -> int:
        """The outer updates the method makes: `upstream.steps` unless its settings say otherwise.
        `split_sizes`: (train, dev) example counts of each meta-task (torch-free, for planning)."""
        return steps


@dataclass
class InnerLoopConfig(MethodConfig):
    """MAML/FoMAML/Reptile inner loop (defaults: the authors' released settings)."""

    inner_lr: float = option(3e-5, minimum=0.0)
    inner_steps: int = option(1, minimum=1)
    support_batch: int = option(2, minimum=1)
    query_batch: int = option(2, minimum=1)
    tasks_per_step: int = option(2, minimum=1)
    task_reduction: str = option("sum", choices=("sum", "mean"),
                                 help="how the meta-batch's per-task gradients combine (the authors' MAML and "
                                      "FoMAML sum them, their Reptile averages)")


@dataclass
class ReptileConfig(InnerLoopConfig):
    pseudo_gradient: str = option("scaled", choices=("scaled", "difference"),
                                  help="scaled: (theta - theta') / inner_lr, the authors' formula (under SGD, the "
                                       "sum of the inner gradients); difference: theta - theta'")


@dataclass
class MTLConfig(MethodConfig):
    batch_size: int = option(4, minimum=1)
    use_dev: bool = option(False, help="train on the source tasks' dev files too (the authors' MTL does)")
    epochs: int = option(0, minimum=0, help="passes over the pooled source examples (the authors: 20); "
                                            "0: upstream.steps optimizer steps")

    def outer_steps(self, steps: int, split_sizes: list[tuple[int, int]]) -> int:
        if not self.epochs:
            return steps
        pool = sum(train + (dev if self.use_dev else 0) for train, dev in split_sizes)
        return self.epochs * math.ceil(pool / self.batch_size)


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    config: type  # the dataclass of its [upstream.<name>] table
    implementation: str  # "module:Class", an engine.compute.algorithms.base.Algorithm subclass
    second_order: bool = False  # needs double backward (eager attention or SDPA's math backend)
    defaults: dict = field(default_factory=dict)  # this method's own defaults for `config`

    def make_config(self, **values):
        return replace(self.config(**self.defaults), **values)

    def algorithm(self) -> type:
        module, _, cls = self.implementation.partition(":")
        return getattr(importlib.import_module(module), cls)


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name == PT:
        raise ValueError(f"method name '{PT}' is reserved for the plain prompt-tuning baseline")
    if method.name in METHODS:
        raise ValueError(f"method '{method.name}' is already registered")
    if not issubclass(method.config, MethodConfig):
        raise TypeError(f"method '{method.name}': its config must subclass MethodConfig (for prompt_file)")
    method.make_config()  # a default that is not a field of the config fails here, not in every preset
    METHODS[method.name] = method
    return method


register_method(Method("mtl", "MTL", MTLConfig, "engine.compute.algorithms.mtl:MTL"))
register_method(Method("maml", "MAML", InnerLoopConfig, "engine.compute.algorithms.maml:MAML", second_order=True))
register_method(Method("fomaml", "FoMAML", InnerLoopConfig, "engine.compute.algorithms.fomaml:FoMAML",
                       defaults={"support_batch": 4, "query_batch": 4}))
register_method(Method("reptile", "Reptile", ReptileConfig, "engine.compute.algorithms.reptile:Reptile",
                       defaults={"inner_steps": 10, "support_batch": 4, "task_reduction": "mean"}))


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def label(name: str) -> str:
    if name == PT:
        return PT_LABEL
    return METHODS[name].label if name in METHODS else name


def in_display_order(names) -> list[str]:
    """PT first, then the registry's order, then anything unknown (an old run's method) by name."""
    names = set(names)
    known = [m for m in (PT, *METHODS) if m in names]
    return known + sorted(names - set(known))


def needs_second_order(names) -> list[str]:
    return [m for m in names if m in METHODS and METHODS[m].second_order]
