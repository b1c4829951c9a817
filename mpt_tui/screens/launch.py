"""Launch: a preset as a form, with task pickers and a live plan line; start it in the background or save it.

The form only gathers `--set` overrides; everything else is the engine's, as for the CLI:
`engine.runner.prepare.check_preset` refuses what would not run with the one-line reason shown in
the form, `prepare_run` writes the run directory and `engine.runner.launch.launch` starts it;
`engine.experiment.config.save_preset` writes a preset file.

- Source and target tasks are picked in two filterable multi-select lists showing each
  task's type, number of splits and whether it has a test file (`engine.experiment.catalog`, read in a
  worker); "setting's tasks", "all classification" and "clear" fill or empty a list.
  While the lists equal the setting's own, no task list is overridden (a paper setting
  keeps skipping the tasks the data lacks).
- Algorithms are checkboxes; seeds are checkboxes of the splits the chosen targets have.
- Invalid combinations (a task on both sides, a target without test files, a seed some
  target lacks, methods without sources) are listed under the form as it is edited.
- The plan line counts what the form would train (`engine.runner.plan_run`, torch-free, in a
  worker) and, where earlier runs of the same model left timings, the estimated time: the CLI's
  dry run without the probe (`engine.runner.dry_run(..., probe=False)`, torch-free), in the same
  worker thread.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Footer, Header, Input, Label, Select, SelectionList, Static
from textual.widgets.selection_list import Selection
from textual.worker import Worker, get_current_worker

from engine.base import tomllib
from engine.experiment import (DATA_DIR_ENV, METHODS, PresetError, find_preset, list_builtin_presets, override,
                               save_preset)
from engine.runner import check_preset, launch, prepare_run
from engine.store import RunsDirError
from mpt_tui.messages import CatalogLoaded, LaunchDone, PlanComputed, ReportWorkerErrors, deliver

# (field id, preset key, label, kind): kind "list" fields are comma-separated in the form
FIELDS = [
    ("model", "model.name", "model", "str"),
    ("device", "model.device", "device", "str"),
    ("setting", "data.setting", "setting", "str"),
    ("length", "prompt.length", "prompt length", "int"),
    ("lrs", "downstream.learning_rates", "learning rates", "list-float"),
    ("steps", "downstream.steps", "downstream steps", "int"),
    ("up_steps", "upstream.steps", "upstream updates", "int"),
]
HINTS = {"model": "directory, hub name, or smollm2-135m", "device": "auto, cpu, cuda:0, or cuda:0,cuda:1",
         "setting": "name or file; qin2023:<name>", "lrs": "comma-separated"}
ROLES = ("sources", "targets")
PLAN_DEBOUNCE_S = 0.3  # the plan is recomputed once the form has been still this long


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


def task_prompt(entry, name_width: int, chosen: bool) -> Text:
    """A picker line: name, type, number of splits, test file; ✓ when chosen (readable without colour)."""
    text = Text(f"{entry.name[:name_width]:<{name_width}} ", style="bold" if chosen else "")
    text.append(f"{entry.short_type:<5} {len(entry.seeds):>2} ", style="dim")
    text.append("test" if entry.has_test else "----", style="dim" if entry.has_test else "yellow")
    text.append(" ✓" if chosen else "  ", style="bold green")
    return text


def form_issues(catalog: dict, sources: list[str], targets: list[str], seeds: list[int], methods: list[str]) -> list[str]:
    """What is wrong with the chosen tasks, seeds and methods, from the catalog alone (checked as the user edits)."""
    issues = []
    both = [t for t in sources if t in targets]
    if both:
        issues.append(f"both source and target: {', '.join(both)}")
    no_test = [t for t in targets if t in catalog and not catalog[t].has_test]
    if no_test:
        issues.append(f"target without test files (a source only): {', '.join(no_test)}")
    if not targets:
        issues.append("no target task chosen")
    if not seeds:
        issues.append("no split (seed) chosen")
    lacking = [f"{t} (seed {', '.join(str(s) for s in seeds if s not in catalog[t].seeds)})"
               for t in targets if t in catalog and any(s not in catalog[t].seeds for s in seeds)]
    if lacking:
        issues.append(f"split missing for target: {'; '.join(lacking)}")
    if methods and not sources:
        issues.append(f"{', '.join(methods)} learn on source tasks, but none is chosen")
    return issues


def _has_timings(runs_root: Path, model: str) -> bool:
    """Whether an earlier run of `model` left a device name in its status (stored timings may match)."""
    from engine.store import list_runs, read_json

    for run in list_runs(runs_root) if Path(runs_root).is_dir() else []:
        config, status = read_json(run.config_path), read_json(run.status_path)
        if (isinstance(config, dict) and config.get("preset", {}).get("model", {}).get("name") == model
                and isinstance(status, dict) and status.get("device_name")):
            return True
    return False


def checked_label(base: str, value: bool) -> str:
    """A checkbox's label with a ✓ when checked (readable without colour; same width either way)."""
    return f"{base} ✓" if value else f"{base}  "


class LaunchScreen(ReportWorkerErrors, Screen):
    AUTO_FOCUS = "#sources-list"  # not an input: the digit keys still switch screens
    BINDINGS = [
        Binding("ctrl+s", "start", "Start run", id="start", tooltip="check the form and start the run in the background"),
        Binding("ctrl+w", "save", "Save preset", id="save", tooltip="save the form as a preset file (save as)",
                priority=True),  # before the inputs' own ctrl+w (delete a word)
        Binding("ctrl+g", "setting_tasks", "Setting's tasks", id="setting-tasks",
                tooltip="both task lists: the setting's sources and targets"),
        Binding("ctrl+o", "classification_tasks('')", "All classification", id="all-classification",
                tooltip="the focused task list (else sources): every classification task (targets: with test files)"),
        Binding("ctrl+l", "clear_tasks('')", "Clear list", id="clear-tasks",
                tooltip="the focused task list (else sources): no task"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="launch-form"):
            with Horizontal(classes="form-row"):
                yield Label("preset", classes="form-label")
                yield Select([(name, name) for name in list_builtin_presets()], value="demo", allow_blank=False,
                             id="preset", compact=True)
            with Horizontal(classes="form-row"):
                yield Label("data directory", classes="form-label")
                yield Input(id="data_dir", compact=True, placeholder="empty: the preset's, or $" + DATA_DIR_ENV)
            yield Label("tasks (name, type, splits, test file): type to filter both lists, space toggles", id="tasks-label")
            yield Input(placeholder="filter tasks", id="task-filter", compact=True)
            with Horizontal(id="pickers"):
                for role in ROLES:
                    with Vertical(classes="picker", id=f"{role}-picker"):
                        yield Label(role, id=f"{role}-title")
                        with Horizontal(classes="picker-actions"):
                            yield Button("setting's", id=f"{role}-setting", compact=True)
                            yield Button("all class.", id=f"{role}-class", compact=True)
                            yield Button("clear", id=f"{role}-clear", compact=True)
                        yield SelectionList(id=f"{role}-list")
            yield Label("upstream algorithms (PT always runs)")
            with Horizontal(id="methods", classes="checks"):
                for name, method in METHODS.items():
                    yield Checkbox(method.label, id=f"method-{name}", compact=True)
            yield Label("splits (seeds that the chosen targets have)")
            yield Horizontal(id="seeds", classes="checks")
            with Vertical(id="form-fields"):
                for field_id, _, text, _ in FIELDS:
                    with Horizontal(classes="form-row"):
                        yield Label(text, classes="form-label")
                        yield Input(id=field_id, compact=True, placeholder=HINTS.get(field_id, ""))
            with Horizontal(classes="form-row"):
                yield Label("save as", classes="form-label")
                yield Input(placeholder="my-preset.toml", id="save_path", compact=True)
        yield Static("plan: reading the preset…", id="plan-line")
        yield Static("", id="form-issues")
        yield Label("", id="form-error")
        with Horizontal(id="launch-buttons"):
            yield Button("Start (ctrl+s)", variant="primary", id="start", compact=True)
            yield Button("Save preset (ctrl+w)", id="save", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.catalog: dict = {}  # task -> engine.experiment.catalog.TaskEntry
        self.catalog_for: tuple | None = None  # (data directory, setting) the catalog was read for
        self.setting_lists: tuple[list[str], list[str]] = ([], [])
        self.chosen: dict[str, list[str]] = {"sources": [], "targets": []}
        self.preset_lists: dict[str, list[str]] = {"sources": [], "targets": []}
        self.seed_choice: list[int] = []
        self.shown_seeds: tuple = ()
        self.last_picker = "sources"
        self.name_width = 20
        self.plan_text = ""
        self.starting: Worker | None = None
        self.query_one("#data_dir", Input).value = self.app.data_dir or os.environ.get(DATA_DIR_ENV, "")
        self.fill_from_preset("demo")

    # ---- the preset -------------------------------------------------------------------------

    def fill_from_preset(self, name: str) -> None:
        raw = tomllib.loads(find_preset(name).read_text(encoding="utf-8"))
        self.base_raw = raw
        with self.prevent(Input.Changed, Checkbox.Changed):
            for field_id, key, _, kind in FIELDS:
                section, item = key.split(".")
                value = raw.get(section, {}).get(item)
                if value is None:
                    value = ""
                elif kind.startswith("list"):
                    value = ", ".join(str(v) for v in value)
                self.query_one(f"#{field_id}", Input).value = str(value)
            chosen = raw.get("upstream", {}).get("methods", [])
            for name_ in METHODS:
                self.query_one(f"#method-{name_}", Checkbox).value = name_ in chosen
        data = raw.get("data", {})
        # "nearest:K" sources are picked per target from a stored matrix: the pickers start from the setting's
        # list, and the preset keeps its own value unless the user chooses sources by hand
        self.preset_lists = {role: list(data[role]) if isinstance(data.get(role), list) else [] for role in ROLES}
        self.chosen = {role: list(self.preset_lists[role]) for role in ROLES}
        self.seed_choice = list(data.get("seeds", []))
        self.catalog_for = None  # the setting's lists fill empty lists once read
        self.show_error("")
        self.form_changed()

    @property
    def k(self) -> int:
        return int(self.base_raw.get("data", {}).get("k", 16))

    def data_dir_to_scan(self) -> str | None:
        """The form's data directory, else the preset's own (relative to the preset file)."""
        data_dir = self.query_one("#data_dir", Input).value.strip()
        if data_dir:
            return data_dir
        relative = self.base_raw.get("data", {}).get("dir")
        if not relative:
            return None
        return str(find_preset(str(self.query_one("#preset", Select).value)).parent / relative)

    # ---- the task catalog, read in a worker ------------------------------------------------------

    @work(thread=True, exclusive=True, group="scan-tasks", exit_on_error=False)
    def scan_tasks(self, data_dir: str, setting: str, k: int) -> None:
        from engine.experiment import setting_tasks, task_catalog
        from engine.experiment import TaskData, TaskDataError

        try:
            data = TaskData(Path(data_dir).expanduser())
            entries, lists = task_catalog(data, k), setting_tasks(data, setting)
        except (TaskDataError, OSError):
            entries, lists = [], ([], [])
        deliver(self, CatalogLoaded(data_dir, setting, entries, lists))

    def on_catalog_loaded(self, message: CatalogLoaded) -> None:
        first = self.catalog_for is None
        self.catalog = {e.name: e for e in message.entries}
        self.catalog_for = (message.data_dir, message.setting)
        old_lists, self.setting_lists = self.setting_lists, message.setting_lists
        for role, tasks in zip(ROLES, self.setting_lists):
            # an empty list in the preset means the setting's; follow the setting while the list is untouched
            if (first and not self.preset_lists[role]) or (not first and self.chosen[role] == old_lists[ROLES.index(role)]):
                self.chosen[role] = list(tasks)
        self.show_tasks()
        self.form_changed()

    def show_tasks(self) -> None:
        needle = self.query_one("#task-filter", Input).value.strip().lower()
        shown = [e for name, e in self.catalog.items() if needle in name.lower()]
        width = self.name_width = self._name_width(shown)
        for role in ROLES:
            listing = self.query_one(f"#{role}-list", SelectionList)
            with self.prevent(SelectionList.SelectedChanged):
                listing.clear_options()
                listing.add_options([Selection(task_prompt(e, width, e.name in self.chosen[role]), e.name,
                                               e.name in self.chosen[role], id=e.name) for e in shown])
            self.query_one(f"#{role}-title", Label).update(
                f"{role}: {len(self.chosen[role])} chosen" + (f" (showing {len(shown)} of {len(self.catalog)})"
                                                             if needle else ""))

    def _name_width(self, shown: list) -> int:
        width = max([len(e.name) for e in shown] + [8])
        if self.size.width:  # two lists side by side: border, checkbox, type, splits, test, ✓: about 24 columns
            width = min(width, max(12, (self.size.width - 4) // 2 - 24))
        return width

    def on_selection_list_selection_toggled(self, event: SelectionList.SelectionToggled) -> None:
        role = event.selection_list.id.removesuffix("-list")
        if role not in ROLES:
            return
        self.last_picker = role
        task = event.selection.value
        tasks = self.chosen[role]
        self.chosen[role] = [t for t in tasks if t != task] if task in tasks else tasks + [task]
        self.query_one(f"#{role}-title", Label).update(f"{role}: {len(self.chosen[role])} chosen")
        if task in self.catalog:
            event.selection_list.replace_option_prompt(task, task_prompt(self.catalog[task], self.name_width,
                                                                         task in self.chosen[role]))
        self.form_changed()

    def set_tasks(self, role: str, tasks: list[str]) -> None:
        self.chosen[role] = list(tasks)
        self.show_tasks()
        self.form_changed()

    def focused_role(self) -> str:
        focused = self.focused
        for role in ROLES:
            if focused is not None and focused.id in (f"{role}-list", f"{role}-setting", f"{role}-class", f"{role}-clear"):
                return role
        return self.last_picker

    def action_setting_tasks(self) -> None:
        for role, tasks in zip(ROLES, self.setting_lists):
            self.chosen[role] = list(tasks)
        self.show_tasks()
        self.form_changed()

    def action_classification_tasks(self, role: str = "") -> None:
        role = role or self.focused_role()
        other = set(self.chosen["targets" if role == "sources" else "sources"])
        self.set_tasks(role, [e.name for e in self.catalog.values() if e.task_type == "classification"
                              and e.name not in other and (role == "sources" or e.has_test)])

    def action_clear_tasks(self, role: str = "") -> None:
        self.set_tasks(role or self.focused_role(), [])

    # ---- seeds: checkboxes of the splits the chosen targets have ----------------------------------

    def available_seeds(self) -> list[int]:
        pool = [self.catalog[t] for t in self.chosen["targets"] if t in self.catalog] or list(self.catalog.values())
        return sorted({s for e in pool for s in e.seeds})

    def show_seeds(self) -> None:
        seeds = tuple(sorted(set(self.available_seeds()) | set(self.seed_choice)))
        if seeds == self.shown_seeds:
            return
        self.shown_seeds = seeds
        box = self.query_one("#seeds", Horizontal)
        box.remove_children()
        box.mount_all([Checkbox(checked_label(str(s), s in self.seed_choice), s in self.seed_choice,
                                name=f"seed-{s}", classes="seed", compact=True)
                       for s in seeds])  # named, not ids: the removed boxes may still be registered

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        if event.checkbox.name and event.checkbox.name.startswith("seed-"):
            seed = int(event.checkbox.name.removeprefix("seed-"))
            self.seed_choice = sorted((set(self.seed_choice) | {seed}) if event.value else
                                      (set(self.seed_choice) - {seed}))
        self.form_changed()

    # ---- every edit: the issues at once, the plan in a worker ---------------------------------------

    def mark_checkboxes(self) -> None:
        """A ✓ after each checked box's label: its state readable without colour."""
        for box in self.query("#methods Checkbox, #seeds Checkbox"):
            base = METHODS[box.id.removeprefix("method-")].label if box.id else box.name.removeprefix("seed-")
            label = checked_label(base, box.value)
            if str(box.label) != label:
                box.label = label

    def methods(self) -> list[str]:
        return [m for m in METHODS if self.query_one(f"#method-{m}", Checkbox).value]

    def form_changed(self) -> None:
        if not self.is_mounted:
            return
        data_dir = self.data_dir_to_scan()
        setting = self.query_one("#setting", Input).value.strip()
        if data_dir is not None and (data_dir, setting) != self.catalog_for:
            self.scan_tasks(data_dir, setting, self.k)  # shows the tasks and plans again when read
        self.show_seeds()
        self.mark_checkboxes()
        issues = form_issues(self.catalog, self.chosen["sources"], self.chosen["targets"], self.seed_choice,
                             self.methods()) if self.catalog else []
        self.query_one("#form-issues", Static).update(Text("\n".join(f"⚠ {i}" for i in issues), style="yellow"))
        self.compute_plan(*self.preset_args(), self.app.runs_root)

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "task-filter":
            self.show_tasks()
        elif event.input.id != "save_path":
            self.form_changed()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "preset" and event.value is not Select.BLANK:
            self.fill_from_preset(str(event.value))

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False)
    def compute_plan(self, name: str, overrides: list[str], data_dir: str | None, runs_root: Path) -> None:
        """The plan line: counts from the torch-free plan; the time from the CLI's dry run where timings exist."""
        from engine.experiment import grid_cells, load_preset
        from engine.runner import plan_run

        worker = get_current_worker()
        time.sleep(PLAN_DEBOUNCE_S)  # a newer edit cancels this worker meanwhile
        if worker.is_cancelled:
            return
        try:
            preset, _ = load_preset(name, overrides, data_dir)
            plan = plan_run(preset)
        except PresetError as exc:
            deliver(self, PlanComputed(error=str(exc)))
            return
        learned = [m for m in preset.upstream.methods if not preset.upstream.hyperparameters[m].prompt_file]
        cells = len(grid_cells(plan, preset.downstream.learning_rates))
        upstream = f"{preset.upstream.steps} upstream steps x {len(learned)}" if learned else "no upstream"
        counts = (f"{len(plan.sources)} sources · {len(plan.targets)} targets · {len(plan.seeds)} splits · "
                  f"{len(plan.methods)} methods · {upstream} · {cells} grid cells")
        if not _has_timings(runs_root, preset.model.name):
            deliver(self, PlanComputed(f"{counts} · time: no stored timings of {preset.model.name} yet",
                                       warnings=plan.warnings))
            return
        deliver(self, PlanComputed(f"{counts} · time: estimating…", warnings=plan.warnings))
        estimate = self.dry_run_estimate(name, overrides, data_dir, runs_root)
        if estimate is not None and not worker.is_cancelled:
            from engine.runner import format_duration_estimate

            steps = sum(estimate.get("upstream_steps", {}).values())
            if learned:  # the exact count (MTL with epochs counts passes over its pool)
                counts = counts.replace(upstream, f"{steps} upstream steps")
            when = (f"~{format_duration_estimate(estimate['estimate_s'])}" if estimate.get("estimate_s") is not None
                    else "unknown")
            deliver(self, PlanComputed(f"{counts} · time: {when} ({estimate.get('estimate_from', '')})",
                                       warnings=plan.warnings))

    @staticmethod
    def dry_run_estimate(name: str, overrides: list[str], data_dir: str | None, runs_root: Path) -> dict | None:
        """What `mpt-tui --dry-run --no-probe --json` prints (engine.runner.dry_run on stored timings only),
        computed here: planning without the probe imports no torch. None when the form does not plan."""
        from engine.runner import check_preset, dry_run

        try:
            prepared = check_preset(name, overrides, data_dir, runs_root=runs_root)
            return dry_run(prepared.preset, prepared.plan, runs_root, probe=False).to_dict()
        except (PresetError, RunsDirError, OSError):
            return None

    def on_plan_computed(self, message: PlanComputed) -> None:
        if message.error:
            self.plan_text = f"plan: {message.error}"
            self.query_one("#plan-line", Static).update(Text(self.plan_text, style="red"))
            return
        self.plan_text = f"plan: {message.text}"
        lines = [self.plan_text] + [f"note: {w}" for w in message.warnings]
        self.query_one("#plan-line", Static).update(Text("\n".join(lines)))

    # ---- the form as --set overrides; the engine checks, writes and starts ----------------

    def overrides(self) -> list[str]:
        sets = [override(key, field_value(self.query_one(f"#{field_id}", Input).value.strip(), kind))
                for field_id, key, _, kind in FIELDS]
        for role in ROLES:  # the setting's own lists are left to the setting
            if self.chosen[role] != self.setting_lists[ROLES.index(role)] or self.preset_lists[role]:
                sets.append(override(f"data.{role}", self.chosen[role]))
        sets.append(override("data.seeds", list(self.seed_choice)))
        sets.append(override("upstream.methods", self.methods()))
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
        button = event.button.id or ""
        if button == "start":
            self.action_start()
        elif button == "save":
            self.action_save()
        elif button.endswith("-setting"):
            role = button.removesuffix("-setting")
            self.set_tasks(role, self.setting_lists[ROLES.index(role)])
        elif button.endswith("-class"):
            self.action_classification_tasks(button.removesuffix("-class"))
        elif button.endswith("-clear"):
            self.action_clear_tasks(button.removesuffix("-clear"))
