"""What the app's background workers hand to the UI thread.

Reading run directories, the run index and the data directory happens in Textual
thread workers (`@work(thread=True, ...)`), never on the UI thread: a slow disk or
an index lock held by another process must not freeze the keys. A worker posts
one of these messages to its screen (`post_message` is thread-safe) and the
screen's `on_<message>` handler, on the UI thread, updates the widgets. A worker
that was superseded (a newer one of its exclusive group started, the screen
closed) posts nothing: see `deliver`.

A worker that fails unexpectedly is reported by the one handler in
`ReportWorkerErrors`, which every screen with workers (and the app) mixes in.
"""

from __future__ import annotations

import time

from textual.message import Message
from textual.worker import NoActiveWorker, Worker, WorkerState, get_current_worker


def deliver(node, message: Message) -> bool:
    """Post `message` to `node` from a worker thread, unless the worker was cancelled meanwhile."""
    try:
        if get_current_worker().is_cancelled:
            return False
    except NoActiveWorker:  # a direct call (a test, the bench)
        pass
    return node.post_message(message)


class ReportWorkerErrors:
    """The one handler for worker errors: the error is shown in the app, which keeps running.

    Workers are started with `exit_on_error=False`; `Worker.StateChanged` does not
    bubble, so each node that starts workers mixes this in.
    """

    REPEAT_AFTER_S = 30.0  # a timer's worker failing on each tick is shown once, not four times a second

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state is not WorkerState.ERROR:
            return
        error, what = event.worker.error, event.worker.group or event.worker.name
        text = f"{type(error).__name__}: {error}"
        shown = self.__dict__.setdefault("_worker_errors_shown", {})
        now = time.monotonic()
        if now - shown.get((what, text), -self.REPEAT_AFTER_S) < self.REPEAT_AFTER_S:
            return
        shown[(what, text)] = now
        self.app.notify(text, title=f"{what} failed", severity="error", timeout=10)


class RunsRefreshed(Message):
    """The run directories were read (`RunWatcher.refresh`): the views, newest first."""

    def __init__(self, views: list) -> None:
        super().__init__()
        self.views = views


class IndexLoaded(Message):
    """The run index was read: the summaries of the finished runs."""

    def __init__(self, summaries: list[dict]) -> None:
        super().__init__()
        self.summaries = summaries


class CatalogLoaded(Message):
    """A data directory's tasks (engine.experiment.catalog.TaskEntry list; empty when there is none) and a setting's lists."""

    def __init__(self, data_dir: str, setting: str, entries: list, setting_lists: tuple[list[str], list[str]]) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.setting = setting
        self.entries = entries
        self.setting_lists = setting_lists


class PlanComputed(Message):
    """The Launch form's plan line (or the preset's one-line error) and the plan's warnings."""

    def __init__(self, text: str = "", error: str | None = None, warnings: list[str] = ()) -> None:
        super().__init__()
        self.text = text
        self.error = error
        self.warnings = list(warnings)


class LaunchDone(Message):
    """The Launch form's start: the run id started, or the one-line reason it was refused."""

    def __init__(self, run_id: str | None = None, warnings: list[str] = (), error: str | None = None) -> None:
        super().__init__()
        self.run_id = run_id
        self.warnings = list(warnings)
        self.error = error


class RunDeleted(Message):
    """A run was deleted (or the reason it was not)."""

    def __init__(self, run_id: str, error: str | None = None) -> None:
        super().__init__()
        self.run_id = run_id
        self.error = error


class IndexBusy(Message):
    """Another process holds the run index's lock: the reader waits (the UI does not)."""

    def __init__(self, lock_file: str) -> None:
        super().__init__()
        self.lock_file = lock_file


class AnalysisLoaded(Message):
    """The runs (id, name, state, has analysis.json), the run shown, and its analysis.json (None: absent)."""

    def __init__(self, runs: list[tuple], run_id: str | None, analysis: dict | None) -> None:
        super().__init__()
        self.runs = runs
        self.run_id = run_id
        self.analysis = analysis
