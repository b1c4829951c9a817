"""Launch: a preset as a form; start it in the background, or save it as a new preset file.

The form only gathers `--set` overrides; everything else is the engine's, as for
the CLI: `engine.prepare.check_preset` refuses what would not run (a bad value, an
unknown model, a prompt file that does not fit) with the one-line reason shown in
the form, `prepare_run` writes the run directory and `engine.launch.launch` starts
it; `engine.config.save_preset` writes a preset file. Starting (which may ask the
model hub) and scanning the data directory for the task picker run in workers.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Label, Select, SelectionList
from textual.worker import Worker

from engine.config import DATA_DIR_ENV, PresetError, find_preset, list_builtin_presets, override, save_preset
from engine.launch import launch
from engine.methods import METHODS
from engine.prepare import check_preset, prepare_run
from engine.runs import RunsDirError
from engine.tomlcompat import tomllib
from mpt_tui.messages import LaunchDone, ReportWorkerErrors, TasksLoaded, deliver

# (field id, preset key, label, kind): kind "list" fields are comma-separated in the form
FIELDS = [
    ("model", "model.name", "model (directory, hub name, or smollm2-135m)", "str"),
    ("device", "model.device", "device: auto (any free GPU, else CPU), cpu, cuda:0, or a list: cuda:0,cuda:1", "str"),
    ("setting", "data.setting", "setting (name or file)", "str"),
    ("sources", "data.sources", "source tasks (comma-separated; empty: the setting's)", "list-str"),
    ("targets", "data.targets", "target tasks (comma-separated; empty: the setting's)", "list-str"),
    ("seeds", "data.seeds", "split seeds", "list-int"),
    ("length", "prompt.length", "prompt length", "int"),
    ("lrs", "downstream.learning_rates", "downstream learning rates", "list-float"),
    ("steps", "downstream.steps", "downstream steps", "int"),
    ("up_steps", "upstream.steps", "upstream meta-updates", "int"),
]


def _number(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        return text  # as typed: the preset check refuses it, naming the key


def field_value(text: str, kind: str):
    """A form field's text as the preset value it stands for."""
    if kind == "str":
        return text
    if kind == "int":
        return _number(text, int)
    items = [t.strip() for t in text.split(",") if t.strip()]
    if kind == "list-str":
        return items
    return [_number(t, int if kind == "list-int" else float) for t in items]


class LaunchScreen(ReportWorkerErrors, Screen):
    BINDINGS = [
        Binding("ctrl+s", "start", "Start run", id="start", tooltip="check the form and start the run in the background"),
        Binding("ctrl+w", "save", "Save preset", id="save", tooltip="save the form as a preset file (save as)"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="launch-form"):
            yield Label("preset")
            yield Select([(name, name) for name in list_builtin_presets()], value="demo", allow_blank=False,
                         id="preset")
            yield Label("data directory (empty: the preset's, or $" + DATA_DIR_ENV + ")")
            yield Input(id="data_dir")
            for field_id, _, text, _ in FIELDS:
                yield Label(text)
                yield Input(id=field_id)
            yield Label("build the task lists: pick which list to edit, type to filter, space toggles a task")
            with Horizontal(id="task-picker-bar"):
                yield Select([("targets", "targets"), ("sources", "sources")], value="targets",
                             allow_blank=False, id="pick-role")
                yield Input(placeholder="filter tasks", id="task-filter")
            yield SelectionList(id="task-list")
            yield Label("upstream algorithms (PT always runs)")
            yield SelectionList(*[(method.label, name) for name, method in METHODS.items()], id="methods")
            yield Label("save as (preset file path)")
            yield Input(placeholder="my-preset.toml", id="save_path")
            yield Label("", id="form-error")
            with Horizontal(id="launch-buttons"):
                yield Button("Start (ctrl+s)", variant="primary", id="start")
                yield Button("Save preset (ctrl+w)", id="save")
        yield Footer()

    def on_mount(self) -> None:
        self.tasks: list[str] = []
        self.tasks_for: str | None = None  # the data directory `tasks` were read from
        self.scanning: str | None = None  # the data directory being read now
        self.starting: Worker | None = None
        self.query_one("#data_dir", Input).value = self.app.data_dir or os.environ.get(DATA_DIR_ENV, "")
        self.fill_from_preset("demo")

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "preset" and event.value is not Select.BLANK:
            self.fill_from_preset(str(event.value))
        elif event.select.id == "pick-role":
            self.show_tasks()

    # ---- the task picker: the data directory is scanned in a worker ----------------------

    def data_dir_to_scan(self) -> str | None:
        """The form's data directory, else the preset's own (relative to the preset file)."""
        data_dir = self.query_one("#data_dir", Input).value.strip()
        if data_dir:
            return data_dir
        relative = self.base_raw.get("data", {}).get("dir")
        if not relative:
            return None
        return str(find_preset(str(self.query_one("#preset", Select).value)).parent / relative)

    @work(thread=True, exclusive=True, group="scan-tasks", exit_on_error=False)
    def scan_tasks(self, data_dir: str) -> None:
        from engine.data import TaskData, TaskDataError

        try:
            tasks = TaskData(Path(data_dir).expanduser()).tasks()
        except (TaskDataError, OSError):
            tasks = []
        deliver(self, TasksLoaded(data_dir, tasks))

    def on_tasks_loaded(self, message: TasksLoaded) -> None:
        self.tasks, self.tasks_for = message.tasks, message.data_dir
        self.scanning = None
        self.show_tasks()

    def role_tasks(self) -> list[str]:
        field_id = str(self.query_one("#pick-role", Select).value)
        return [t.strip() for t in self.query_one(f"#{field_id}", Input).value.split(",") if t.strip()]

    def show_tasks(self) -> None:
        """The known tasks, filtered; a data directory not scanned yet is scanned first."""
        data_dir = self.data_dir_to_scan()
        if data_dir is None:
            self.tasks, self.tasks_for = [], None
        elif data_dir != self.tasks_for:
            if data_dir != self.scanning:
                self.scanning = data_dir
                self.scan_tasks(data_dir)  # shows the tasks when it is done
            return
        needle = self.query_one("#task-filter", Input).value.strip().lower()
        chosen = set(self.role_tasks())
        listing = self.query_one("#task-list", SelectionList)
        listing.clear_options()
        listing.add_options([(t, t, t in chosen) for t in self.tasks if needle in t.lower()])

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id in ("task-filter", "data_dir"):
            self.show_tasks()

    def on_selection_list_selection_toggled(self, event: SelectionList.SelectionToggled) -> None:
        if event.selection_list.id != "task-list":
            return
        task = event.selection.value
        tasks = self.role_tasks()
        tasks = [t for t in tasks if t != task] if task in tasks else tasks + [task]
        field_id = str(self.query_one("#pick-role", Select).value)
        self.query_one(f"#{field_id}", Input).value = ", ".join(tasks)

    def fill_from_preset(self, name: str) -> None:
        raw = tomllib.loads(find_preset(name).read_text(encoding="utf-8"))
        self.base_raw = raw
        for field_id, key, _, kind in FIELDS:
            section, item = key.split(".")
            value = raw.get(section, {}).get(item)
            if value is None:
                value = ""
            elif kind.startswith("list"):
                value = ", ".join(str(v) for v in value)
            self.query_one(f"#{field_id}", Input).value = str(value)
        methods = self.query_one("#methods", SelectionList)
        methods.deselect_all()
        for m in raw.get("upstream", {}).get("methods", []):
            methods.select(m)
        self.show_error("")
        self.show_tasks()

    # ---- the form as --set overrides; the engine checks, writes and starts ----------------

    def overrides(self) -> list[str]:
        sets = [override(key, field_value(self.query_one(f"#{field_id}", Input).value.strip(), kind))
                for field_id, key, _, kind in FIELDS]
        selected = self.query_one("#methods", SelectionList).selected
        sets.append(override("upstream.methods", [m for m in METHODS if m in selected]))
        return sets

    def preset_args(self) -> tuple[str, list[str], str | None]:
        """(preset name, overrides, data directory) as `check_preset` and `save_preset` take them."""
        return (str(self.query_one("#preset", Select).value), self.overrides(),
                self.query_one("#data_dir", Input).value.strip() or None)

    def show_error(self, text: str) -> None:
        self.query_one("#form-error", Label).update(f"[red]{escape(text)}[/red]" if text else "")

    def action_start(self) -> None:
        if self.starting is not None and not self.starting.is_finished:
            self.notify("already starting a run", severity="warning")
            return
        self.query_one("#form-error", Label).update("checking the preset…")
        self.starting = self.start_run(*self.preset_args())

    @work(thread=True, group="start-run", exit_on_error=False)
    def start_run(self, name: str, overrides: list[str], data_dir: str | None) -> None:
        """The CLI's path: check (model, prompt files, data), write the run directory, start its worker."""
        try:
            prepared = check_preset(name, overrides, data_dir)
            run = prepare_run(self.app.runs_root, prepared)
        except (PresetError, RunsDirError) as exc:
            self.post_message(LaunchDone(error=str(exc)))
            return
        launch(run)
        self.post_message(LaunchDone(run.id, prepared.plan.warnings))

    def on_launch_done(self, message: LaunchDone) -> None:
        if message.error:
            self.show_error(message.error)
            return
        self.show_error("")
        for warning in message.warnings:
            self.notify(warning, severity="warning", timeout=10)
        self.notify(f"started {message.run_id} in the background")
        self.app.switch_mode("runs")

    def action_save(self) -> None:
        target = self.query_one("#save_path", Input).value.strip()
        if not target:
            self.show_error("save as: give a preset file path")
            return
        name, overrides, data_dir = self.preset_args()
        try:
            path = save_preset(Path(target), name, overrides, data_dir)
        except PresetError as exc:  # an invalid preset is refused, with the reason
            self.show_error(str(exc))
            return
        self.show_error("")
        self.notify(f"saved {path}")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self.action_start()
        elif event.button.id == "save":
            self.action_save()
