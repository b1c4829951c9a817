"""What a preset will train, before anything is spent: counts, the group size, and an estimated time.

`dry_run` takes a checked preset (engine.runner.prepare.check_preset: everything the real start checks) and
counts what `engine.execution.grid.run_grid` would run: upstream meta-updates per method (under `data.sources =
"nearest:K"`, one upstream stage per method and distinct source set: the cost multiplies), grid cells and
their steps (under `downstream.max_epochs`), the groups. The time comes from, in this order:
  1. stored timings: finished work of earlier runs in the runs root with the same model, device name
     (e.g. the GPU's model), precision and group size: seconds per group pass (evaluations included)
     and seconds per meta-update of each method;
  2. a probe, when the device is free and `probe` is on: the model loads and trains a few steps of a
     group and a few meta-updates of each method, with the preset's own settings;
  3. otherwise no estimate, and the reason.
The `[analysis]` stage runs after the grid: its embedding jobs (a job of `analysis.embedding_steps`
steps per task and split, in groups of the grid's size) are counted as group passes, and each split's
text embedding (one forward pass over its training inputs) as one pass: a rough upper bound.
It never waits for a busy device and writes nothing to the runs root. Shared by `mpt-tui --dry-run`
(and meant for the Launch form's plan line).

A Ray preset (`[cluster] backend = "ray"`) is estimated for its workers running in parallel: the
units are placed on `workers` free workers in the run's schedule order (engine.execution.grid), each group
waiting for the upstream units its cells start from, and the estimate is when the last one ends.
The timings are still this machine's (or stored ones): a cluster of other GPUs scales them.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.base.hardware import device_name, resolve_precision, visible_gpus
from engine.experiment.config import Preset
from engine.experiment.plan import Plan, grid_cells

PROBE_PASSES = 3  # timed group passes (after one untimed warm-up pass)
PROBE_UPDATES = 2  # timed meta-updates per method (after one untimed)


@dataclass
class DryRun:
    sources: list[str]
    targets: list[str]
    missing_sources: list[str]
    missing_targets: list[str]
    seeds: list[int]
    methods: list[str]
    upstream_steps: dict[str, int]  # meta-updates per method learned upstream (over all its source sets)
    cells: int
    cell_steps: int  # optimizer steps over all cells
    group_size: int
    groups: int
    group_passes: int  # passes over the backbone downstream (each group runs as long as its longest job)
    device: str
    device_name: str
    precision: str
    timings: dict = field(default_factory=dict)  # {"pass_s": ..., "update_s": {method: s}}
    estimate_s: float | None = None
    estimate_from: str = ""
    workers: int = 1  # units running at once (a Ray run's workers)
    workers_from: str = ""
    serial_s: float | None = None  # the same work on one worker
    # data.sources = "nearest:K": each distinct source set, {"key", "sources", "targets", "steps": {method: n}}
    source_sets: list[dict] = field(default_factory=list)
    # [analysis]: {"kinds", "embedding_jobs", "embedding_groups", "embedding_passes", "text_splits",
    # "text_splits_per_task", "seconds"}
    analysis: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def dry_run(preset: Preset, plan: Plan, runs_root: Path, *, probe: bool = True) -> DryRun:
    from engine.experiment.data import TaskData
    from engine.runner.devices import candidate_devices, device_lock_path, lock_held
    from engine.experiment.units import CPU_GROUP_SIZE
    from engine.execution.grid import cell_steps, needed_upstream, upstream_name, upstream_steps

    data = TaskData(plan.data_dir, plan.config_dir)
    learned = [m for m in plan.methods if m in preset.upstream.hyperparameters
               and not preset.upstream.hyperparameters[m].prompt_file]
    unit_steps = {(m, key): upstream_steps(preset, plan, data, m, key) for m in learned for key in plan.upstream_sets()}
    updates = {m: sum(n for (method, _), n in unit_steps.items() if method == m) for m in learned}
    cells = grid_cells(plan, preset.downstream.learning_rates)
    steps = cell_steps(preset, data, cells)
    device = candidate_devices(preset.model.device, ask_torch=probe)[0]
    free = not lock_held(device_lock_path(runs_root, device))  # checked, never waited for
    size = preset.downstream.group_size or (CPU_GROUP_SIZE if device == "cpu" else 0)
    backbone = None
    if not size:  # a GPU's group size comes from the memory probe, on a free device only
        if free and probe:
            backbone = _load(preset, device)
            size = _probed_group_size(backbone, preset, plan, data, cells)
        else:
            size = 1
    analysis = analysis_work(preset, plan, data, size)  # its groups are of the uncapped size
    size = max(1, min(size, len(cells)))
    groups = [cells[i:i + size] for i in range(0, len(cells), size)]
    passes = sum(max(steps[c.id] for c in g) for g in groups)
    result = DryRun(plan.sources, plan.targets, list(getattr(plan, "missing_sources", [])),
                    list(getattr(plan, "missing_targets", [])), plan.seeds, plan.methods, updates, len(cells),
                    sum(steps.values()), size, len(groups), passes, device, "", "")
    if plan.source_sets:
        result.source_sets = [{"key": key, "sources": sources, "targets": plan.targets_of(key),
                               "steps": {m: unit_steps[m, key] for m in learned}}
                              for key, sources in plan.upstream_sets().items()]
    result.precision = resolve_precision(preset.model.precision, device, ask_torch=probe)
    result.device_name = device_name(device, ask_torch=probe)
    stored = stored_timings(runs_root, preset.model.name, result.device_name, result.precision, size)
    if stored["pass_s"] is not None and all(m in stored["update_s"] for m in updates):
        result.timings = stored
        result.estimate_from = f"stored timings of {stored['runs']} earlier run(s) on {result.device_name}"
    elif not probe:
        result.estimate_from = "no estimate: no stored timings match, and the probe is off"
    elif not free:
        result.estimate_from = f"no estimate: {device} is busy (no probe while another run holds it) and no " \
                               f"stored timings match"
    else:
        backbone = backbone or _load(preset, device)
        result.timings = probe_timings(backbone, preset, plan, data, cells[:size], list(updates))
        result.estimate_from = f"a probe on {result.device_name}: {PROBE_PASSES} group passes, " \
                               f"{PROBE_UPDATES} meta-updates per method"
    result.workers, result.workers_from = planned_workers(preset)
    result.analysis = analysis
    if result.timings:
        pass_s, update_s = result.timings["pass_s"], result.timings["update_s"]
        result.serial_s = passes * pass_s + sum(n * update_s[m] for m, n in updates.items())
        units = [(n * update_s[m], frozenset(), upstream_name(m, key)) for (m, key), n in unit_steps.items()]
        units += [(max(steps[c.id] for c in g) * pass_s,
                   frozenset(upstream_name(*needed_upstream(plan, c)) for c in g if c.method in updates), "")
                  for g in groups]
        result.estimate_s = parallel_time(units, result.workers)
        if result.analysis:  # a stage of its own after the grid, spread over the same workers
            a = result.analysis
            later = [(preset.analysis.embedding_steps * pass_s, frozenset(), "")] * a["embedding_groups"]
            later += [(n * pass_s, frozenset(), "") for n in a["text_splits_per_task"]]  # a unit per task
            a["seconds"] = parallel_time(later, result.workers) if later else 0.0
            result.estimate_s += a["seconds"]
            result.serial_s += (a["embedding_passes"] + a["text_splits"]) * pass_s
    return result


def analysis_work(preset: Preset, plan: Plan, data, group_size: int) -> dict:
    """What the `[analysis]` stage runs after the grid (engine.execution.analysis): an embedding job per task and
    split, in groups of `group_size`, and a text embedding per split; {} without an analysis."""
    kinds = preset.analysis.similarity
    if not kinds:
        return {}
    tasks = list(dict.fromkeys(plan.sources + plan.targets))
    per_task = [len(set(data.seeds(t, preset.data.k)) & set(plan.seeds)) for t in tasks]
    jobs = sum(per_task) if "prompt" in kinds else 0
    groups = -(-jobs // max(1, min(group_size, jobs))) if jobs else 0
    texts = per_task if "text" in kinds else []
    return {"kinds": list(kinds), "embedding_jobs": jobs, "embedding_groups": groups,
            "embedding_passes": groups * preset.analysis.embedding_steps, "text_splits": sum(texts),
            "text_splits_per_task": texts, "seconds": None}


def planned_workers(preset: Preset) -> tuple[int, str]:
    """How many units run at once, and why: 1 locally; a Ray run's `max_workers`, or for a local Ray
    instance this machine's GPUs (per `gpus_per_worker`) or CPUs. A cluster's size is not asked for."""
    cluster = preset.cluster
    if cluster.backend != "ray":
        return 1, ""
    if cluster.max_workers:
        return cluster.max_workers, "cluster.max_workers"
    if cluster.address:
        return 1, "the cluster's size is not looked up: set cluster.max_workers for a parallel estimate"
    gpus = visible_gpus(ask_torch=False) if preset.model.device != "cpu" else []
    if gpus:
        return max(1, int(len(gpus) / cluster.gpus_per_worker + 1e-9)), "this machine's GPUs"
    return max(1, os.cpu_count() or 1), "this machine's CPUs"


def parallel_time(units: list[tuple[float, frozenset, str]], workers: int) -> float:
    """When the last unit ends with `workers` workers taking the first ready unit in order, as the Ray
    backend does. A unit is (seconds, names it waits for, its own name or '')."""
    free = [0.0] * max(1, workers)  # when each worker is next free
    ended: dict[str, float] = {}
    waiting = list(units)
    while waiting:
        now = min(free)
        worker = free.index(now)
        ready = [u for u in waiting if all(ended.get(n, float("inf")) <= now for n in u[1])]
        if not ready:  # this worker idles until the next unit or worker ends
            later = [t for t in [*ended.values(), *free] if t > now]
            if not later:
                raise ValueError("units wait for a unit that is not there")
            free[worker] = min(later)
            continue
        seconds, _, name = ready[0]
        free[worker] = now + seconds
        if name:
            ended[name] = free[worker]
        waiting.remove(ready[0])
    return max(free)


def _load(preset: Preset, device: str):
    from engine.compute.backbone import Backbone

    return Backbone.from_preset(preset.model, device, compile=False)


def _probed_group_size(backbone, preset: Preset, plan: Plan, data, cells) -> int:
    from engine.compute.executor import Executor

    class Quiet:
        def message(self, text):
            pass

    return Executor(backbone).group_size(preset, data, cells, Quiet())


def _per_step(longer_s: float, one_s: float, extra: int) -> float:
    """Seconds per step from a run of 1 + `extra` steps and one of 1 (the difference drops the set-up); on a
    loaded machine the difference can vanish in the noise, and then the longer run's mean is the estimate."""
    difference = (longer_s - one_s) / extra
    return difference if difference > 0 else longer_s / (1 + extra)


def probe_timings(backbone, preset: Preset, plan: Plan, data, group, methods: list[str]) -> dict:
    """Seconds per group pass (a pass of `group`'s jobs, its dev evaluations spread over eval_every passes)
    and per meta-update of each method, measured with the preset's settings on a few steps."""
    import dataclasses

    from engine.experiment.units import CellWork, PromptInit
    from engine.compute.executor import Executor
    from engine.execution.grid import meta_task_keys

    executor = Executor(backbone)
    work = [CellWork(c, PromptInit("vocab", pool=preset.prompt.vocab_pool), "", "") for c in group]
    jobs = [executor._job(preset, data, w)[0] for w in work]
    from engine.compute.tuning import EvalItem, evaluate_many, prompt_tune_group

    def train(passes: int) -> float:
        started = time.perf_counter()
        prompt_tune_group(backbone, [dataclasses.replace(j, checkpoint=None, cfg=dataclasses.replace(
            j.cfg, steps=passes, eval_every=passes + 1)) for j in jobs])
        return time.perf_counter() - started

    train(1)  # warm-up: kernels, caches, allocator
    pass_s = _per_step(train(1 + PROBE_PASSES), train(1), PROBE_PASSES)
    started = time.perf_counter()
    evaluate_many(backbone, [EvalItem(j.init_prompt, j.dev, j.task, j.cfg) for j in jobs])
    eval_s = time.perf_counter() - started
    pass_s += eval_s / preset.downstream.eval_every
    update_s = {}
    if methods:
        from engine.compute.algorithms.base import MetaTask
        from engine.compute.upstream import learn_initialisation

        k = preset.data.k
        first_set = next(iter(plan.upstream_sets()))  # a meta-update costs the same on any set of the run
        tasks = [MetaTask(t, s, split.train, split.dev) for t, s in meta_task_keys(plan, data, k, first_set)
                 for split in [data.load_split(t, k, s, need_test=False, input_format=preset.data.input_format)]]
        init = executor.initial_prompt(PromptInit("vocab", pool=preset.prompt.vocab_pool), preset.prompt.length)
        for method in methods:
            def learn(n: int) -> float:
                cfg = dataclasses.replace(preset.upstream, steps=n)
                if hasattr(cfg.hyperparameters[method], "epochs"):  # MTL: a fixed number of steps here
                    cfg.hyperparameters = {**cfg.hyperparameters,
                                           method: dataclasses.replace(cfg.hyperparameters[method], epochs=0)}
                started = time.perf_counter()
                learn_initialisation(backbone, method, tasks, init, cfg, placement=preset.prompt.placement)
                return time.perf_counter() - started

            learn(1)
            update_s[method] = _per_step(learn(1 + PROBE_UPDATES), learn(1), PROBE_UPDATES)
    return {"pass_s": pass_s, "update_s": update_s}


def stored_timings(runs_root: Path, model: str, device: str, precision: str, group_size: int) -> dict:
    """Seconds per group pass and per meta-update from earlier runs' finished work with the same model,
    device name, precision and group size (medians over what matches)."""
    from engine.store.run_dir import RunsDirError, list_runs, read_json, read_record

    passes, updates, runs = [], {}, 0
    root = Path(runs_root)
    for run in list_runs(root) if root.is_dir() else []:
        status, config = run.status(), read_json(run.config_path) or {}
        if (config.get("preset", {}).get("model", {}).get("name") != model or status.get("device_name") != device
                or status.get("precision") != precision):
            continue
        used = False
        for path in run.cells_dir.glob("*.json") if run.cells_dir.is_dir() else []:
            try:
                record = read_record(path)
            except RunsDirError:  # a newer program's record: not this estimate's evidence
                record = None
            if record is not None and record.group_size == group_size and record.seconds and record.steps:
                passes.append(record.seconds / record.steps)
                used = True
        for method, rate in _upstream_rates(run).items():
            updates.setdefault(method, []).append(rate)
            used = True
        runs += used
    return {"pass_s": statistics.median(passes) if passes else None,
            "update_s": {m: statistics.median(r) for m, r in updates.items()}, "runs": runs}


def _upstream_rates(run) -> dict[str, float]:
    """Seconds per meta-update of each method, from the timestamps of its logged upstream losses."""
    points: dict[str, list[tuple[int, float]]] = {}
    for event in run.events():
        if event.get("stage") == "upstream" and "t" in event:
            method = event["method"].split("@")[0]  # a nearest:K run's "maml@<set>": the method's own rate
            points.setdefault((event["method"], method), []).append((event["step"], event["t"]))
    rates: dict[str, list[float]] = {}
    for (_, method), pts in points.items():
        (s0, t0), (s1, t1) = min(pts), max(pts)
        if s1 > s0:
            rates.setdefault(method, []).append((t1 - t0) / (s1 - s0))
    return {method: statistics.median(r) for method, r in rates.items()}


def format_duration_estimate(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    hours = seconds / 3600
    return f"{seconds:.0f} s" if seconds < 120 else (f"{seconds / 60:.0f} min" if hours < 2 else f"{hours:.1f} h")


def render(d: DryRun) -> str:
    """The dry run as the text `mpt-tui --dry-run` prints."""
    lines = [f"sources ({len(d.sources)}): {', '.join(d.sources) or '-'}"]
    if d.missing_sources:
        lines.append(f"  missing from the data: {', '.join(d.missing_sources)}")
    lines.append(f"targets ({len(d.targets)}): {', '.join(d.targets)}")
    if d.missing_targets:
        lines.append(f"  missing from the data: {', '.join(d.missing_targets)}")
    lines.append(f"splits: {', '.join(map(str, d.seeds))}")
    lines.append(f"methods: {', '.join(d.methods)}")
    if d.source_sets:
        methods = list(d.upstream_steps)
        lines.append(f"upstream: {len(d.source_sets)} distinct source sets x {len(methods)} methods = "
                     f"{len(d.source_sets) * len(methods)} upstream stages (one per method and set, nearest:K)")
        for s in d.source_sets:
            lines.append(f"  set {s['key']} ({', '.join(s['sources'])}) for {', '.join(s['targets'])}: "
                         + (", ".join(f"{m} {n}" for m, n in s["steps"].items()) + " meta-updates" if methods
                            else "no upstream method"))
    for method, n in d.upstream_steps.items():
        per_set = f" over {len(d.source_sets)} source sets" if d.source_sets else ""
        lines.append(f"upstream {method}: {n} meta-updates{per_set}")
    lines.append(f"downstream: {d.cells} grid cells, {d.cell_steps} optimizer steps, in {d.groups} groups of "
                 f"up to {d.group_size} ({d.group_passes} passes)")
    if d.analysis:
        a, parts = d.analysis, []
        if a["embedding_jobs"]:
            parts.append(f"{a['embedding_jobs']} prompt-embedding jobs in {a['embedding_groups']} groups "
                         f"({a['embedding_passes']} passes)")
        if a["text_splits"]:
            parts.append(f"text embeddings of {a['text_splits']} splits")
        took = f", ~{format_duration_estimate(a['seconds'])} of the estimate" if a["seconds"] is not None else ""
        lines.append(f"analysis after the grid: {' and '.join(parts)}{took}")
    where = d.device_name if d.device == "cpu" else f"{d.device} ({d.device_name})"
    lines.append(f"device: {where}, precision {d.precision}")
    timing = ""
    if d.timings:
        timing = f" ({d.timings['pass_s']:.3f} s per group pass" + "".join(
            f", {m} {s:.3f} s per update" for m, s in d.timings["update_s"].items()) + ")"
    lines.append(f"estimated time: {format_duration_estimate(d.estimate_s)}, from {d.estimate_from}{timing}")
    if d.workers_from:
        serial = f" ({format_duration_estimate(d.serial_s)} on one)" if d.serial_s is not None else ""
        lines.append(f"ray: {d.workers} workers at once{serial}, from {d.workers_from}")
    lines.append("nothing was written (dry run)")
    return "\n".join(lines)
