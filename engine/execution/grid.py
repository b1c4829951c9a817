"""The grid stage: a run's upstream initialisations and grid cells, written down as a `Schedule`.

`run_grid` submits the upstream units (one per method and source set still to learn), then the cell
groups through the shared stage path (engine.execution.stage: stored groups, records stored as each
group ends, a group out of GPU memory halved), each group waiting only for the initialisations its
cells start from (their method on their target's source set; PT groups wait for nothing); then the
paper's selection and aggregation. The backend runs the schedule (engine.execution.schedule); the
process that runs `run_grid` alone writes the run's records.
"""

from __future__ import annotations

from engine.base import faults
from engine.execution.schedule import GridEvents, Schedule, Scheduled, as_backend
from engine.execution.stage import submit_groups
from engine.experiment.config import Preset, job_steps
from engine.experiment.data import TaskData
from engine.experiment.methods import PT
from engine.experiment.plan import Cell, Plan, grid_cells, select_and_aggregate
from engine.experiment.records import CellRecord
from engine.experiment.units import CellWork, LearnInit, PromptInit, TrainCells, upstream_label
from engine.store.checkpoint import remove_checkpoint, resume_step, saved_step
from engine.store.run_dir import Run, write_results


def meta_task_keys(plan: Plan, data: TaskData, k: int, source_set: str = "") -> list[tuple[str, int]]:
    """The upstream meta-tasks of a source set: every (source task, split seed) of it that the data has."""
    return [(t, s) for t in plan.upstream_sets()[source_set] for s in data.seeds(t, k) if s in plan.seeds]


def upstream_unit(run: Run, preset: Preset, plan: Plan, method: str, source_set: str = "") -> LearnInit:
    """The unit that learns `method`'s initialisation on a source set of the plan (every listed seed of each)."""
    meta_tasks = meta_task_keys(plan, TaskData(plan.data_dir, plan.config_dir), preset.data.k, source_set)
    # upstream, the task-name init reads every source name (the authors' rule); task_words has no one name
    init_method = "vocab" if preset.prompt.init == "task_words" else preset.prompt.init
    init = PromptInit(init_method, file=preset.prompt.file, task_names=plan.upstream_sets()[source_set],
                      seed=preset.upstream.seed, pool=preset.prompt.vocab_pool)
    return LearnInit(method, preset.to_dict(), plan.data_dir, plan.config_dir, meta_tasks, init,
                     str(run.upstream_checkpoint(method, source_set)), str(run.upstream_prompt(method, source_set)),
                     source_set)


def upstream_name(method: str, source_set: str = "") -> str:
    """A learned initialisation's unit name in a schedule (and the stage status.json shows while it runs)."""
    return f"upstream:{upstream_label(method, source_set)}"


def cell_init(run: Run, preset: Preset, plan: Plan, cell: Cell) -> PromptInit:
    """PT starts from the plain initialisation; every other method from its learned (or reused) prompt,
    learned on the cell's target's source set."""
    if cell.method == PT:
        return PromptInit(preset.prompt.init, file=preset.prompt.file, task_names=[cell.task],
                          seed=preset.downstream.train_seed + cell.seed, pool=preset.prompt.vocab_pool)
    reuse = preset.upstream.hyperparameters[cell.method].prompt_file
    return PromptInit("file", file=reuse or str(run.upstream_prompt(cell.method, plan.set_key(cell.task))))


def cells_unit(run: Run, preset: Preset, plan: Plan, cells: list[Cell]) -> TrainCells:
    work = [CellWork(c, cell_init(run, preset, plan, c), str(run.cell_checkpoint(c.id)), str(run.cell_prompt(c.id)))
            for c in cells]
    return TrainCells(preset.to_dict(), plan.data_dir, plan.config_dir, work)


def upstream_to_learn(run: Run, preset: Preset, plan: Plan) -> list[tuple[str, str]]:
    """(method, source set) of each upstream initialisation neither reused from a file nor already learned
    by this run: one per method and distinct source set."""
    return [(m, key) for m in plan.methods if m != PT and not preset.upstream.hyperparameters[m].prompt_file
            for key in plan.upstream_sets() if not run.upstream_prompt(m, key).is_file()]


def needed_upstream(plan: Plan, cell: Cell) -> tuple[str, str]:
    """The (method, source set) whose initialisation `cell` starts from."""
    return cell.method, plan.set_key(cell.task)



def upstream_steps(preset: Preset, plan: Plan, data: TaskData, method: str, source_set: str = "") -> int:
    """The outer updates `method` makes on a source set (MTL with `epochs` counts passes over its pool)."""
    k = preset.data.k
    sizes = [(len(split.train), len(split.dev)) for t, s in meta_task_keys(plan, data, k, source_set)
             for split in [data.load_split(t, k, s, need_test=False)]]
    return preset.upstream.hyperparameters[method].outer_steps(preset.upstream.steps, sizes)


def cell_steps(preset: Preset, data: TaskData, cells: list[Cell]) -> dict[str, int]:
    """Each cell's optimizer steps (`downstream.steps`, or fewer under `max_epochs`)."""
    down = preset.downstream
    n_train = {(c.task, c.seed): len(data.load_split(c.task, preset.data.k, c.seed, need_test=False).train)
               for c in cells} if down.max_epochs else {}
    return {c.id: job_steps(down.steps, down.max_epochs, n_train.get((c.task, c.seed), 0), down.batch_size)
            for c in cells}



def run_grid(run: Run, preset: Preset, plan: Plan, backend, events: GridEvents) -> dict:
    """Run or resume every unit of the run; store each finished cell; return (and store) the results."""
    backend = as_backend(backend)
    up = preset.upstream
    cells = grid_cells(plan, preset.downstream.learning_rates)
    done = run.finished_cell_records([c.id for c in cells])
    to_learn = upstream_to_learn(run, preset, plan)

    data = TaskData(plan.data_dir, plan.config_dir)
    method_steps = {u: upstream_steps(preset, plan, data, *u) for u in to_learn}
    steps_of_cell = cell_steps(preset, data, cells)

    def steps_done() -> int:
        """Finished work plus what the checkpoints hold, from the run directory (a few small files)."""
        learned = [u for u in to_learn if run.upstream_prompt(*u).is_file()]
        return (sum(method_steps[u] for u in learned) + sum(steps_of_cell[c] for c in done)
                + sum(saved_step(run.upstream_checkpoint(*u)) for u in to_learn if u not in learned)
                + sum(resume_step(run.cell_checkpoint(c.id)) for c in cells if c.id not in done))

    def recount() -> None:
        events.progress_to(steps_done())  # early-stopped jobs, steps past a checkpoint that run again

    events.begin(sum(method_steps.values()) + sum(steps_of_cell.values()), steps_done())
    for method in plan.methods:
        if method != PT and up.hyperparameters[method].prompt_file:
            events.message(f"upstream {method}: reusing {up.hyperparameters[method].prompt_file}")
    schedule = Schedule()
    for method, key in to_learn:
        name = upstream_name(method, key)
        schedule.submit(Scheduled(name, upstream_unit(run, preset, plan, method, key),
                                  on_start=lambda n=name: events.stage(n),
                                  on_done=lambda result: recount(), on_retry=recount))

    def store(cell: Cell, record: CellRecord) -> None:
        faults.point("grid.record")
        record.prompt = str(run.cell_prompt(cell.id).relative_to(run.path))
        run.save_cell_record(cell.id, record)
        remove_checkpoint(run.cell_checkpoint(cell.id))
        run.log_cell_done(cell.id, record.dev, record.test)
        events.message(f"cell {cell.id}: dev {record.dev:.4f} test {record.test:.4f} ({record.metric})")

    def changed() -> None:
        recount()
        events.stage("downstream", done_cells=len(done))

    def needs(part: list[Cell]) -> frozenset[str]:
        """Its cells' (method, target's source set) initialisations still to learn; PT: none."""
        return frozenset(upstream_name(*needed_upstream(plan, c)) for c in part
                         if needed_upstream(plan, c) in to_learn)

    submit_groups(schedule, cells, done, run.groups_path,
                  size_of=lambda pending: backend.group_size(preset, data, pending, events),
                  unit_of=lambda part: cells_unit(run, preset, plan, part), store=store, events=events,
                  needs_of=needs, on_change=changed,
                  on_start=lambda name: events.stage("downstream", total_cells=len(cells), done_cells=len(done)))
    backend.run(schedule, events)
    return write_results(run.results_path, select_and_aggregate([done[c.id] for c in cells]))
