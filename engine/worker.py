"""The one entry point that runs (or resumes) whatever a run directory describes.

    python -m engine.worker <run-dir>

The headless CLI calls `execute()` in-process with a progress reporter; the app
and any queue start this module as a detached process. Either way the run's
progress reaches readers only through its directory (status.json, metrics.jsonl),
and a finished grid cell is never recomputed.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Protocol

from engine.config import preset_from_dict
from engine.devices import acquire_device, candidate_devices
from engine.protocol import Cell, Plan, grid_cells, select_and_aggregate
from engine.runs import Run, read_json, write_json_atomic
from engine.stopping import RunCancelled, StopFlag
from engine.store import RunIndex

HEARTBEAT_EVERY_S = 10.0
STATUS_EVERY_S = 2.0


class Reporter(Protocol):
    def start(self, total_steps: int, done_steps: int) -> None: ...
    def advance(self, done_steps: int, text: str) -> None: ...
    def message(self, text: str) -> None: ...


class _Silent:
    def start(self, total_steps, done_steps): pass
    def advance(self, done_steps, text): pass
    def message(self, text): pass


class StatusWriter:
    """Owns status.json for the running process; a heartbeat thread keeps it fresh."""

    def __init__(self, run: Run):
        self.run = run
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")

    def set(self, force: bool = True, **fields) -> None:
        with self._lock:
            now = time.time()
            if not force and now - self._last_write < STATUS_EVERY_S:
                return
            self._last_write = now
            self.run.update_status(heartbeat=now, **fields)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY_S):
            self.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def _logger(run: Run) -> logging.Logger:
    logger = logging.getLogger(f"mpt.run.{run.id}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = logging.FileHandler(run.log_path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def subsample(examples: list, limit: int, seed: int = 0) -> list:
    """At most `limit` examples (0: all), a seeded random subset in file order: test files may be sorted by label."""
    if not limit or len(examples) <= limit:
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def execute(run: Run, reporter: Reporter | None = None, stop: StopFlag | None = None) -> dict:
    """Run or resume the run; returns its results (per split, per task, mean).

    SIGTERM or a first Ctrl-C checkpoints the work in progress and raises RunCancelled.
    """
    reporter = reporter or _Silent()
    stop = stop or StopFlag()
    stop.install_signal_handlers()
    config = run.config()
    preset = preset_from_dict(config["preset"])
    plan = Plan(**config["plan"])
    log = _logger(run)
    status = StatusWriter(run)
    status.set(state="queued", pid=os.getpid(), host=socket.gethostname(), stage="waiting for a device", error=None)
    status.start()
    index = RunIndex(run.path.parent)
    device_lock = None
    try:
        candidates = candidate_devices(preset.model.device)
        device, device_lock = acquire_device(run.path.parent, candidates, on_wait=lambda: _check_stop(stop))
        status.set(state="running", started=time.time(), stage="setup", device=device)
        log.info("running on %s (pid %d)", device, os.getpid())
        results = _execute(run, preset, plan, device, reporter, status, log, stop)
    except (RunCancelled, KeyboardInterrupt) as exc:
        status.set(state="cancelled", finished=time.time())
        log.info("cancelled: %s", exc or "interrupted")
        index.record(run)
        raise
    except BaseException as exc:
        status.set(state="failed", finished=time.time(), error=f"{type(exc).__name__}: {exc}")
        log.exception("failed")
        index.record(run)
        raise
    finally:
        status.stop()
        if device_lock is not None:
            device_lock.release()
    status.set(state="finished", finished=time.time(), stage="done", progress=1.0)
    index.record(run)
    log.info("finished")
    return results


class Progress:
    """Steps done out of all steps of the run (upstream and downstream), with an ETA."""

    def __init__(self, total: int, done: int, status: StatusWriter, reporter: Reporter):
        self.total, self.done, self.status, self.reporter = max(total, 1), done, status, reporter
        self.started, self.session = time.time(), 0  # steps run by this process: resumed work costs nothing
        reporter.start(self.total, done)

    def step(self, text: str, **fields) -> None:
        self.done += 1
        self.session += 1
        eta = (self.total - self.done) * (time.time() - self.started) / self.session
        self.status.set(force=False, progress=self.done / self.total, eta_s=eta, **fields)
        self.reporter.advance(self.done, text)

    def skip_to(self, done: int) -> None:
        """Account for a unit of work that ended early (a NaN cell)."""
        self.done = done


def _check_stop(stop: StopFlag) -> None:
    if stop():
        raise RunCancelled("cancelled while waiting for a device")


def _execute(run: Run, preset, plan: Plan, device: str, reporter: Reporter, status: StatusWriter,
             log: logging.Logger, stop: StopFlag) -> dict:
    _quiet_libraries()
    import torch

    from engine.backbone import Backbone
    from engine.data import TaskData
    from engine.upstream import check_second_order

    log.info("loading %s on %s", preset.model.name, device)
    reporter.message(f"loading model {preset.model.name} on {device}")
    backbone = Backbone.load(preset.model.name, device=device, max_input_length=preset.model.max_input_length,
                             max_output_length=preset.model.max_output_length, progress=reporter.message,
                             compile=preset.model.compile, precision=preset.model.precision)
    if "maml" in plan.methods:
        check_second_order(backbone)  # before any training
    data = TaskData(plan.data_dir, plan.config_dir)
    down, up = preset.downstream, preset.upstream
    cells = grid_cells(plan, down.learning_rates)
    run.cells_dir.mkdir(exist_ok=True)
    done = {c.id: read_json(run.cells_dir / f"{c.id}.json") for c in cells}
    done = {k: v for k, v in done.items() if isinstance(v, dict)}
    to_learn = [m for m in plan.methods if m != "pt" and not getattr(up, m).prompt_file
                and not (run.prompts_dir / f"upstream-{m}.safetensors").is_file()]
    checkpoints = run.path / "checkpoints"
    partial = sum(_checkpoint_step(checkpoints / f"upstream-{m}.pt") for m in to_learn)
    partial += sum(_checkpoint_step(checkpoints / f"{c.id}.pt") for c in cells if c.id not in done)
    progress = Progress(len(to_learn) * up.steps + len(cells) * down.steps,
                        partial + len(done) * down.steps, status, reporter)

    inits = {m: _upstream_prompt(run, preset, plan, data, backbone, m, progress, log, stop)
             for m in plan.methods if m != "pt"}

    status.set(stage="downstream", total_cells=len(cells), done_cells=len(done))
    groups = _cell_groups(run, preset, data, backbone, cells, done, log)
    i = 0
    while i < len(groups):
        group = groups[i]
        part = [c for c in group if c.id not in done]
        work = [_cell_job(run, preset, data, backbone, cell, inits.get(cell.method)) for cell in part]
        progress_before = progress.done
        try:
            records = _run_group(run, preset, backbone, part, work, progress, log, stop) if part else []
        except torch.cuda.OutOfMemoryError:
            if len(part) == 1:
                raise
            # the memory probe was too optimistic: split the group, remember the split, go on
            del work
            torch.cuda.empty_cache()
            progress.skip_to(progress_before)  # the failed attempt's steps will be run again
            log.warning("out of GPU memory with %d cells in a group; splitting it in two", len(part))
            half = (len(group) + 1) // 2
            groups[i:i + 1] = [group[:half], group[half:]]
            _save_groups(run, groups)
            continue
        for cell, record in zip(part, records):
            done[cell.id] = record
        status.set(done_cells=len(done))
        i += 1
    results = select_and_aggregate([done[c.id] for c in cells])
    write_json_atomic(run.results_path, results)
    return results


def _checkpoint_step(path: Path) -> int:
    """The step a checkpoint (upstream or grid cell) was saved after; 0 without one."""
    if not path.is_file():
        return 0
    import torch

    return int(torch.load(path, weights_only=False)["step"])


def _upstream_prompt(run: Run, preset, plan: Plan, data, backbone, method: str, progress: Progress, log,
                     stop: StopFlag):
    """The learned initialisation of `method`: reused from a file, from this run, or learned now."""
    from engine.algorithms.base import MetaTask
    from engine.prompt import initial_prompt, load_prompt, save_prompt
    from engine.upstream import learn_initialisation

    up = preset.upstream
    reuse = getattr(up, method).prompt_file
    if reuse:
        log.info("upstream %s: reusing %s", method, reuse)
        return load_prompt(Path(reuse), expected_dim=backbone.hidden_size, expected_length=preset.prompt.length)[0]
    final = run.prompts_dir / f"upstream-{method}.safetensors"
    if final.is_file():
        return load_prompt(final, expected_dim=backbone.hidden_size)[0]
    tasks = [MetaTask(t, s, split.train, split.dev)
             for t in plan.sources for s in data.seeds(t, preset.data.k) if s in plan.seeds
             for split in [data.load_split(t, preset.data.k, s, need_test=False)]]
    # no single task name upstream: the task-name init falls back to sampled vocabulary
    init_method = "vocab" if preset.prompt.init == "task_name" else preset.prompt.init
    init = initial_prompt(backbone, length=preset.prompt.length, method=init_method,
                          file=preset.prompt.file or None, seed=up.seed)
    log.info("upstream %s: %d meta-tasks from %d source tasks", method, len(tasks), len(plan.sources))
    progress.status.set(stage=f"upstream:{method}")

    def on_step(step: int, loss: float) -> None:
        if step % up.log_every == 0 or step == up.steps:
            run.append_event({"stage": "upstream", "method": method, "step": step, "loss": loss})
        progress.step(f"upstream {method} step {step}/{up.steps} loss {loss:.3f}", cell=f"upstream:{method}")

    result = learn_initialisation(backbone, method, tasks, init, up, placement=preset.prompt.placement,
                                  checkpoint=run.path / "checkpoints" / f"upstream-{method}.pt", on_step=on_step,
                                  should_stop=stop)
    save_prompt(final, result.prompt, model=preset.model.name, extra={"method": method, "steps": str(result.steps)})
    log.info("upstream %s: done, last loss %.4f", method, result.last_loss)
    return result.prompt


def _cell_job(run: Run, preset, data, backbone, cell: Cell, learned_init) -> tuple:
    """The prompt-tuning job of one grid cell, from its method's initialisation, and its test examples."""
    from engine.prompt import initial_prompt
    from engine.tuning import Job, TuningConfig

    down = preset.downstream
    split = data.load_split(cell.task, preset.data.k, cell.seed)
    seed = down.train_seed + cell.seed
    if learned_init is None:  # PT: the plain initialisation
        init = initial_prompt(backbone, length=preset.prompt.length, method=preset.prompt.init,
                              task_name=cell.task, file=preset.prompt.file or None, seed=seed)
    else:
        init = learned_init
    tcfg = TuningConfig(learning_rate=cell.lr, steps=down.steps, batch_size=down.batch_size,
                        optimizer=down.optimizer, eval_every=down.eval_every,
                        eval_batch_size=down.eval_batch_size, prediction=down.prediction,
                        max_new_tokens=down.max_new_tokens, grad_clip=down.grad_clip,
                        weight_decay=down.weight_decay, placement=preset.prompt.placement)
    job = Job(init, split.train, split.dev, data.task_info(cell.task), tcfg, seed,
              checkpoint=run.path / "checkpoints" / f"{cell.id}.pt")
    return job, subsample(split.test, down.max_test_examples)


def _cell_groups(run: Run, preset, data, backbone, cells: list[Cell], done: dict, log) -> list[list[Cell]]:
    """All grid cells in the groups they train in: consecutive pending cells, `size` at a time.

    The grouping is stored in the run directory (groups.json) the first time, and a resumed run
    keeps it: a group's float rounding depends on its members, so regrouping (say, because a GPU
    has less free memory today) would change the numbers of the cells still to come. Delete
    groups.json to regroup.
    """
    by_id = {c.id: c for c in cells}
    stored = read_json(run.path / "groups.json")
    if isinstance(stored, list) and sorted(i for g in stored for i in g) == sorted(by_id):
        return [[by_id[i] for i in g] for g in stored]
    pending = [c for c in cells if c.id not in done]
    size = _group_size(preset, data, backbone, pending, log) if pending else 1
    groups = [[c] for c in cells if c.id in done] + [pending[i:i + size] for i in range(0, len(pending), size)]
    _save_groups(run, groups)
    return groups


def _save_groups(run: Run, groups: list[list[Cell]]) -> None:
    write_json_atomic(run.path / "groups.json", [[c.id for c in g] for g in groups])


CPU_GROUP_SIZE = 8  # on CPU a bigger pass gains little (bench/speed.py) and delays each cell's result


def _group_size(preset, data, backbone, pending: list[Cell], log) -> int:
    """How many grid cells train together: `downstream.group_size`, or what the memory budget allows."""
    down = preset.downstream
    if down.group_size:
        return min(down.group_size, len(pending))
    if backbone.device.type != "cuda":
        return min(CPU_GROUP_SIZE, len(pending))
    from engine.prompt import initial_prompt
    from engine.tuning import group_size_that_fits

    # the probe's batch: the longest train examples of any pending cell
    splits = {(c.task, c.seed) for c in pending}
    examples = [e for task, seed in splits for e in data.load_split(task, preset.data.k, seed).train]
    prompt = initial_prompt(backbone, length=preset.prompt.length, method="vocab", seed=0)
    fits, probe = group_size_that_fits(backbone, examples, down.batch_size, prompt, preset.prompt.placement,
                                       down.group_memory_fraction)
    size = min(len(pending), fits)
    log.info("group size %d: %.0f MiB per job + %.0f MiB fixed, %.0f MiB free", size, probe["per_job_mib"],
             probe["fixed_mib"], probe["free_mib"])
    return size


def _run_group(run: Run, preset, backbone, cells: list[Cell], work: list[tuple], progress: Progress, log,
               stop: StopFlag) -> list[dict]:
    """Prompt-tune a group of grid cells together, test each one's best prompt, store their records."""
    from engine.prompt import save_prompt
    from engine.tuning import EvalItem, evaluate_many, prompt_tune_group

    down = preset.downstream
    jobs, tests = [job for job, _ in work], [test for _, test in work]
    started = time.time()
    resumed = [_checkpoint_step(job.checkpoint) for job in jobs]
    base = progress.done - sum(resumed)
    log.info("group of %d cells: %s", len(cells), ", ".join(
        f"{c.id}" + (f" (resuming after step {r})" if r else "") for c, r in zip(cells, resumed)))
    labels = [f"{c.method} {c.task} seed {c.seed} lr {c.lr:g}" for c in cells]

    def on_step(j: int, step: int, loss: float) -> None:
        if step % down.log_every == 0 or step == down.steps:
            run.append_event({"stage": "downstream", "cell": cells[j].id, "step": step, "loss": loss})
        progress.step(f"[{len(cells)} cells] {labels[j]} loss {loss:.3f}", cell=cells[j].id)

    def on_eval(j: int, step: int, score: float) -> None:
        run.append_event({"stage": "downstream", "cell": cells[j].id, "step": step, "dev": score})
        log.info("cell %s step %d dev %.4f", cells[j].id, step, score)

    results = prompt_tune_group(backbone, jobs, on_step=on_step, on_eval=on_eval, should_stop=stop)
    progress.skip_to(base + len(jobs) * down.steps)  # jobs that stopped early (NaN) count as done
    evaluations = evaluate_many(backbone, [EvalItem(r.best_prompt, test, job.task, job.cfg)
                                           for r, job, test in zip(results, jobs, tests)])
    seconds = round(time.time() - started, 2)
    records = []
    for cell, job, result, evaluation in zip(cells, jobs, results, evaluations):
        prompt_file = save_prompt(run.prompts_dir / f"{cell.id}.safetensors", result.best_prompt,
                                  model=preset.model.name, extra={"task": cell.task, "seed": str(cell.seed)})
        record = {"method": cell.method, "task": cell.task, "seed": cell.seed, "lr": cell.lr,
                  "metric": evaluation.metric, "dev": result.best_dev, "test": evaluation.score,
                  "best_step": result.best_step, "dev_history": result.dev_history,
                  "final_loss": result.final_loss, "stopped": result.stopped,
                  "seconds": seconds, "group_size": len(cells),
                  "prompt": str(prompt_file.relative_to(run.path))}
        write_json_atomic(run.cells_dir / f"{cell.id}.json", record)  # written last: the cell is done
        job.checkpoint.unlink(missing_ok=True)
        run.append_event({"stage": "downstream", "cell": cell.id, "event": "cell_done",
                          "dev": result.best_dev, "test": evaluation.score})
        log.info("cell %s: dev %.4f test %.4f (%s)", cell.id, result.best_dev, evaluation.score, evaluation.metric)
        records.append(record)
    log.info("group of %d cells done in %.1fs", len(cells), seconds)
    return records


def _redirect_output_to(log_path: Path) -> None:
    """A detached worker must never write to a terminal: send fds 1 and 2 (C libraries too) to the log."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m engine.worker RUN_DIR", file=sys.stderr)
        return 2
    run = Run(Path(argv[0]).resolve())
    _redirect_output_to(run.log_path)
    try:
        execute(run)
    except (RunCancelled, KeyboardInterrupt):
        return 130
    except Exception as exc:  # already recorded in status.json and the log
        print(f"run {run.id} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
