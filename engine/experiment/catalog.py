"""What a data directory offers, torch-free: each task's type, its splits and whether it has test files.

For pickers (the app's Launch form): `task_catalog(data, k)` lists every task of a
`TaskData` with its type (from its config, or its files: see `TaskData.task_info`), the
split seeds that have a k-shot train file, and whether it has a k-shot test file (a task
without one can serve as a source only). `setting_tasks` resolves a setting name (a
data-directory setting or the authors' "qin2023:<name>") to its source and target lists
as far as the data has them.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.experiment.data import TaskData, TaskDataError


@dataclass(frozen=True)
class TaskEntry:
    name: str
    task_type: str  # classification, multi-choice, free-form; "?" when its files or config cannot be read
    seeds: tuple[int, ...]  # split seeds with a k-shot train file
    has_test: bool  # a k-shot test file exists: it can be a target

    @property
    def short_type(self) -> str:
        return {"classification": "class", "multi-choice": "mc", "free-form": "free"}.get(self.task_type, "?")


def task_catalog(data: TaskData, k: int) -> list[TaskEntry]:
    entries = []
    for task in data.tasks():
        try:
            task_type = data.task_info(task).task_type
        except (TaskDataError, OSError):
            task_type = "?"
        entries.append(TaskEntry(task, task_type, tuple(data.seeds(task, k)), data.has_test(task, k)))
    return entries


def setting_tasks(data: TaskData, setting: str) -> tuple[list[str], list[str]]:
    """(sources, targets) of a setting, only the tasks the data has; ([], []) for no setting or an unknown one."""
    from engine.experiment.config import PresetError
    from engine.experiment.plan import PAPER_SETTING_PREFIX, load_paper_setting

    if not setting:
        return [], []
    try:
        if setting.startswith(PAPER_SETTING_PREFIX):
            paper = load_paper_setting(setting)
            sources, targets = paper.sources, paper.targets
        else:
            found = data.load_setting(setting)
            sources, targets = found.source, found.target
    except (PresetError, TaskDataError, OSError):
        return [], []
    return [t for t in sources if data.has_task(t)], [t for t in targets if data.has_task(t)]
