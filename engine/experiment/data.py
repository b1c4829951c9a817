"""Few-shot task files: MetaICL (.jsonl) and CrossFit (.tsv) layouts, task configs, settings.

    <tasks>/<task>/<task>_<k>_<seed>_{train,dev,test}.jsonl   {"task","input","output","options"}
    <tasks>/<task>/<task>_<k>_<seed>_{train,dev,test}.tsv     input<TAB>output[<TAB>more answers]
    <config>/tasks/<task>.json                                 {"task_type": ..., "options": [...]}
    <config>/<setting>.json                                    {"train": [...], "test": [...]}

A data directory may be the folder of task folders itself, or a root holding
`metaicl/` (tasks) and `metaicl-config/` (configs), like ../shared/data, or `tasks/` and `config/`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from engine.base.tomlcompat import tomllib

PAPER_SEEDS = (100, 13, 21, 42, 87)  # the five k-shot splits of CrossFit, MetaICL and the paper

TASK_TYPES = ("classification", "multi-choice", "free-form")
INPUT_FORMATS = ("plain", "crossfit")
SPLITS = ("train", "dev", "test")
_SPLIT_FILE = re.compile(r"^(?P<task>.+)_(?P<k>\d+)_(?P<seed>\d+)_(?P<split>train|dev|test)\.(?P<ext>jsonl|tsv)$")


class TaskDataError(ValueError):
    """Bad or missing task data; the message names the file (and line)."""


@dataclass(frozen=True)
class Example:
    input: str
    output: str
    options: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()  # every acceptable answer (CrossFit TSVs may list several)
    line: int = field(default=0, compare=False)  # where it is in its file, for error messages

    @property
    def references(self) -> list[str]:
        return list(self.answers) or [self.output]


@dataclass(frozen=True)
class TaskInfo:
    name: str
    task_type: str
    options: tuple[str, ...]
    layout: str  # "metaicl" or "crossfit"


@dataclass
class Split:
    task: str
    k: int
    seed: int
    train: list[Example]
    dev: list[Example]
    test: list[Example] | None


@dataclass
class Setting:
    name: str
    source: list[str] = field(default_factory=list)
    target: list[str] = field(default_factory=list)


def format_input(example: Example, info: TaskInfo, input_format: str) -> str:
    """The model's input text. `crossfit` is what the authors' code feeds T5 (their
    fewshot_gym_singletask.py: " [task] " + input): CrossFit's task files write a
    multiple-choice question's options into the input as " (A) ... (B) ...", which
    MetaICL's files moved to `options`, so they are written back here (at the end:
    CrossFit put a few tasks' context after the options). Classification labels are
    not part of CrossFit's input."""
    if input_format == "plain":
        return example.input
    if input_format != "crossfit":
        raise ValueError(f"unknown input format {input_format!r} (known: {', '.join(INPUT_FORMATS)})")
    text = f" [{info.name}] {example.input}"
    if info.task_type == "multi-choice":
        text += "".join(f" ({_choice_letter(i)}) {option}" for i, option in enumerate(example.options))
    return text


def _choice_letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else str(i + 1)


def _lines(path: Path):
    """(line number, text) of a UTF-8 file; bytes that are not UTF-8 are a TaskDataError naming the line."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TaskDataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                                    f"{exc.start + 1})") from None


def _parse_jsonl(path: Path) -> list[Example]:
    examples = []
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskDataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise TaskDataError(f"{path}:{lineno}: expected a JSON object")
        for key in ("input", "output"):
            if not isinstance(obj.get(key), str):
                raise TaskDataError(f"{path}:{lineno}: missing or non-string key '{key}'")
        options = obj.get("options") or []
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise TaskDataError(f"{path}:{lineno}: 'options' must be a list of strings")
        if options and obj["output"] not in options:
            raise TaskDataError(f"{path}:{lineno}: output {obj['output']!r} is not one of the line's options")
        examples.append(Example(obj["input"], obj["output"], tuple(options), (obj["output"],), lineno))
    return examples


def _parse_tsv(path: Path) -> list[Example]:
    examples = []
    for lineno, line in _lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[1]:
            raise TaskDataError(f"{path}:{lineno}: expected input<TAB>output[<TAB>more answers]")
        examples.append(Example(cols[0], cols[1], (), tuple(c for c in cols[1:] if c), lineno))
    return examples


@lru_cache(maxsize=4096)
def _read_split_file(path: Path, mtime_ns: int) -> tuple[Example, ...]:
    examples = _parse_jsonl(path) if path.suffix == ".jsonl" else _parse_tsv(path)
    if not examples:
        raise TaskDataError(f"{path}: split file is empty")
    return tuple(examples)


def read_split_file(path: Path) -> list[Example]:
    path = Path(path)
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise TaskDataError(f"{path}: file not found") from None
    return list(_read_split_file(path, mtime))


def _load_structured(path: Path) -> dict:
    try:
        if path.suffix == ".toml":
            return tomllib.loads(path.read_text(encoding="utf-8"))
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TaskDataError(f"{path}: cannot parse ({exc})") from None


class TaskData:
    """One data directory: which tasks it has, their types and options, their splits."""

    def __init__(self, root: Path, config_dir: Path | None = None):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise TaskDataError(f"data directory {root} does not exist")
        # a root holding the tasks and their configs: ../shared/data's layout, or the demo's
        layouts = [(root / t, root / c) for t, c in (("metaicl", "metaicl-config"), ("tasks", "config"))]
        found = next(((t, c) for t, c in layouts if t.is_dir()), None)
        if found:
            self.tasks_dir, default_config = found
        else:
            self.tasks_dir = root
            default_config = root.parent / "metaicl-config"
        if config_dir is not None and not Path(config_dir).is_dir():
            raise TaskDataError(f"task config directory {config_dir} does not exist")
        self.config_dir = Path(config_dir) if config_dir else (default_config if default_config.is_dir() else None)
        self._files = self._scan()

    def _scan(self) -> dict[str, dict[tuple[int, int, str], Path]]:
        files: dict[str, dict[tuple[int, int, str], Path]] = {}
        for task_dir in sorted(p for p in self.tasks_dir.iterdir() if p.is_dir()):
            for path in task_dir.iterdir():
                m = _SPLIT_FILE.match(path.name)
                if m and m["task"] == task_dir.name:
                    files.setdefault(task_dir.name, {})[(int(m["k"]), int(m["seed"]), m["split"])] = path
        return files

    def tasks(self) -> list[str]:
        return sorted(self._files)

    def has_task(self, task: str) -> bool:
        return task in self._files

    def seeds(self, task: str, k: int) -> list[int]:
        return sorted({seed for (kk, seed, split) in self._files.get(task, {}) if kk == k and split == "train"})

    def has_test(self, task: str, k: int) -> bool:
        return any(kk == k and split == "test" for (kk, _, split) in self._files.get(task, {}))

    def _path(self, task: str, k: int, seed: int, split: str) -> Path | None:
        return self._files.get(task, {}).get((k, seed, split))

    def task_info(self, task: str) -> TaskInfo:
        if task not in self._files:
            raise TaskDataError(f"unknown task '{task}': no such folder with split files in {self.tasks_dir}")
        layout = "metaicl" if next(iter(self._files[task].values())).suffix == ".jsonl" else "crossfit"
        config: dict = {}
        for candidate in ([self.config_dir / "tasks" / f"{task}.json"] if self.config_dir else []) + \
                [self.tasks_dir / task / "task.json"]:
            if candidate.is_file():
                config = _load_structured(candidate)
                break
        options = tuple(config.get("options") or ())
        if not options:  # MetaICL lines carry their options
            first = next(p for (_, _, split), p in sorted(self._files[task].items()) if split == "train")
            options = read_split_file(first)[0].options
        task_type = config.get("task_type") or ("classification" if options else "free-form")
        if task_type not in TASK_TYPES:
            raise TaskDataError(f"task '{task}': task_type {task_type!r} is not one of {', '.join(TASK_TYPES)}")
        return TaskInfo(task, task_type, tuple(options), layout)

    def load_split(self, task: str, k: int, seed: int, *, need_test: bool = True,
                   input_format: str = "plain") -> Split:
        """The split's examples, their inputs written in `input_format` (see `format_input`)."""
        info = self.task_info(task)
        parts: dict[str, list[Example] | None] = {}
        for split in SPLITS:
            path = self._path(task, k, seed, split)
            if path is None:
                if split == "test" and not need_test:
                    parts[split] = None
                    continue
                why = " (it can serve as a source task only)" if split == "test" else ""
                raise TaskDataError(f"task '{task}': no {split} file for k={k} seed={seed} in {self.tasks_dir / task}{why}")
            examples = read_split_file(path)
            if info.task_type == "classification":
                if not info.options and not examples[0].options:
                    raise TaskDataError(f"{path}: classification task '{task}' has no label options "
                                        f"(none in the lines and no task config with 'options')")
                if info.options and not examples[0].options:  # CrossFit TSV: options from the config
                    examples = [Example(e.input, e.output, info.options, e.answers, e.line) for e in examples]
                for e in examples:
                    if e.output not in e.options:
                        raise TaskDataError(f"{path}:{e.line}: label {e.output!r} is not one of task '{task}''s "
                                            f"options ({', '.join(e.options)})")
            if input_format != "plain":
                examples = [replace(e, input=format_input(e, info, input_format)) for e in examples]
            parts[split] = examples
        return Split(task, k, seed, parts["train"], parts["dev"], parts["test"])

    def load_setting(self, name_or_path: str) -> Setting:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            if self.config_dir is None or not (self.config_dir / f"{name_or_path}.json").is_file():
                where = f" or {self.config_dir}/{name_or_path}.json" if self.config_dir else ""
                raise TaskDataError(f"setting '{name_or_path}' not found (no file {path}{where})")
            path = self.config_dir / f"{name_or_path}.json"
        raw = _load_structured(path)
        for key in ("train", "test"):
            value = raw.get(key, [])
            if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
                raise TaskDataError(f"{path}: '{key}' must be a list of task names")
        return Setting(path.stem, list(raw.get("train", [])), list(raw.get("test", [])))
