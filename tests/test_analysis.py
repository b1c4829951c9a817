"""The task similarity analysis (engine.execution.analysis, `mpt-tui analyse`, the similarity figures): embedding
jobs as ordinary grouped, resumable prompt-tuning jobs; the analysis of a finished tiny run end to end;
a planted structure found; the analysis as a run's last stage."""

from __future__ import annotations

import json
import random
import shutil
import statistics
from pathlib import Path

import pytest

from engine.execution.analysis import EMBED, analyse_runs, embedding_preset, run_stage, work_dir
from engine.results.analysis import analysis_path, read_analysis, render_text
from engine.experiment.config import preset_from_dict
from engine.runner.prepare import check_preset, prepare_run
from engine.experiment.plan import Plan
from engine.store.run_dir import Run, read_json
from engine.base.stopping import RunCancelled
from engine.store.index import RunIndex
from engine.runner.lifecycle import execute
from mpt_tui.cli import main

from conftest import DEMO_DATA, SMALL_SOURCES, small_preset, small_run

EMBED_STEPS = 6


class Events:
    """GridEvents for the analysis: keeps messages and stages; asks to stop on its `stop_at`-th check."""

    def __init__(self, stop_at: int | None = None):
        self.messages, self.stages, self.checks, self.stop_at = [], [], 0, stop_at

    def message(self, text):
        self.messages.append(text)

    def stage(self, stage, **fields):
        self.stages.append((stage, fields))

    def should_stop(self):
        self.checks += 1
        return self.stop_at is not None and self.checks >= self.stop_at


def _finished_run(root: Path, model: Path, name: str = "sim", **lines) -> Run:
    """A finished tiny run: PT and MTL (2 meta-updates) on the small two-target setting, 3 steps."""
    lines.setdefault("upstream", 'methods = ["mtl"]\nsteps = 2')
    lines.setdefault("downstream", "steps = 3\neval_every = 3")
    run = small_run(root, model, name=name, **lines)
    execute(run)
    return run


def _executor(run: Run):
    from engine.compute.backbone import Backbone
    from engine.compute.executor import Executor

    preset = preset_from_dict(run.config()["preset"])
    return Executor(Backbone.load(preset.model.name, device="cpu", max_input_length=preset.model.max_input_length))


def _settings(run: Run, kinds=("prompt", "text"), steps=EMBED_STEPS):
    import dataclasses

    preset = preset_from_dict(run.config()["preset"])
    return dataclasses.replace(preset.analysis, similarity=list(kinds), embedding_steps=steps, embedding_lr=0.3,
                               top_k=2)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_llama) -> Run:
    return _finished_run(tmp_path_factory.mktemp("analysis") / "runs", tiny_llama)


def test_analyse_a_finished_run_end_to_end(finished, tmp_path, capsys):
    """`mpt-tui analyse` on a finished tiny run: analysis.json as contracted, gains from results.json,
    the index pointer, the figures; the embedding jobs are grouped prompt-tuning jobs without a test."""
    root = tmp_path / "runs"
    shutil.copytree(finished.path.parent, root)
    run = Run(root / finished.id)
    plan = Plan(**run.config()["plan"])
    rc = main(["analyse", run.id[:12], "--runs-dir", str(root), "--steps", str(EMBED_STEPS), "--top-k", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    out = captured.out
    doc = read_json(analysis_path(run))
    assert doc["version"] == 1 and doc["sources"] == plan.sources and doc["targets"] == plan.targets
    assert set(doc["kinds"]) == {"prompt", "text"}
    for body in doc["kinds"].values():
        assert len(body["matrix"]) == len(plan.targets) and all(len(r) == len(plan.sources) for r in body["matrix"])
        assert all(-1 - 1e-9 <= s <= 1 + 1e-9 for r in body["matrix"] for s in r)
        for target, row in zip(plan.targets, body["matrix"]):
            best = max(range(len(row)), key=row.__getitem__)
            assert body["nearest"][target] == [[plan.sources[best], row[best]]]  # --top-k 1
    # gains: MTL minus PT on each split's chosen cell, averaged per target
    splits = read_json(run.results_path)["splits"]
    score = {(c["method"], c["task"], c["seed"]): c["test"] for c in splits}
    for target in plan.targets:
        expected = statistics.fmean(score[("mtl", target, s)] - score[("pt", target, s)] for s in plan.seeds)
        assert doc["gains"]["mtl"][target] == pytest.approx(expected)
    rows = {(c["similarity"], c["aggregate"], c["level"]): c for c in doc["correlations"] if c["method"] == "mtl"}
    assert set(rows) == {(k, a, lv) for k in ("prompt", "text") for a in ("max", "mean") for lv in ("task", "split")}
    assert all(c["n"] == 2 and c["rho"] is None for (_, _, lv), c in rows.items() if lv == "task")  # 2 targets
    assert all(c["n"] == 4 for (_, _, lv), c in rows.items() if lv == "split")
    assert "2 target tasks" in doc["note"] and "2/n!" in doc["note"]
    assert "task similarity (prompt embeddings)" in out and "Spearman rho" in out

    jobs = work_dir(run, _settings(run))
    records = [read_json(p) for p in (jobs / "embeddings").glob("*.json")]
    tasks = plan.sources + plan.targets
    assert sorted((r["task"], r["seed"]) for r in records) == sorted((t, s) for t in tasks for s in plan.seeds)
    assert all(r["method"] == EMBED and r["test"] is None and r["steps"] == EMBED_STEPS and r["group_size"] == 8
               for r in records)
    assert not list((jobs / "checkpoints").glob("*.pt"))

    summary = next(s for s in RunIndex(root).all() if s["run_id"] == run.id)
    assert summary["analysis"] == {"file": "analysis.json",
                                   "top": {t: [s for s, _ in doc["kinds"]["prompt"]["nearest"][t]]
                                           for t in plan.targets}}
    # the exports carry the matrices
    csv_file, json_file = tmp_path / "sim.csv", tmp_path / "sim.json"
    for fmt, out_file in (("csv", csv_file), ("json", json_file)):
        assert main(["export", "--format", fmt, "--table", "similarity", "--out", str(out_file),
                     "--runs-dir", str(root)]) == 0
    import csv

    rows = list(csv.DictReader(csv_file.open()))
    assert len(rows) == 2 * len(plan.targets) * len(plan.sources)
    for r in rows:
        i, j = plan.targets.index(r["target"]), plan.sources.index(r["source"])
        assert float(r["similarity"]) == pytest.approx(doc["kinds"][r["kind"]]["matrix"][i][j])
    assert {r["source"] for r in rows if r["rank"] == "1" and r["kind"] == "prompt"} == {
        items[0][0] for items in doc["kinds"]["prompt"]["nearest"].values()}
    assert json.loads(json_file.read_text())["runs"] == [{"run_id": run.id, "analysis": doc}]
    assert main(["export", "--format", "latex", "--table", "similarity", "--runs-dir", str(root)]) == 2

    for kind in ("similarity", "gain-vs-similarity"):
        out_file = tmp_path / f"{kind}.png"
        assert main(["plot", run.id, "--kind", kind, "--out", str(out_file), "--runs-dir", str(root)]) == 0
        assert out_file.stat().st_size > 1000


def test_analyse_refuses_bad_input_in_one_line(finished, tmp_path, tiny_llama, capsys):
    root = finished.path.parent
    queued = small_run(root, tiny_llama, name="queued")
    unfinished = small_run(root, tiny_llama, name="notyet")
    unfinished.update_status(state="cancelled")
    cases = [(["analyse", "no-such-run"], "no run 'no-such-run'"),
             (["analyse", queued.id], "is queued: analyse it once it has finished"),
             (["analyse", unfinished.id], "has no results yet (cancelled)"),
             (["analyse", finished.id, "--similarity", "prompt,smell"], "unknown kind(s) smell"),
             (["analyse", finished.id, "--steps", "0"], "--steps: must be at least 1"),
             (["analyse", finished.id, finished.id], "is in runs")]
    for argv, message in cases:
        assert main(argv + ["--runs-dir", str(root)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["plot", unfinished.id, "--kind", "similarity", "--out", str(tmp_path / "f.png"),
                 "--runs-dir", str(root)]) == 2
    assert "no similarity analysis yet" in capsys.readouterr().err
    assert not analysis_path(unfinished).exists() and not (unfinished.path / "analysis").exists()


def _prompt_files(run: Run, settings) -> dict:
    from safetensors.torch import load_file

    return {p.name: load_file(str(p))["prompt"]
            for p in sorted((work_dir(run, settings) / "prompts").glob("*.safetensors"))}


def test_embedding_jobs_stopped_midway_resume_to_the_same_embeddings(finished, tmp_path):
    """Cancelled through the stop flag, the embedding jobs checkpoint; run again, they resume and end
    with the prompts (and matrix) of an uninterrupted analysis."""
    import torch

    runs = {}
    for name in ("reference", "stopped"):
        shutil.copytree(finished.path.parent, tmp_path / name)
        runs[name] = Run(tmp_path / name / finished.id)
    executor = _executor(finished)
    settings = _settings(finished, kinds=("prompt",))
    reference = analyse_runs([runs["reference"]], settings, executor, Events())

    stopped = runs["stopped"]
    with pytest.raises(RunCancelled):
        analyse_runs([stopped], settings, executor, Events(stop_at=4))  # asked before the unit, then each step
    checkpoints = list((work_dir(stopped, settings) / "checkpoints").glob("*.pt"))
    assert checkpoints and not list((work_dir(stopped, settings) / "embeddings").glob("*.json"))
    events = Events()
    resumed = analyse_runs([stopped], settings, executor, events)
    assert any("resuming after step 3" in m for m in events.messages)
    assert resumed["kinds"] == reference["kinds"]
    want, got = _prompt_files(runs["reference"], settings), _prompt_files(stopped, settings)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    # other settings are other jobs: nothing of these is taken for them
    longer = _settings(finished, kinds=("prompt",), steps=EMBED_STEPS + 2)
    other = analyse_runs([stopped], longer, executor, Events())
    assert other["kinds"]["prompt"]["matrix"] != resumed["kinds"]["prompt"]["matrix"]
    assert _prompt_files(stopped, longer).keys() == want.keys() and _prompt_files(stopped, settings).keys() == want.keys()


def _planted_data(root: Path, target: str, copies: list[str]) -> Path:
    """The demo data plus `copies` of `target`: its examples pooled and re-split with other seeds, under new names."""
    data = root / "data"
    shutil.copytree(DEMO_DATA / "tasks", data / "tasks")
    shutil.copytree(DEMO_DATA / "config", data / "config")
    pool = {}
    for path in sorted((data / "tasks" / target).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            example = json.loads(line)
            pool[example["input"]] = example
    examples = list(pool.values())
    for shuffle_seed, name in enumerate(copies, start=101):
        folder = data / "tasks" / name
        folder.mkdir()
        for seed in (1, 2):
            rng = random.Random(shuffle_seed * 10 + seed)
            chosen = rng.sample(examples, 48)
            for split, part in (("train", chosen[:16]), ("dev", chosen[16:32]), ("test", chosen[32:])):
                (folder / f"{name}_16_{seed}_{split}.jsonl").write_text(
                    "".join(json.dumps({**e, "task": name}) + "\n" for e in part))
        shutil.copy(data / "config" / "tasks" / f"{target}.json", data / "config" / "tasks" / f"{name}.json")
    return data


def test_a_planted_structure_comes_out_as_the_nearest_sources(tmp_path, tiny_llama):
    """Two sources built from a target's own examples (other split seeds, new names) are that target's two
    most similar sources, by prompt and by text embeddings."""
    copies = ["planted-one", "planted-two"]
    data = _planted_data(tmp_path, "demo-emotion", copies)
    sources = ["demo-movie_sentiment", "demo-news_topic", "demo-spam", "demo-question_or_statement"] + copies
    preset_file = small_preset(tmp_path / "planted.toml", tiny_llama, name="planted",
                               downstream="steps = 1\neval_every = 1")
    text = preset_file.read_text()
    text = text.replace(f'dir = "{DEMO_DATA}"', f'dir = "{data}"').replace(
        f"sources = {json.dumps(SMALL_SOURCES)}", f"sources = {json.dumps(sources)}")
    preset_file.write_text(text)
    run = prepare_run(tmp_path / "runs", check_preset(str(preset_file)))
    execute(run)
    doc = analyse_runs([run], _settings(run, steps=30), _executor(run), Events())
    for kind in ("prompt", "text"):
        nearest = doc["kinds"][kind]["nearest"]["demo-emotion"]
        assert {s for s, _ in nearest} == set(copies), (kind, nearest)
    assert doc["gains"] == {}  # PT only: nothing to correlate
    assert "nearest to demo-emotion: planted-" in render_text(doc)


def test_the_analysis_as_a_runs_last_stage(finished, tmp_path):
    """run_stage does nothing without [analysis] similarity, and stores the analysis with it."""
    import dataclasses

    shutil.copytree(finished.path.parent, tmp_path / "runs")
    run = Run(tmp_path / "runs" / finished.id)
    preset = preset_from_dict(run.config()["preset"])
    plan = Plan(**run.config()["plan"])
    executor = _executor(run)
    assert run_stage(run, preset, plan, executor, Events()) is None and not analysis_path(run).exists()
    preset = dataclasses.replace(preset, analysis=_settings(run, kinds=("text",)))
    events = Events()
    doc = run_stage(run, preset, plan, executor, events)
    assert read_analysis(run) == json.loads(json.dumps(doc))
    assert set(doc["kinds"]) == {"text"}
    assert [f for s, f in events.stages if s == "analysis"] == [{"analysis": f"text embeddings of {t}"}
                                                                 for t in plan.sources + plan.targets]
    assert embedding_preset(preset, preset.analysis).downstream.steps == EMBED_STEPS


def test_the_embedding_work_runs_as_units_on_the_backend_it_is_given(finished, tmp_path):
    """Every embedding job and text embedding goes through the backend's schedule (a Ray run's workers
    take them like grid units): train-only groups of all jobs, one `EmbedTexts` per task, and the
    analysis is the one an executor's computes."""
    from engine.experiment.units import EmbedTexts, TrainCells
    from engine.execution.schedule import LocalBackend

    class Recording(LocalBackend):
        def __init__(self, executor):
            super().__init__(executor)
            self.units, self.sizes = [], 0

        def run(self, schedule, events):
            self.units += [item.unit for item in schedule.waiting]
            super().run(schedule, events)

        def group_size(self, preset, data, pending, events):
            self.sizes += 1
            return 3  # not the executor's 8: the backend decides

    shutil.copytree(finished.path.parent, tmp_path / "runs")
    settings = _settings(finished)
    backend = Recording(_executor(finished))
    doc = analyse_runs([Run(tmp_path / "runs" / finished.id)], settings, backend, Events())
    plan = Plan(**finished.config()["plan"])
    tasks = plan.sources + plan.targets
    groups = [u for u in backend.units if isinstance(u, TrainCells)]
    assert backend.sizes == 1 and all(not u.test for u in groups)
    assert [len(u.cells) for u in groups] == [3] * (len(tasks) * len(plan.seeds) // 3) + \
        ([len(tasks) * len(plan.seeds) % 3] if len(tasks) * len(plan.seeds) % 3 else [])
    assert sorted(w.cell.task for u in groups for w in u.cells) == sorted(tasks * len(plan.seeds))
    assert [u.task for u in backend.units if isinstance(u, EmbedTexts)] == tasks
    for kind in ("prompt", "text"):
        assert [len(row) for row in doc["kinds"][kind]["matrix"]] == [len(plan.sources)] * len(plan.targets)


def test_a_cancel_between_text_embeddings_stops_the_analysis(finished, tmp_path):
    """Text embeddings have no steps to ask the stop flag at: the backend asks before each unit."""
    shutil.copytree(finished.path.parent, tmp_path / "runs")
    run = Run(tmp_path / "runs" / finished.id)
    events = Events(stop_at=2)  # asked before the first unit (no), then before the second (yes)
    with pytest.raises(RunCancelled):
        analyse_runs([run], _settings(run, kinds=("text",)), _executor(run), events)
    assert events.checks == 2 and not analysis_path(run).exists()
    assert [f for s, f in events.stages if s == "analysis"] == [{"analysis": f"text embeddings of {SMALL_SOURCES[0]}"}]


def test_an_embedding_group_out_of_gpu_memory_is_halved_and_the_split_kept(finished, tmp_path, monkeypatch):
    """Like the grid's groups: a CUDA out-of-memory error halves the embedding group (and its groups.json)
    until it fits, and the analysis goes on."""
    import torch

    from engine.compute.executor import Executor

    shutil.copytree(finished.path.parent, tmp_path / "runs")
    run = Run(tmp_path / "runs" / finished.id)
    real_train_cells, sizes = Executor.train_cells, []

    def train_cells_with_little_memory(self, unit, events):
        sizes.append(len(unit.cells))
        if len(unit.cells) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_train_cells(self, unit, events)

    monkeypatch.setattr(Executor, "train_cells", train_cells_with_little_memory)
    settings = _settings(run, kinds=("prompt",))
    events = Events()
    doc = analyse_runs([run], settings, _executor(run), events)
    jobs = len(list((work_dir(run, settings) / "embeddings").glob("*.json")))
    assert sizes[:3] == [8, 4, 2] and jobs == 8  # halved until it fits (the CPU's group of 8)
    assert sorted(len(g) for g in read_json(work_dir(run, settings) / "groups.json")) == [2, 2, 2, 2]
    assert any("out of GPU memory with 8 embedding jobs" in m for m in events.messages)
    assert set(doc["kinds"]) == {"prompt"}


def test_analyse_runs_as_a_stage_that_show_sees_and_cancel_and_resume_handle(finished, tmp_path):
    """`mpt-tui analyse` goes through the worker's lifecycle: while it runs, status.json and `show` say the
    run is running its analysis stage, with a fresh heartbeat and the command's pid; `cancel` checkpoints its
    embedding jobs and leaves the run cancelled; `resume` finishes the analysis the command asked for (its
    settings), and analysis.json says it was added later. The grid's records and results are never touched."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "runs"
    shutil.copytree(finished.path.parent, root)
    run = Run(root / finished.id)
    grid_files = {p: p.read_bytes() for p in [run.results_path, *sorted(run.cells_dir.glob("*.json"))]}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mpt_tui.cli", *args, "--runs-dir", str(root)], env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)

    def wait(predicate, what, timeout=240):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if value := predicate():
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    analyse = subprocess.Popen([sys.executable, "-m", "mpt_tui.cli", "analyse", run.id, "--runs-dir", str(root),
                                "--similarity", "prompt", "--steps", "400", "--top-k", "1"], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        status = wait(lambda: (s := read_json(run.status_path)) and s.get("state") == "running"
                      and s.get("stage") == "analysis" and s, "the analysis stage running")
        assert status["pid"] == analyse.pid and time.time() - status["heartbeat"] < 30
        shown = json.loads(cli("show", run.id, "--json").stdout)
        assert (shown["state"], shown["stage"]) == ("running", "analysis")
        checkpoints = run.path / "analysis" / "embed-400steps-lr0.3" / "checkpoints"
        cancelled = cli("cancel", run.id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert analyse.wait(timeout=240) == 130
    finally:
        if analyse.poll() is None:
            analyse.send_signal(signal.SIGKILL)
    assert run.status()["state"] == "cancelled" and any(checkpoints.glob("*.pt"))
    assert read_analysis(run) is None
    resumed = cli("resume", run.id)
    assert resumed.returncode == 0, resumed.stderr
    wait(lambda: run.status()["state"] not in ("queued", "running"), "the resumed analysis to end", timeout=300)
    assert run.status()["state"] == "finished", run.log_path.read_text()[-2000:]
    doc = read_analysis(run)
    assert set(doc["kinds"]) == {"prompt"} and doc["requested"]["settings"]["embedding_steps"] == 400
    assert all(len(items) == 1 for items in doc["kinds"]["prompt"]["nearest"].values())  # --top-k 1
    assert "resuming after step" in run.log_path.read_text()  # the cancelled jobs went on from their checkpoints
    assert {p: p.read_bytes() for p in grid_files} == grid_files
    shown = cli("show", run.id)
    assert "analysis   prompt (added after the run by `mpt-tui analyse` on" in shown.stdout, shown.stdout
