"""The method registry (`engine.experiment.methods`): labels, order, registration, preset validation, and a new method.

The registry and preset validation are torch-free (a subprocess test checks
it), and so are the tests of them here; only this module's toy algorithm needs
torch. The last test registers that toy method and runs a whole small run with
it through the worker: the path a newly added method takes, one `Algorithm`
subclass and one `Method` entry, nothing else edited.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from engine.compute.algorithms.base import Algorithm, batch_loss  # the toy's base class (imports torch)
from engine.experiment.config import PresetError, load_preset, preset_from_dict
from engine.base.fields import option
from engine.experiment.methods import (METHODS, PT, InnerLoopConfig, Method, MethodConfig, MTLConfig, ReptileConfig,
                            in_display_order, label, method_names, needs_second_order, register_method)

from conftest import REPO, SMALL_SEEDS, SMALL_TARGETS, small_run

PAPER_METHODS = ["mtl", "maml", "fomaml", "reptile"]


# ---------------------------------------------------------------- a toy method, defined by a test


@dataclasses.dataclass
class ToyConfig(MethodConfig):
    """[upstream.toy]: how many support examples, and a factor on the gradient."""

    support_batch: int = option(2, minimum=1)
    scale: float = option(1.0, minimum=0.0)


class ToyAlgorithm(Algorithm):
    """`scale` times the plain loss gradient on one support batch of one sampled task."""

    instances: list = []  # every algorithm the upstream stage built (with its hyperparameters)
    steps: list = []  # (task name, batch size, loss) of every meta-update

    def __init__(self, hp, placement="before", batch_tasks=True):
        super().__init__(hp, placement, batch_tasks)
        ToyAlgorithm.instances.append(self)

    def meta_gradient(self, backbone, prompt, sampler):
        (task,) = sampler.meta_batch(1)
        examples = sampler.batch(task.train, self.hp.support_batch)
        p = prompt.detach().clone().requires_grad_(True)
        loss = batch_loss(backbone, p, examples, self.placement)
        (g,) = torch.autograd.grad(loss, p)
        ToyAlgorithm.steps.append((task.name, len(examples), float(loss.detach())))
        return self.hp.scale * g, float(loss.detach())


TOY = Method("toy", "Toy", ToyConfig, f"{__name__}:ToyAlgorithm", defaults={"scale": 2.0})


@pytest.fixture
def toy():
    """The toy method registered (last, as a new `register_method` line would be) for one test only."""
    assert "toy" not in METHODS
    register_method(TOY)
    try:
        yield TOY
    finally:
        METHODS.pop("toy", None)


# ---------------------------------------------------------------- the registry itself


def test_the_registry_holds_the_paper_methods_in_order_with_their_labels():
    assert method_names()[:4] == tuple(PAPER_METHODS)
    assert [label(m) for m in PAPER_METHODS] == ["MTL", "MAML", "FoMAML", "Reptile"]
    assert label(PT) == "PT"
    assert label("protomaml") == "protomaml"  # an old run's unknown method keeps its name
    for name, spec in METHODS.items():
        assert spec.name == name and spec.label and spec.name != PT
        assert issubclass(spec.config, MethodConfig)
    assert METHODS["mtl"].config is MTLConfig
    assert all(METHODS[m].config is InnerLoopConfig for m in ("maml", "fomaml"))
    assert issubclass(METHODS["reptile"].config, InnerLoopConfig)


def test_only_maml_needs_second_order():
    assert needs_second_order([PT, *PAPER_METHODS, "protomaml"]) == ["maml"]
    assert needs_second_order([PT, "mtl", "fomaml", "reptile"]) == []


def test_display_order_is_pt_then_the_registry_then_unknown_by_name():
    assert in_display_order({"reptile", "zz_old", "maml", PT, "mtl", "aa_old", "fomaml"}) == \
        [PT, "mtl", "maml", "fomaml", "reptile", "aa_old", "zz_old"]
    assert in_display_order(["fomaml", "old"]) == ["fomaml", "old"]
    assert in_display_order({"reptile": {}, PT: {}}) == [PT, "reptile"]  # a results dict's keys
    assert in_display_order([]) == []


def test_a_registered_method_takes_its_place_in_order_and_labels(toy):
    assert method_names()[-1] == "toy"
    assert label("toy") == "Toy"
    assert in_display_order({"old", "toy", PT, "mtl"}) == [PT, "mtl", "toy", "old"]
    assert needs_second_order(["toy"]) == []


def test_registered_methods_are_gone_after_the_fixture():
    assert "toy" not in METHODS and label("toy") == "toy"


@pytest.mark.parametrize("name", [*PAPER_METHODS, PT])
def test_register_method_refuses_a_taken_name_and_pt(name):
    before = dict(METHODS)
    with pytest.raises(ValueError, match="is reserved" if name == PT else f"'{name}' is already registered"):
        register_method(Method(name, "Other", MethodConfig, "engine.compute.algorithms.mtl:MTL"))
    assert METHODS == before and all(METHODS[m] is before[m] for m in before)
    assert PT not in METHODS


def test_register_method_refuses_a_bad_config_at_registration():
    @dataclass
    class NotAMethodConfig:
        x: int = 1

    with pytest.raises(TypeError, match="must subclass MethodConfig"):
        register_method(Method("bad1", "Bad", NotAMethodConfig, "engine.compute.algorithms.mtl:MTL"))
    with pytest.raises(TypeError):
        register_method(Method("bad2", "Bad", MethodConfig, "engine.compute.algorithms.mtl:MTL", defaults={"nope": 1}))
    assert "bad1" not in METHODS and "bad2" not in METHODS


def test_make_config_applies_the_method_defaults_then_overrides():
    assert METHODS["fomaml"].make_config() == InnerLoopConfig(support_batch=4, query_batch=4)
    assert METHODS["reptile"].make_config() == ReptileConfig(inner_steps=10, support_batch=4, task_reduction="mean")
    assert METHODS["maml"].make_config() == InnerLoopConfig()
    assert METHODS["reptile"].make_config(inner_steps=3).support_batch == 4
    assert METHODS["reptile"].make_config(inner_steps=3).inner_steps == 3
    assert TOY.make_config() == ToyConfig(scale=2.0)
    with pytest.raises(TypeError):
        METHODS["mtl"].make_config(inner_steps=3)  # not a field of MTL's table


def test_the_registry_and_preset_validation_import_no_torch():
    code = ("import sys, engine.experiment.methods, engine.experiment.config; "
            "bad = [m for m in ('torch', 'transformers', 'higher') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------- preset validation


def _upstream(**upstream) -> dict:
    return {"upstream": upstream}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_registered_method_has_an_upstream_table_with_its_own_defaults(method):
    spec = METHODS[method]
    default = preset_from_dict({}).upstream
    assert default.hyperparameters[method] == spec.make_config()
    assert getattr(default, method) == spec.make_config()  # read as upstream.<name>

    preset = preset_from_dict(_upstream(methods=[method], **{method: {}}))
    assert preset.upstream.methods == [method]
    assert preset.upstream.hyperparameters[method] == spec.make_config()

    # a key set in the table changes that key only; the method's other defaults stay
    preset = preset_from_dict(_upstream(methods=[method], **{method: {"prompt_file": "learned.safetensors"}}))
    assert preset.upstream.hyperparameters[method] == spec.make_config(prompt_file="learned.safetensors")
    for other in METHODS:  # and only that method's table
        if other != method:
            assert preset.upstream.hyperparameters[other] == METHODS[other].make_config()

    # the TOML-shaped dict has the table under upstream.<name> and reads back the same
    raw = preset.to_dict()
    assert raw["upstream"][method] == dataclasses.asdict(spec.make_config(prompt_file="learned.safetensors"))
    assert "hyperparameters" not in raw["upstream"]
    assert preset_from_dict(raw) == preset


def test_inner_loop_tables_keep_their_method_defaults():
    up = preset_from_dict(_upstream(methods=["fomaml", "reptile", "maml"], reptile={"inner_lr": 1e-4},
                                    fomaml={"query_batch": 8}, maml={})).upstream
    assert up.fomaml.support_batch == 4 and up.fomaml.query_batch == 8
    assert up.reptile.inner_steps == 10 and up.reptile.support_batch == 4 and up.reptile.inner_lr == 1e-4
    assert up.maml.inner_steps == 1 and up.maml.support_batch == 2
    assert up.mtl == MTLConfig()


def test_a_preset_file_with_method_tables_and_overrides(tmp_path):
    path = tmp_path / "meta.toml"
    path.write_text('[upstream]\nmethods = ["reptile", "fomaml"]\nsteps = 7\n'
                    '[upstream.reptile]\ninner_lr = 0.001\n[upstream.fomaml]\ntasks_per_step = 3\n')
    preset, _ = load_preset(str(path), ["upstream.reptile.support_batch=8"], data_dir=str(tmp_path))
    up = preset.upstream
    assert up.methods == ["reptile", "fomaml"] and up.steps == 7
    assert up.reptile == METHODS["reptile"].make_config(inner_lr=0.001, support_batch=8)
    assert up.fomaml == METHODS["fomaml"].make_config(tasks_per_step=3)


def _refusal(raw: dict) -> str:
    with pytest.raises(PresetError) as info:
        preset_from_dict(raw, origin="p.toml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("p.toml: ")
    return message


def test_an_unknown_method_is_refused_naming_the_key():
    message = _refusal(_upstream(methods=["mtl", "protomaml"]))
    assert f"upstream.methods[1] must be one of {', '.join(METHODS)}, got 'protomaml'" in message


def test_bad_method_tables_are_refused_naming_the_key():
    message = _refusal(_upstream(protomaml={"inner_lr": 0.1}))
    assert "unknown key 'upstream.protomaml'" in message
    message = _refusal(_upstream(reptile={"inner_step": 3}))
    assert "unknown key 'upstream.reptile.inner_step'" in message and "inner_steps" in message
    message = _refusal(_upstream(reptile={"inner_steps": 0}))
    assert "upstream.reptile.inner_steps must be at least 1" in message
    message = _refusal(_upstream(mtl={"batch_size": "four"}))
    assert "upstream.mtl.batch_size must be an integer" in message
    message = _refusal(_upstream(mtl=3))
    assert "[upstream.mtl] must be a table" in message


def test_a_registered_method_is_accepted_and_its_table_validated(toy):
    with pytest.raises(PresetError, match="upstream.methods"):
        preset_from_dict(_upstream(methods=["toy2"]))
    up = preset_from_dict(_upstream(methods=["toy"], toy={"support_batch": 3})).upstream
    assert up.methods == ["toy"] and up.toy == ToyConfig(support_batch=3, scale=2.0)
    message = _refusal(_upstream(methods=["toy"], toy={"scale": -1.0}))
    assert "upstream.toy.scale must be at least 0.0" in message


def test_without_the_registration_the_toy_method_is_refused():
    message = _refusal(_upstream(methods=["toy"]))
    assert "upstream.methods" in message and "'toy'" in message
    assert "unknown key 'upstream.toy'" in _refusal(_upstream(toy={}))


# ---------------------------------------------------------------- a new method, end to end


def test_a_registered_toy_method_runs_through_the_upstream_stage(toy, tmp_path, tiny_llama):
    from engine.compute.prompt import load_prompt
    from engine.experiment.plan import Cell
    from engine.results.report import build_report
    from engine.store.run_dir import read_json
    from engine.compute.upstream import make_algorithm
    from engine.runner.lifecycle import execute

    cls = toy.algorithm()
    assert cls is ToyAlgorithm and issubclass(cls, Algorithm) and cls.second_order == toy.second_order
    ToyAlgorithm.instances.clear()
    ToyAlgorithm.steps.clear()

    run = small_run(tmp_path / "runs", tiny_llama, name="toy-run", downstream="steps = 2\neval_every = 2",
                    upstream='methods = ["toy"]\nsteps = 2\nlog_every = 1\n'
                             '[upstream.toy]\nsupport_batch = 3\nscale = 0.5')
    assert run.config()["preset"]["upstream"]["toy"] == {"prompt_file": "", "support_batch": 3, "scale": 0.5}
    results = execute(run)

    assert run.status()["state"] == "finished"
    # the upstream stage built the toy algorithm with its [upstream.toy] table and ran it for every step
    (algorithm,) = ToyAlgorithm.instances
    assert algorithm.hp == ToyConfig(support_batch=3, scale=0.5)
    assert [size for _, size, _ in ToyAlgorithm.steps] == [3, 3]
    logged = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    upstream_losses = [(e["step"], e["loss"]) for e in logged if e.get("stage") == "upstream"]
    assert upstream_losses == [(1, ToyAlgorithm.steps[0][2]), (2, ToyAlgorithm.steps[1][2])]
    assert all(e["method"] == "toy" for e in logged if e.get("stage") == "upstream")
    assert isinstance(make_algorithm("toy", preset_from_dict(run.config()["preset"]).upstream, "before"),
                      ToyAlgorithm)

    prompt_path = run.upstream_prompt("toy")
    assert prompt_path.is_file()
    prompt, meta = load_prompt(prompt_path)
    assert prompt.shape[0] == 4 and torch.isfinite(prompt).all()
    assert meta["method"] == "toy" and meta["steps"] == "2"

    stored = read_json(run.results_path)
    assert stored["tasks"] == results["tasks"] and stored["mean"] == results["mean"]
    assert set(stored["tasks"]) == {PT, "toy"}
    assert set(stored["tasks"]["toy"]) == set(SMALL_TARGETS)
    toy_splits = [s for s in stored["splits"] if s["method"] == "toy"]
    assert sorted((s["task"], s["seed"]) for s in toy_splits) == sorted(
        (task, seed) for task in SMALL_TARGETS for seed in SMALL_SEEDS)
    for split in toy_splits:
        assert (run.path / split["prompt"]).is_file()
        assert run.cell_path(Cell("toy", split["task"], split["seed"], split["lr"]).id).is_file()

    # the report labels its column from the registry
    assert label("toy") == "Toy"
    report = build_report([{"run_id": run.id, "tasks": stored["tasks"]}])
    assert [report.header(c) for c in report.columns] == ["PT", "Toy"]
