"""Launch: a preset as a form; start it in the background, or save it as a new preset file."""

from __future__ import annotations

import os
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Label, Select, SelectionList

from engine.config import DATA_DIR_ENV, PresetError, find_preset, list_builtin_presets, load_preset
from engine.launch import launch
from engine.protocol import make_plan
from engine.runs import RunsDirError, create_run
from engine.tomlcompat import tomllib
from mpt_tui.headless import METHOD_LABELS

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
UPSTREAM_METHODS = ("mtl", "maml", "fomaml", "reptile")


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def to_toml(raw: dict, prefix: str = "") -> str:
    """A preset dict as TOML (scalars and lists in tables, nested tables after)."""
    lines = [f"{k} = {toml_value(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for key, value in raw.items():
        if isinstance(value, dict):
            lines += ["", f"[{prefix}{key}]", to_toml(value, f"{prefix}{key}.")]
    return "\n".join(line for line in lines if line is not None).strip() + "\n"


class LaunchScreen(Screen):
    BINDINGS = [
        Binding("ctrl+s", "start", "Start run", id="start"),
        Binding("ctrl+w", "save", "Save preset", id="save"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="launch-form"):
            yield Label("preset")
            yield Select([(name, name) for name in list_builtin_presets()], value="demo", allow_blank=False,
                         id="preset")
            yield Label("data directory (empty: the preset's, or $" + DATA_DIR_ENV + ")")
            yield Input(id="data_dir")
            for field_id, _, label, _ in FIELDS:
                yield Label(label)
                yield Input(id=field_id)
            yield Label("build the task lists: pick which list to edit, type to filter, space toggles a task")
            with Horizontal(id="task-picker-bar"):
                yield Select([("targets", "targets"), ("sources", "sources")], value="targets",
                             allow_blank=False, id="pick-role")
                yield Input(placeholder="filter tasks", id="task-filter")
            yield SelectionList(id="task-list")
            yield Label("upstream algorithms (PT always runs)")
            yield SelectionList(*[(METHOD_LABELS[m], m) for m in UPSTREAM_METHODS], id="methods")
            yield Label("save as (preset file path)")
            yield Input(placeholder="my-preset.toml", id="save_path")
            yield Label("", id="form-error")
            with Horizontal(id="launch-buttons"):
                yield Button("Start (ctrl+s)", variant="primary", id="start")
                yield Button("Save preset (ctrl+w)", id="save")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#data_dir", Input).value = self.app.data_dir or os.environ.get(DATA_DIR_ENV, "")
        self.fill_from_preset("demo")

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "preset" and event.value is not Select.BLANK:
            self.fill_from_preset(str(event.value))
        elif event.select.id == "pick-role":
            self.show_tasks()

    # ---- the task picker ---------------------------------------------------------------

    def available_tasks(self) -> list[str]:
        """Tasks of the form's data directory (or the preset's), [] when there is none."""
        from engine.data import TaskData, TaskDataError

        data_dir = self.query_one("#data_dir", Input).value.strip()
        if not data_dir:
            relative = self.base_raw.get("data", {}).get("dir")
            if not relative:
                return []
            data_dir = str(find_preset(str(self.query_one("#preset", Select).value)).parent / relative)
        if getattr(self, "_tasks_for", None) != data_dir:
            try:
                self._tasks = TaskData(Path(data_dir).expanduser()).tasks()
            except TaskDataError:
                self._tasks = []
            self._tasks_for = data_dir
        return self._tasks

    def role_tasks(self) -> list[str]:
        field_id = str(self.query_one("#pick-role", Select).value)
        return [t.strip() for t in self.query_one(f"#{field_id}", Input).value.split(",") if t.strip()]

    def show_tasks(self) -> None:
        needle = self.query_one("#task-filter", Input).value.strip().lower()
        chosen = set(self.role_tasks())
        listing = self.query_one("#task-list", SelectionList)
        listing.clear_options()
        listing.add_options([(t, t, t in chosen) for t in self.available_tasks() if needle in t.lower()])

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
        self.query_one("#form-error", Label).update("")
        self.show_tasks()

    # ---- the form as --set overrides ---------------------------------------------------

    def overrides(self) -> list[str]:
        sets = []
        for field_id, key, _, kind in FIELDS:
            text = self.query_one(f"#{field_id}", Input).value.strip()
            if kind == "str":
                sets.append(f"{key}={toml_value(text)}")
            elif kind == "int":
                sets.append(f"{key}={text}")
            else:
                items = [t.strip() for t in text.split(",") if t.strip()]
                if kind == "list-str":
                    sets.append(f"{key}={toml_value(items)}")
                else:
                    sets.append(f"{key}=[{', '.join(items)}]")
        methods = self.query_one("#methods", SelectionList).selected
        sets.append(f"upstream.methods={toml_value([m for m in UPSTREAM_METHODS if m in methods])}")
        return sets

    def validated(self):
        """(preset, plan, preset file) or None with the reason shown in the form."""
        error = self.query_one("#form-error", Label)
        name = str(self.query_one("#preset", Select).value)
        data_dir = self.query_one("#data_dir", Input).value.strip() or None
        try:
            preset, path = load_preset(name, self.overrides(), data_dir)
            plan = make_plan(preset)
        except PresetError as exc:
            error.update(f"[red]{exc}[/red]")
            return None
        error.update("; ".join(plan.warnings))
        return preset, plan, path

    def action_start(self) -> None:
        checked = self.validated()
        if checked is None:
            return
        preset, plan, path = checked
        config = {"preset": preset.to_dict(), "plan": plan.to_dict(), "preset_file": str(path),
                  "overrides": self.overrides()}
        try:
            run = create_run(self.app.runs_root, config, preset.name)
        except RunsDirError as exc:
            self.query_one("#form-error", Label).update(f"[red]{exc}[/red]")
            return
        launch(run)
        self.notify(f"started {run.id} in the background")
        self.app.switch_mode("runs")

    def action_save(self) -> None:
        target = self.query_one("#save_path", Input).value.strip()
        if not target:
            self.query_one("#form-error", Label).update("[red]save as: give a preset file path[/red]")
            return
        if self.validated() is None:  # an invalid preset is refused, with the reason
            return
        from engine.config import apply_overrides

        raw = apply_overrides({k: (dict(v) if isinstance(v, dict) else v) for k, v in self.base_raw.items()},
                              self.overrides())
        data_dir = self.query_one("#data_dir", Input).value.strip()
        base = find_preset(str(self.query_one("#preset", Select).value)).parent
        if data_dir:
            raw.setdefault("data", {})["dir"] = str(Path(data_dir).expanduser().resolve())
        elif raw.get("data", {}).get("dir"):  # keep a relative data dir pointing where it did
            raw["data"]["dir"] = str((base / raw["data"]["dir"]).resolve())
        if raw.get("data", {}).get("setting", "").endswith((".json", ".toml")):
            raw["data"]["setting"] = str((base / raw["data"]["setting"]).resolve())
        raw["name"] = Path(target).stem
        path = Path(target).expanduser()
        path.write_text(to_toml(raw), encoding="utf-8")
        self.notify(f"saved {path}")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self.action_start()
        elif event.button.id == "save":
            self.action_save()
