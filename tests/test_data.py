"""Tests for engine.experiment.data: the real MetaICL data, the CrossFit (.tsv) layout, and bad input.

No models here; everything reads files only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import require_shared_data
from engine.experiment import data as data_module
from engine.experiment.data import Example, TaskData, TaskDataError

SST2_OPTIONS = ("negative", "positive")


@pytest.fixture(scope="module")
def shared() -> TaskData:
    return TaskData(require_shared_data())


# ---- helpers to write small task folders ---------------------------------------------------

def write_jsonl_task(tasks_dir: Path, task: str, *, seeds=(13,), options=("yes", "no"), n=4,
                     splits=("train", "dev", "test")) -> Path:
    folder = tasks_dir / task
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for split in splits:
            lines = [json.dumps({"task": task, "input": f"{split} input {i}", "output": options[i % len(options)]
                                 if options else f"answer {i}", "options": list(options)}) for i in range(n)]
            (folder / f"{task}_16_{seed}_{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_tsv_task(tasks_dir: Path, task: str, rows: list[str], *, seeds=(13,), config: dict | None = None,
                   splits=("train", "dev", "test")) -> Path:
    folder = tasks_dir / task
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for split in splits:
            (folder / f"{task}_16_{seed}_{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    if config is not None:
        (folder / "task.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


# ---- the real MetaICL data ---------------------------------------------------------------

def test_real_data_has_109_tasks(shared):
    tasks = shared.tasks()
    assert len(tasks) == 109
    assert "glue-sst2" in tasks and shared.has_task("glue-sst2")
    assert not shared.has_task("no-such-task")
    assert shared.tasks_dir == require_shared_data() / "metaicl"
    assert shared.config_dir == require_shared_data() / "metaicl-config"


def test_real_glue_sst2_seed13_split(shared):
    assert shared.seeds("glue-sst2", 16) == [13, 21, 42, 87, 100]
    assert shared.has_test("glue-sst2", 16)
    split = shared.load_split("glue-sst2", 16, 13)
    assert (split.task, split.k, split.seed) == ("glue-sst2", 16, 13)
    assert len(split.train) == 16
    assert len(split.dev) == 16
    assert split.test is not None and len(split.test) > 16
    for ex in split.train + split.dev + split.test:
        assert isinstance(ex, Example)
        assert ex.options == SST2_OPTIONS  # options come through from the lines
        assert ex.output in SST2_OPTIONS
        assert ex.references == [ex.output]
    first = json.loads((shared.tasks_dir / "glue-sst2" / "glue-sst2_16_13_train.jsonl")
                       .read_text(encoding="utf-8").splitlines()[0])
    assert split.train[0].input == first["input"]
    assert split.train[0].output == first["output"]


def test_real_task_info_types_from_config_dir(shared):
    sst2 = shared.task_info("glue-sst2")
    assert sst2.task_type == "classification"
    assert sst2.options == SST2_OPTIONS
    assert sst2.layout == "metaicl"
    assert shared.task_info("ai2_arc").task_type == "multi-choice"
    squad = shared.task_info("squad-no_context")
    assert squad.task_type == "free-form"
    assert squad.options == ()
    # every task's type is the one written in metaicl-config/tasks/<task>.json
    for task in shared.tasks():
        expected = json.loads((shared.config_dir / "tasks" / f"{task}.json").read_text())["task_type"]
        assert shared.task_info(task).task_type == expected, task


def test_real_multi_choice_options_per_line(shared):
    split = shared.load_split("ai2_arc", 16, 13)
    assert all(ex.options and ex.output in ex.options for ex in split.train)
    assert len({ex.options for ex in split.train}) > 1  # each question keeps its own choices


def test_real_setting_by_name(shared):
    setting = shared.load_setting("class_to_class")
    raw = json.loads((shared.config_dir / "class_to_class.json").read_text())
    assert setting.name == "class_to_class"
    assert setting.source == raw["train"] and setting.target == raw["test"]
    assert setting.source and setting.target
    for task in setting.source + setting.target:
        assert shared.has_task(task), task
    for task in setting.target:
        assert shared.has_test(task, 16), task


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_setting_from_file_path(shared, tmp_path, suffix):
    path = tmp_path / f"my-setting{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"train": ["glue-rte", "glue-mnli"], "test": ["glue-sst2"]}))
    else:
        path.write_text('train = ["glue-rte", "glue-mnli"]\ntest = ["glue-sst2"]\n')
    setting = shared.load_setting(str(path))
    assert setting.name == "my-setting"
    assert setting.source == ["glue-rte", "glue-mnli"]
    assert setting.target == ["glue-sst2"]


def test_unknown_setting(shared, tmp_path):
    with pytest.raises(TaskDataError, match="no-such-setting"):
        shared.load_setting("no-such-setting")


def test_setting_with_bad_list_names_file(shared, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"train": "glue-rte", "test": ["glue-sst2"]}))
    with pytest.raises(TaskDataError) as info:
        shared.load_setting(str(path))
    assert str(path) in str(info.value) and "train" in str(info.value)


@pytest.mark.serial  # a wall-clock bound
def test_reading_100_real_splits_is_fast(shared):
    pairs = [(task, seed) for task in shared.tasks() for seed in shared.seeds(task, 16)][:100]
    assert len(pairs) == 100
    data_module._read_split_file.cache_clear()  # measure real reads, not the cache
    start = time.perf_counter()
    files = 0
    for task, seed in pairs:
        split = shared.load_split(task, 16, seed, need_test=False)
        assert split.train and split.dev
        files += 2 + (split.test is not None)
    elapsed = time.perf_counter() - start
    assert files >= 200
    # a sanity bound (each split well under a second), not a benchmark
    assert elapsed < 20.0, f"loading 100 splits took {elapsed:.1f}s"


# ---- CrossFit (.tsv) layout --------------------------------------------------------------------

def test_crossfit_layout_detected_with_task_json(tmp_path):
    root = tmp_path / "crossfit"
    write_tsv_task(root, "my_task", ["first question\tyes", "second question\tno\tnope\tnah", "third\tyes"],
                   seeds=(13, 42), config={"task_type": "classification", "options": ["yes", "no"]})
    data = TaskData(root)
    assert data.tasks() == ["my_task"]
    assert data.seeds("my_task", 16) == [13, 42]
    info = data.task_info("my_task")
    assert info.layout == "crossfit"
    assert info.task_type == "classification"
    assert info.options == ("yes", "no")
    split = data.load_split("my_task", 16, 42)
    assert len(split.train) == len(split.dev) == len(split.test) == 3
    second = split.train[1]
    assert second.input == "second question"
    assert second.output == "no"
    assert second.answers == ("no", "nope", "nah")  # every answer on the line is kept
    assert second.references == ["no", "nope", "nah"]
    assert split.train[0].answers == ("yes",)
    # options come from the task config (TSV lines carry none)
    assert all(ex.options == ("yes", "no") for ex in split.train + split.dev + split.test)


def test_crossfit_options_from_config_dir(tmp_path):
    root = tmp_path / "data"
    write_tsv_task(root / "metaicl", "labels", ["a text\tgood", "b text\tbad"])
    (root / "metaicl-config" / "tasks").mkdir(parents=True)
    (root / "metaicl-config" / "tasks" / "labels.json").write_text(
        json.dumps({"task_type": "classification", "options": ["bad", "good"]}))
    data = TaskData(root)
    info = data.task_info("labels")
    assert (info.layout, info.task_type, info.options) == ("crossfit", "classification", ("bad", "good"))
    split = data.load_split("labels", 16, 13)
    assert [ex.options for ex in split.dev] == [("bad", "good")] * 2


def test_crossfit_free_form_without_config(tmp_path):
    root = tmp_path / "crossfit"
    write_tsv_task(root, "qa", ["who?\tme\tmyself", "what?\tthis"])
    data = TaskData(root)
    info = data.task_info("qa")
    assert (info.layout, info.task_type, info.options) == ("crossfit", "free-form", ())
    split = data.load_split("qa", 16, 13)
    assert split.test[0].answers == ("me", "myself")
    assert split.test[0].options == ()


# ---- bad input ---------------------------------------------------------------------------

def _error(data: TaskData, task: str, **kwargs) -> str:
    with pytest.raises(TaskDataError) as info:
        data.load_split(task, 16, 13, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    folder = write_jsonl_task(tmp_path / "tasks", "broken")
    bad = folder / "broken_16_13_dev.jsonl"
    lines = bad.read_text().splitlines()
    lines[2] = '{"task": "broken", "input": "x", "output": '  # truncated line 3
    bad.write_text("\n".join(lines) + "\n")
    message = _error(TaskData(tmp_path / "tasks"), "broken")
    assert f"{bad}:3" in message


def test_jsonl_line_missing_output(tmp_path):
    folder = write_jsonl_task(tmp_path / "tasks", "nooutput")
    bad = folder / "nooutput_16_13_train.jsonl"
    lines = bad.read_text().splitlines()
    lines[1] = json.dumps({"task": "nooutput", "input": "x", "options": ["yes", "no"]})
    bad.write_text("\n".join(lines) + "\n")
    message = _error(TaskData(tmp_path / "tasks"), "nooutput")
    assert f"{bad}:2" in message
    assert "output" in message


def test_tsv_line_without_tab(tmp_path):
    folder = write_tsv_task(tmp_path / "tasks", "notab", ["fine\tyes", "no tab on this line", "fine\tno"],
                            splits=("train",))
    write_tsv_task(tmp_path / "tasks", "notab", ["ok\tyes"], splits=("dev", "test"))
    message = _error(TaskData(tmp_path / "tasks"), "notab")
    assert f"{folder / 'notab_16_13_train.tsv'}:2" in message


@pytest.mark.parametrize("ext", ["jsonl", "tsv"])
def test_empty_split_file(tmp_path, ext):
    tasks = tmp_path / "tasks"
    if ext == "jsonl":
        folder = write_jsonl_task(tasks, "empty")
    else:
        folder = write_tsv_task(tasks, "empty", ["q\ta"])
    empty = folder / f"empty_16_13_dev.{ext}"
    empty.write_text("\n\n")
    message = _error(TaskData(tasks), "empty")
    assert str(empty) in message
    assert "empty" in message


def test_classification_without_options_tsv(tmp_path):
    folder = write_tsv_task(tmp_path / "tasks", "nolabels", ["q\tyes", "r\tno"],
                            config={"task_type": "classification"})
    message = _error(TaskData(tmp_path / "tasks"), "nolabels")
    assert str(folder / "nolabels_16_13_train.tsv") in message
    assert "options" in message


def test_classification_without_options_jsonl(tmp_path):
    root = tmp_path / "data"
    folder = write_jsonl_task(root / "metaicl", "nolabels", options=())
    (root / "metaicl-config" / "tasks").mkdir(parents=True)
    (root / "metaicl-config" / "tasks" / "nolabels.json").write_text(json.dumps({"task_type": "classification"}))
    message = _error(TaskData(root), "nolabels")
    assert str(folder / "nolabels_16_13_train.jsonl") in message
    assert "options" in message


def test_target_without_test_file(tmp_path):
    folder = write_jsonl_task(tmp_path / "tasks", "sourceonly", splits=("train", "dev"))
    data = TaskData(tmp_path / "tasks")
    assert not data.has_test("sourceonly", 16)
    message = _error(data, "sourceonly", need_test=True)
    assert "sourceonly" in message and "test" in message and str(folder) in message
    split = data.load_split("sourceonly", 16, 13, need_test=False)
    assert split.test is None and len(split.train) == 4


def test_real_target_without_test_file(shared):
    no_test = [t for t in shared.tasks() if not shared.has_test(t, 16)]
    assert no_test, "the shared data should have source-only tasks"
    task = no_test[0]
    message = _error(shared, task, need_test=True)
    assert task in message and "test" in message
    assert shared.load_split(task, 16, 13, need_test=False).test is None


def test_unknown_task(tmp_path):
    write_jsonl_task(tmp_path / "tasks", "known")
    data = TaskData(tmp_path / "tasks")
    message = _error(data, "no-such-task")
    assert "no-such-task" in message
    with pytest.raises(TaskDataError, match="no-such-task"):
        data.task_info("no-such-task")


def test_missing_data_directory(tmp_path):
    with pytest.raises(TaskDataError, match="does not exist") as info:
        TaskData(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


# ---- input formats ---------------------------------------------------------------------

def test_crossfit_input_format_of_a_classification_task(shared):
    """The authors' fewshot_gym_singletask.py: " [task] " + input; CrossFit's classification inputs do not
    list the labels, so the options stay out of the text (and in `options`, for rank classification)."""
    plain = shared.load_split("superglue-cb", 16, 13)
    crossfit = shared.load_split("superglue-cb", 16, 13, input_format="crossfit")
    for p, c in zip(plain.train + plain.test, crossfit.train + crossfit.test):
        assert c.input == " [superglue-cb] " + p.input
        assert (c.output, c.options, c.answers) == (p.output, p.options, p.answers)
    assert crossfit.train[0].input.startswith(" [superglue-cb] premise: ")


def test_crossfit_input_format_of_a_multiple_choice_task(shared):
    """CrossFit writes a question's choices into its input (" (A) ... (B) ..."), as the authors' logs show:
    "[ai2_arc] Mrs. Gordon's class studies maple trees. Which property ...? (A) the mass of a leaf (B) ..."."""
    plain = shared.load_split("ai2_arc", 16, 13)
    crossfit = shared.load_split("ai2_arc", 16, 13, input_format="crossfit")
    for p, c in zip(plain.train, crossfit.train):
        letters = "".join(f" ({chr(65 + i)}) {option}" for i, option in enumerate(p.options))
        assert c.input == f" [ai2_arc] {p.input}{letters}"
        assert c.output == p.output and c.output in c.options  # the target stays the answer text
    example = crossfit.train[0]
    assert " (A) " + example.options[0] + " (B) " + example.options[1] in example.input


def test_plain_input_format_is_the_stored_text(shared):
    assert shared.load_split("ai2_arc", 16, 13).train == shared.load_split("ai2_arc", 16, 13, input_format="plain").train


# ---- bad files, refused up front with file and line (through the real CLI: exit 2, no run directory) ----

def _bad_data(tmp_path, damage: str) -> Path:
    """A copy of two demo tasks with one damaged file."""
    import shutil

    from conftest import DEMO_DATA

    root = tmp_path / "data"
    for task in ("demo-spam", "demo-emotion"):
        shutil.copytree(DEMO_DATA / "tasks" / task, root / "tasks" / task)
    (root / "config" / "tasks").mkdir(parents=True)
    for task in ("demo-spam", "demo-emotion"):
        shutil.copy(DEMO_DATA / "config" / "tasks" / f"{task}.json", root / "config" / "tasks" / f"{task}.json")
    target = root / "tasks" / "demo-emotion" / "demo-emotion_16_1_dev.jsonl"
    lines = target.read_bytes().splitlines(keepends=True)
    if damage == "non_utf8":
        lines[2] = lines[2].replace(b"e", b"\xff", 1)
    elif damage == "label":
        obj = json.loads(lines[2])
        obj["output"] = "boredom"
        lines[2] = (json.dumps(obj) + "\n").encode()
    elif damage == "config":
        (root / "config" / "tasks" / "demo-emotion.json").write_text('{"task_type": "classification", ')
    target.write_bytes(b"".join(lines))
    return root


@pytest.mark.parametrize("damage, needle", [
    ("non_utf8", "demo-emotion_16_1_dev.jsonl:3: not UTF-8 text"),
    ("label", "demo-emotion_16_1_dev.jsonl:3: output 'boredom' is not one of the line's options"),
    ("config", "demo-emotion.json: cannot parse")])
def test_bad_task_files_are_refused_before_a_run_exists(tmp_path, damage, needle):
    import subprocess
    import sys

    from conftest import REPO

    root = _bad_data(tmp_path, damage)
    preset = tmp_path / "p.toml"
    preset.write_text(f'[data]\ndir = "{root}"\nsources = ["demo-spam"]\ntargets = ["demo-emotion"]\nseeds = [1]\n'
                      f'[upstream]\nmethods = ["mtl"]\n', encoding="utf-8")
    runs = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "mpt_tui.cli", "--preset", str(preset), "--runs-dir", str(runs)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not runs.exists() or not any(runs.iterdir())


def test_a_classification_label_outside_the_configured_options_names_its_line(tmp_path):
    write_tsv_task(tmp_path, "tsv-task", ["good one\tyes", "bad one\tmaybe"],
                   config={"task_type": "classification", "options": ["yes", "no"]})
    with pytest.raises(TaskDataError, match=r"tsv-task_16_13_train.tsv:2: label 'maybe' is not one of"):
        TaskData(tmp_path).load_split("tsv-task", 16, 13)
