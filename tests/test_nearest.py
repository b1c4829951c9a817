"""data.sources = "nearest:K": each target's K most similar sources by a stored similarity matrix, one
upstream unit per (method, source set) (engine.experiment.plan, engine.execution.grid, engine.runner.estimate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.experiment.config import PresetError, load_preset, preset_from_dict
from engine.compute.executor import Executor
from engine.experiment.units import LearnInit, TrainCells
from engine.execution.schedule import LocalBackend
from engine.execution.grid import cells_unit, run_grid, upstream_to_learn, upstream_unit
from engine.experiment.plan import Plan, grid_cells
from engine.runner.prepare import plan_run
from engine.store.run_dir import Run, list_runs, read_json, write_json_atomic
from engine.experiment.similarity import ranked_sources

from conftest import DEMO_DATA, REPO, small_preset

SOURCES = ["demo-movie_sentiment", "demo-news_topic", "demo-spam", "demo-question_or_statement"]  # the demo setting's
TARGETS = ["demo-emotion", "demo-formality", "demo-product_sentiment"]
# rows: TARGETS, columns: SOURCES; the text matrix ranks the other way round, so the kind matters
PROMPT = [[0.9, 0.1, 0.8, 0.2],  # emotion: movie_sentiment, spam
          [0.1, 0.7, 0.2, 0.9],  # formality: question_or_statement, news_topic
          [0.6, 0.2, 0.7, 0.1]]  # product_sentiment: spam, movie_sentiment (emotion's set)
TEXT = [[1 - v for v in row] for row in PROMPT]


def write_analysis(run_dir: Path, sources=SOURCES, targets=TARGETS, kinds=None) -> Path:
    """An analysed run directory as engine.execution.analysis leaves it (config.json, analysis.json)."""
    kinds = {"prompt": PROMPT, "text": TEXT} if kinds is None else kinds
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / "config.json", {"preset": {}, "plan": {"sources": sources, "targets": targets}})
    doc = {"version": 1, "runs": [{"run_id": run_dir.name, "sources": sources, "targets": targets}],
           "sources": sources, "targets": targets, "correlations": [], "gains": {}, "note": "",
           "kinds": {kind: {"matrix": m, "nearest": ranked_sources(m, sources, targets, 3)} for kind, m in kinds.items()}}
    write_json_atomic(run_dir / "analysis.json", doc)
    return run_dir / "analysis.json"


def nearest_preset(tmp_path, model, *overrides, name="near", upstream=""):
    preset_file = small_preset(tmp_path / f"{name}.toml", model, name=name, upstream=upstream,
                               downstream="steps = 2\neval_every = 2\nmax_test_examples = 8")
    return str(preset_file), ['data.setting="demo"', *overrides]


def planned(tmp_path, *overrides, runs_root=None):
    """(preset, plan) of the small preset on the demo setting with `overrides` (no model is loaded)."""
    preset, _ = load_preset(*nearest_preset(tmp_path, tmp_path / "no-model-needed", *overrides))
    return preset, plan_run(preset, runs_root)


def plan_of(tmp_path, *overrides, runs_root=None) -> Plan:
    return planned(tmp_path, *overrides, runs_root=runs_root)[1]


def test_nearest_k_selects_what_the_stored_matrix_says(tmp_path):
    root = tmp_path / "runs"
    analysis = write_analysis(root / "20260101-000000-analysed")
    near = ['data.sources="nearest:2"', f'data.similarity="{analysis}"', f'data.targets={json.dumps(TARGETS)}']
    plan = plan_of(tmp_path, *near)
    assert plan.source_sets == {"demo-emotion": ["demo-movie_sentiment", "demo-spam"],  # in the candidates' order
                                "demo-formality": ["demo-news_topic", "demo-question_or_statement"],
                                "demo-product_sentiment": ["demo-movie_sentiment", "demo-spam"]}
    assert plan.sources == SOURCES  # the union of the sets, the sources this run reads
    # a run id (or its prefix) in the runs root names the same file; the text matrix ranks the other way
    assert plan_of(tmp_path, *near[:1], 'data.similarity="20260101"', near[2], runs_root=root) == plan
    text = plan_of(tmp_path, *near, 'data.similarity_kind="text"')
    assert text.source_sets["demo-emotion"] == ["demo-news_topic", "demo-question_or_statement"]
    # the candidates are the setting's sources: without movie_sentiment, emotion's next nearest comes in
    setting = tmp_path / "three.json"
    setting.write_text(json.dumps({"train": SOURCES[1:], "test": TARGETS}))
    fewer = plan_of(tmp_path, *near, f'data.setting="{setting}"')
    assert fewer.source_sets["demo-emotion"] == ["demo-spam", "demo-question_or_statement"]


def test_targets_sharing_a_set_share_one_upstream_unit(tmp_path):
    root = tmp_path / "runs"
    analysis = write_analysis(root / "analysed")
    preset, plan = planned(tmp_path, 'data.sources="nearest:2"', f'data.similarity="{analysis}"',
                           f'data.targets={json.dumps(TARGETS)}', 'upstream.methods=["mtl", "maml"]')
    run = Run(tmp_path / "runs" / "new")
    emotion, formality, product = (plan.set_key(t) for t in TARGETS)
    assert emotion == product != formality and len(emotion) == 8
    learn = upstream_to_learn(run, preset, plan)
    assert learn == [("mtl", emotion), ("mtl", formality), ("maml", emotion), ("maml", formality)]  # 2 sets x 2
    units = [upstream_unit(run, preset, plan, m, key) for m, key in learn]
    assert len({u.output for u in units}) == len({u.checkpoint for u in units}) == 4
    assert units[0].output == str(run.prompts_dir / f"upstream-mtl-{emotion}.safetensors")
    assert {t for t, _ in units[1].meta_tasks} == {"demo-news_topic", "demo-question_or_statement"}
    assert units[1].init.task_names == plan.source_sets["demo-formality"]  # task-name init: its own sources
    cells = [c for c in grid_cells(plan, [0.3]) if c.method == "maml" and c.seed == 1]
    starts = {w.cell.task: w.init.file for w in cells_unit(run, preset, plan, cells).cells}
    assert starts == {t: str(run.upstream_prompt("maml", plan.set_key(t))) for t in TARGETS}
    assert starts["demo-emotion"] == starts["demo-product_sentiment"] != starts["demo-formality"]


def test_plain_source_lists_keep_one_unit_per_method_and_their_paths(tmp_path):
    preset, plan = planned(tmp_path, 'upstream.methods=["maml"]')
    run = Run(tmp_path / "runs" / "old")
    assert plan.source_sets == {} and plan.upstream_sets() == {"": plan.sources}
    assert upstream_to_learn(run, preset, plan) == [("maml", "")]
    unit = upstream_unit(run, preset, plan, "maml")
    assert (unit.output, unit.checkpoint) == (str(run.prompts_dir / "upstream-maml.safetensors"),
                                              str(run.checkpoints_dir / "upstream-maml.pt"))
    cell = next(c for c in grid_cells(plan, [0.3]) if c.method == "maml")
    assert cells_unit(run, preset, plan, [cell]).cells[0].init.file == unit.output
    assert not plan.warnings
    named = plan_of(tmp_path, 'data.similarity="somewhere/analysis.json"')  # a matrix a list does not use
    assert named.source_sets == {} and any("data.similarity" in w for w in named.warnings)
    # a run stored before source sets existed reads as a plain one (resumes with the same paths)
    stored = {k: v for k, v in plan.to_dict().items() if k != "source_sets"}
    assert Plan(**stored).upstream_sets() == {"": plan.sources}


class Quiet:
    """GridEvents that keep the stages and never stop."""

    def __init__(self):
        self.stages = []

    def begin(self, total_steps, done_steps): pass
    def progress_to(self, done_steps): pass
    def stage(self, stage, **fields): self.stages.append(stage)
    def upstream_step(self, method, step, loss): pass
    def cell_step(self, cell_id, step, loss): pass
    def cell_dev(self, cell_id, step, score): pass
    def message(self, text): pass
    def should_stop(self): return False


class Watching:
    """The real executor, noting each unit it is given and which upstream prompts exist at that moment."""

    def __init__(self, executor: Executor):
        self.executor, self.seen = executor, []

    def run(self, unit, events):
        ready = {Path(w.init.file) for w in unit.cells if w.init.file and Path(w.init.file).is_file()} \
            if isinstance(unit, TrainCells) else set()
        self.seen.append((unit, ready))
        return self.executor.run(unit, events)

    def group_size(self, preset, data, pending, events):
        return self.executor.group_size(preset, data, pending, events)


def test_a_nearest_run_starts_each_cell_from_its_own_sets_prompt(tmp_path, tiny_llama):
    """End to end on the tiny model: nearest:1 gives the two targets different sets, each set learns its
    own MTL prompt first, and every MTL cell starts from its target's set's prompt; a rerun runs nothing."""
    from engine.compute.backbone import Backbone
    from engine.runner.prepare import check_preset, prepare_run

    analysis = write_analysis(tmp_path / "analysed")
    preset_file, sets = nearest_preset(tmp_path, tiny_llama, 'data.sources="nearest:1"',
                                       f'data.similarity="{analysis}"', upstream='methods = ["mtl"]\nsteps = 2')
    run = prepare_run(tmp_path / "runs", check_preset(preset_file, sets))
    preset, plan = preset_from_dict(run.config()["preset"]), Plan(**run.config()["plan"])
    assert plan.source_sets == {"demo-emotion": ["demo-movie_sentiment"], "demo-formality": ["demo-question_or_statement"]}
    watching = Watching(Executor(Backbone.load(str(tiny_llama), device="cpu", max_input_length=40)))
    events = Quiet()
    results = run_grid(run, preset, plan, LocalBackend(watching), events)
    keys = {t: plan.set_key(t) for t in plan.targets}
    learned = [u for u, _ in watching.seen if isinstance(u, LearnInit)]
    assert sorted(u.output for u in learned) == sorted(str(run.upstream_prompt("mtl", k)) for k in keys.values())
    assert {f"upstream:mtl@{k}" for k in keys.values()} <= set(events.stages)
    for unit, ready in watching.seen:
        for work in unit.cells if isinstance(unit, TrainCells) else []:
            if work.cell.method == "mtl":
                own = run.upstream_prompt("mtl", keys[work.cell.task])
                assert Path(work.init.file) == own and own in ready  # learned before its group started
    assert set(results["tasks"]["mtl"]) == set(plan.targets)
    stored, again = read_json(run.results_path), Watching(watching.executor)
    assert run_grid(run, preset, plan, LocalBackend(again), Quiet()) == stored and again.seen == []  # resumed: done


def test_dry_run_counts_one_upstream_stage_per_method_and_set(tmp_path):
    from engine.runner.estimate import dry_run, render

    analysis = write_analysis(tmp_path / "analysed")
    preset, plan = planned(tmp_path, 'data.sources="nearest:2"', f'data.similarity="{analysis}"',
                           f'data.targets={json.dumps(TARGETS)}', 'upstream.methods=["mtl"]', "upstream.steps=7")
    result = dry_run(preset, plan, tmp_path / "runs", probe=False)
    assert [s["targets"] for s in result.source_sets] == [["demo-emotion", "demo-product_sentiment"],
                                                          ["demo-formality"]]
    assert result.upstream_steps == {"mtl": sum(s["steps"]["mtl"] for s in result.source_sets)}
    assert all(s["steps"]["mtl"] > 0 for s in result.source_sets)
    assert "2 distinct source sets x 1 methods = 2 upstream stages" in render(result)


@pytest.mark.parametrize("overrides, key", [
    (['data.sources="nearest:0"'], "data.sources"),
    (['data.sources="nearest:x"'], "data.sources"),
    (['data.sources="nearest:2"'], "data.similarity"),  # no matrix named
    (['data.sources="nearest:2"', 'data.similarity="no-such-run"'], "data.similarity"),
    (['data.sources="nearest:2"', 'data.similarity="ANALYSIS"', 'data.similarity_kind="text"'],
     "data.similarity_kind"),  # the analysis has no text matrix
    (['data.sources="nearest:9"', 'data.similarity="ANALYSIS"'], "data.sources"),  # more than the candidates
])
def test_bad_nearest_settings_exit_2_before_any_run_directory(tmp_path, tiny_llama, overrides, key):
    analysis = write_analysis(tmp_path / "analysed", kinds={"prompt": PROMPT})
    runs = tmp_path / "runs"
    preset_file, sets = nearest_preset(tmp_path, tiny_llama, *[o.replace("ANALYSIS", str(analysis)) for o in overrides])
    with pytest.raises(PresetError, match=key):
        plan_run(load_preset(preset_file, sets)[0], runs)
    args = [a for o in sets for a in ("--set", o)]
    proc = subprocess.run([sys.executable, "-m", "mpt_tui.cli", "--preset", preset_file, *args, "--runs-dir", str(runs)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MPT_TUI_RUNS_DIR": str(runs), "MPT_TUI_DATA_DIR": str(DEMO_DATA)})
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert list_runs(runs) == []
