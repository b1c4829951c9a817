"""Tests for engine.experiment.databuild (all local: CSV/JSONL/parquet files in tmp_path)."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from engine.experiment import databuild  # noqa: E402
from engine.experiment.databuild import CROSSFIT_SEEDS, DataBuildError, build_splits  # noqa: E402

LABELS = ("alpha", "beta", "gamma")


@pytest.fixture(autouse=True)
def _hermetic_hf(tmp_path, monkeypatch):
    """Keep datasets' cache inside tmp_path and stay offline."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def write_csv(path: Path, rows, header=("input", "output")) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def labelled_rows(per_label=30, labels=LABELS):
    # interleaved, unique inputs: "text <label> <i>"
    return [(f"text {label} {i}", label) for i in range(per_label) for label in labels]


def read_tsv(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [line.split("\t") for line in text.splitlines()]


def crossfit_reference(lines, k, seed, classification):
    """CrossFit's tasks/fewshot_gym_dataset.py, verbatim in substance."""
    train_lines = list(lines)
    np.random.seed(seed)
    np.random.shuffle(train_lines)
    if not classification:
        return train_lines[:k], train_lines[k : 2 * k]
    label_list = {}
    for line in train_lines:
        label = line[-1]
        if label not in label_list:
            label_list[label] = [line]
        else:
            label_list[label].append(line)
    k_shot_train = []
    for label in label_list:
        for line in label_list[label][:k]:
            k_shot_train.append(line)
    k_shot_dev = []
    for label in label_list:
        for line in label_list[label][k : 2 * k]:
            k_shot_dev.append(line)
    return k_shot_train, k_shot_dev


@pytest.fixture
def csv_source(tmp_path):
    return write_csv(tmp_path / "data.csv", labelled_rows())


# ---------------------------------------------------------------- layout


def test_file_names_for_each_seed_and_task_json(csv_source, tmp_path):
    out = tmp_path / "out"
    paths = build_splits(str(csv_source), out, "mytask", k=4, test_split=None)
    task_dir = out / "mytask"
    expected = []
    for seed in (100, 13, 21, 42, 87):
        expected += [task_dir / f"mytask_4_{seed}_train.tsv", task_dir / f"mytask_4_{seed}_dev.tsv"]
    expected.append(task_dir / "task.json")
    assert paths == expected
    assert sorted(p.name for p in task_dir.iterdir()) == sorted(p.name for p in expected)
    assert CROSSFIT_SEEDS == (100, 13, 21, 42, 87)
    meta = json.loads((task_dir / "task.json").read_text())
    assert meta == {"task_type": "classification", "options": ["alpha", "beta", "gamma"]}
    # no temp leftovers next to the task dir
    assert sorted(p.name for p in out.iterdir()) == ["mytask"]


def test_test_split_written_in_original_order(tmp_path):
    train = write_csv(tmp_path / "train.csv", labelled_rows())
    test_rows = [(f"held out {i}", LABELS[i % 3]) for i in range(10)]
    test = write_csv(tmp_path / "test.csv", test_rows)
    out = tmp_path / "out"
    paths = build_splits(str(train), out, "t", k=2, seeds=(13, 42), data_files={"test": str(test)})
    names = [p.name for p in paths]
    assert names == ["t_2_13_train.tsv", "t_2_13_dev.tsv", "t_2_13_test.tsv",
                     "t_2_42_train.tsv", "t_2_42_dev.tsv", "t_2_42_test.tsv", "task.json"]
    for seed in (13, 42):
        assert read_tsv(out / "t" / f"t_2_{seed}_test.tsv") == [list(r) for r in test_rows]


def test_directory_source_with_validation_used_as_test(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_csv(src / "train.csv", labelled_rows(per_label=6))
    write_csv(src / "validation.csv", [("v1", "alpha"), ("v2", "beta")])
    msgs = []
    out = tmp_path / "out"
    build_splits(str(src), out, "d", k=2, seeds=(21,), progress=msgs.append)
    assert read_tsv(out / "d" / "d_2_21_test.tsv") == [["v1", "alpha"], ["v2", "beta"]]
    assert any("validation" in m for m in msgs)


def test_no_test_file_when_test_split_none(csv_source, tmp_path):
    out = tmp_path / "out"
    paths = build_splits(str(csv_source), out, "t", k=3, seeds=(13,), test_split=None)
    assert not list((out / "t").glob("*_test.tsv"))
    assert all("_test" not in p.name for p in paths)


def test_missing_test_split_is_an_error(csv_source, tmp_path):
    with pytest.raises(DataBuildError, match="test_split=None"):
        build_splits(str(csv_source), tmp_path / "out", "t", k=3)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- sampling rule


def test_classification_k_per_label_in_train_and_dev_and_disjoint(csv_source, tmp_path):
    out = tmp_path / "out"
    k = 5
    build_splits(str(csv_source), out, "t", k=k, test_split=None)
    for seed in CROSSFIT_SEEDS:
        train = read_tsv(out / "t" / f"t_{k}_{seed}_train.tsv")
        dev = read_tsv(out / "t" / f"t_{k}_{seed}_dev.tsv")
        assert all(len(r) == 2 for r in train + dev)
        assert Counter(r[1] for r in train) == {label: k for label in LABELS}
        assert Counter(r[1] for r in dev) == {label: k for label in LABELS}
        assert not {r[0] for r in train} & {r[0] for r in dev}
        # every line is a real (input, label) pair of the source
        assert all(r[0].split()[1] == r[1] for r in train + dev)


def test_classification_matches_crossfit_reference(csv_source, tmp_path):
    out = tmp_path / "out"
    k = 4
    build_splits(str(csv_source), out, "t", k=k, test_split=None)
    for seed in CROSSFIT_SEEDS:
        ref_train, ref_dev = crossfit_reference(labelled_rows(), k, seed, classification=True)
        assert read_tsv(out / "t" / f"t_{k}_{seed}_train.tsv") == [list(r) for r in ref_train]
        assert read_tsv(out / "t" / f"t_{k}_{seed}_dev.tsv") == [list(r) for r in ref_dev]


def test_free_form_first_k_after_shuffle(tmp_path):
    rows = [(f"question {i}", f"answer {i}") for i in range(40)]
    src = write_csv(tmp_path / "qa.csv", rows)
    out = tmp_path / "out"
    k = 6
    build_splits(str(src), out, "qa", k=k, task_type="free-form", test_split=None)
    meta = json.loads((out / "qa" / "task.json").read_text())
    assert meta == {"task_type": "free-form", "options": []}
    for seed in CROSSFIT_SEEDS:
        order = list(range(40))
        np.random.RandomState(seed).shuffle(order)
        train = read_tsv(out / "qa" / f"qa_{k}_{seed}_train.tsv")
        dev = read_tsv(out / "qa" / f"qa_{k}_{seed}_dev.tsv")
        assert train == [list(rows[i]) for i in order[:k]]
        assert dev == [list(rows[i]) for i in order[k : 2 * k]]
        ref_train, ref_dev = crossfit_reference(rows, k, seed, classification=False)
        assert train == [list(r) for r in ref_train]
        assert dev == [list(r) for r in ref_dev]


def test_free_form_several_answers_become_extra_columns(tmp_path):
    src = tmp_path / "qa.jsonl"
    with open(src, "w", encoding="utf-8") as fh:
        for i in range(10):
            answers = [f"a{i}", f"b\t{i}", f"a{i}"]  # duplicate dropped, tab replaced
            fh.write(json.dumps({"q": f"q{i}", "answers": answers}) + "\n")
    out = tmp_path / "out"
    build_splits(str(src), out, "qa", k=3, seeds=(42,), task_type="text-to-text",
                 input_column="q", output_column="answers", test_split=None)
    train = read_tsv(out / "qa" / "qa_3_42_train.tsv")
    assert len(train) == 3
    for row in train:
        i = row[0][1:]
        assert row == [f"q{i}", f"a{i}", f"b {i}"]


def test_deterministic_and_seed_dependent(csv_source, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build_splits(str(csv_source), a, "t", k=4, test_split=None)
    build_splits(str(csv_source), b, "t", k=4, test_split=None)
    for f in sorted((a / "t").iterdir()):
        assert f.read_bytes() == (b / "t" / f.name).read_bytes()
    trains = {
        seed: frozenset(r[0] for r in read_tsv(a / "t" / f"t_4_{seed}_train.tsv")) for seed in CROSSFIT_SEEDS
    }
    assert len(set(trains.values())) == len(CROSSFIT_SEEDS)


def test_tabs_and_newlines_in_text_are_replaced(tmp_path):
    rows = labelled_rows(per_label=4)
    rows = [(f"first\tsecond\nthird\r\nfourth {x}", y) for x, y in rows]
    src = write_csv(tmp_path / "t.csv", rows)
    out = tmp_path / "out"
    build_splits(str(src), out, "t", k=2, seeds=(87,), test_split=None)
    for name in ("t_2_87_train.tsv", "t_2_87_dev.tsv"):
        text = (out / "t" / name).read_text(encoding="utf-8")
        assert "\r" not in text
        lines = text.split("\n")[:-1]
        assert len(lines) == 6
        for line in lines:
            x, y = line.split("\t")
            assert x.startswith("first second third  fourth text ")
            assert y in LABELS


def test_class_label_ids_mapped_to_names(tmp_path):
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos", "unused"])}
    )
    data = {"sentence": [f"s{i}" for i in range(12)], "label": [i % 2 for i in range(12)]}
    path = tmp_path / "cl.parquet"
    datasets.Dataset.from_dict(data, features=features).to_parquet(str(path))
    out = tmp_path / "out"
    build_splits(str(path), out, "cl", k=2, seeds=(13,), input_column="sentence",
                 output_column="label", test_split=None)
    train = read_tsv(out / "cl" / "cl_2_13_train.tsv")
    assert Counter(r[1] for r in train) == {"neg": 2, "pos": 2}
    assert all(r[1] == ("neg" if int(r[0][1:]) % 2 == 0 else "pos") for r in train)
    meta = json.loads((out / "cl" / "task.json").read_text())
    assert meta["options"] == ["neg", "pos", "unused"]


def test_max_test_keeps_a_subset_in_original_order(tmp_path):
    train = write_csv(tmp_path / "train.csv", labelled_rows(per_label=4))
    test_rows = [(f"t{i:03d}", LABELS[i % 3]) for i in range(100)]
    test = write_csv(tmp_path / "test.csv", test_rows)
    out = tmp_path / "out"
    build_splits(str(train), out, "t", k=2, seeds=(13, 21), data_files={"test": str(test)}, max_test=10)
    a = read_tsv(out / "t" / "t_2_13_test.tsv")
    assert len(a) == 10
    assert a == sorted(a)  # original order
    assert a == read_tsv(out / "t" / "t_2_21_test.tsv")  # same test set for every seed
    assert a != [list(r) for r in test_rows[:10]]  # a random subset, not the head


def test_existing_task_dir_keeps_other_k(csv_source, tmp_path):
    out = tmp_path / "out"
    build_splits(str(csv_source), out, "t", k=4, seeds=(13,), test_split=None)
    before = (out / "t" / "t_4_13_train.tsv").read_bytes()
    build_splits(str(csv_source), out, "t", k=2, seeds=(13,), test_split=None)
    assert (out / "t" / "t_4_13_train.tsv").read_bytes() == before
    assert (out / "t" / "t_2_13_train.tsv").exists()
    assert not [p for p in (out / "t").iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- errors


def test_missing_column_error_names_it(csv_source, tmp_path):
    with pytest.raises(DataBuildError) as info:
        build_splits(str(csv_source), tmp_path / "out", "t", k=2, input_column="sentence", test_split=None)
    msg = str(info.value)
    assert "'sentence'" in msg and "'input'" in msg and "'output'" in msg and "data.csv" in msg
    assert isinstance(info.value, ValueError)
    with pytest.raises(DataBuildError, match="'label'"):
        build_splits(str(csv_source), tmp_path / "out", "t", k=2, output_column="label", test_split=None)


def test_too_few_examples_per_label(tmp_path):
    rows = labelled_rows(per_label=30, labels=("alpha", "beta")) + [(f"rare {i}", "gamma") for i in range(3)]
    src = write_csv(tmp_path / "t.csv", rows)
    out = tmp_path / "out"
    with pytest.raises(DataBuildError) as info:
        build_splits(str(src), out, "t", k=4, test_split=None)
    msg = str(info.value)
    assert "'gamma' has 3" in msg and "alpha" not in msg
    assert not out.exists()
    # exactly k examples is enough for train (dev gets fewer, with a warning)
    msgs = []
    build_splits(str(src), out, "t", k=3, seeds=(13,), test_split=None, progress=msgs.append)
    dev = read_tsv(out / "t" / "t_3_13_dev.tsv")
    assert Counter(r[1] for r in dev) == {"alpha": 3, "beta": 3}
    assert any("warning" in m and "gamma" in m for m in msgs)


def test_free_form_too_few_examples(tmp_path):
    src = write_csv(tmp_path / "qa.csv", [(f"q{i}", f"a{i}") for i in range(5)])
    with pytest.raises(DataBuildError, match="only 5 examples"):
        build_splits(str(src), tmp_path / "out", "qa", k=8, task_type="free-form", test_split=None)


def test_empty_source(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataBuildError, match="empty"):
        build_splits(str(empty), tmp_path / "out", "t", test_split=None)
    header_only = tmp_path / "header.csv"
    header_only.write_text("input,output\n")
    with pytest.raises(DataBuildError, match="empty"):
        build_splits(str(header_only), tmp_path / "out", "t", test_split=None)
    assert not (tmp_path / "out").exists()


def test_missing_file_and_unknown_task_type(csv_source, tmp_path):
    with pytest.raises(DataBuildError, match="does not exist"):
        build_splits(str(tmp_path / "nope.csv"), tmp_path / "out", "t", test_split=None)
    with pytest.raises(DataBuildError, match="unknown task_type 'regression'"):
        build_splits(str(csv_source), tmp_path / "out", "t", task_type="regression", test_split=None)
    with pytest.raises(DataBuildError, match="task name"):
        build_splits(str(csv_source), tmp_path / "out", "../escape", test_split=None)
    assert not (tmp_path / "out").exists()


def test_missing_value_is_an_error(tmp_path):
    rows = labelled_rows(per_label=5)
    rows[7] = ("", "beta")  # empty CSV cell -> None
    src = write_csv(tmp_path / "t.csv", rows)
    with pytest.raises(DataBuildError, match=r"row 7 .*'input'"):
        build_splits(str(src), tmp_path / "out", "t", k=2, test_split=None)


def test_failed_write_leaves_no_task_directory(csv_source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    calls = {"n": 0}
    real_replace = os.replace

    def flaky_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 4:  # fail part-way through the files
            raise OSError("disk full (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(databuild.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="simulated"):
        build_splits(str(csv_source), out, "t", k=2, test_split=None)
    assert calls["n"] == 4
    assert list(out.iterdir()) == []  # neither the task dir nor a temp dir


def test_failed_write_into_existing_dir_keeps_old_files(csv_source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    build_splits(str(csv_source), out, "t", k=2, seeds=(13,), test_split=None)
    before = {p.name: p.read_bytes() for p in (out / "t").iterdir()}
    calls = {"n": 0}
    real_replace = os.replace

    def flaky_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk full (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(databuild.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="simulated"):
        build_splits(str(csv_source), out, "t", k=2, seeds=(13,), task_type="free-form", test_split=None)
    assert {p.name: p.read_bytes() for p in (out / "t").iterdir()} == before


def test_prints_nothing_and_restores_progress_bars(csv_source, tmp_path, capfd):
    datasets.enable_progress_bars()
    msgs = []
    build_splits(str(csv_source), tmp_path / "out", "t", k=2, seeds=(13,), test_split=None, progress=msgs.append)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert any("seed 13: train 6, dev 6" in m for m in msgs)
    assert not datasets.are_progress_bars_disabled()


def test_empty_output_is_an_error(tmp_path):
    rows = labelled_rows(per_label=5)
    rows[4] = ("text beta 1", " ")
    src = write_csv(tmp_path / "t.csv", rows)
    with pytest.raises(DataBuildError, match=r"row 4 .*'output' is empty"):
        build_splits(str(src), tmp_path / "out", "t", k=2, test_split=None)


def test_build_that_leaves_dev_empty_is_an_error(tmp_path):
    src = write_csv(tmp_path / "t.csv", labelled_rows(per_label=4))
    with pytest.raises(DataBuildError, match="none for the dev split"):
        build_splits(str(src), tmp_path / "out", "t", k=4, test_split=None)
    qa = write_csv(tmp_path / "qa.csv", [(f"q{i}", f"a{i}") for i in range(8)])
    with pytest.raises(DataBuildError, match="only 8 examples"):
        build_splits(str(qa), tmp_path / "out", "qa", k=8, task_type="free-form", test_split=None)
    assert not (tmp_path / "out").exists()
    build_splits(str(qa), tmp_path / "out", "qa", k=7, seeds=(13,), task_type="free-form", test_split=None)
    assert len(read_tsv(tmp_path / "out" / "qa" / "qa_7_13_dev.tsv")) == 1


def test_output_is_readable_by_engine_data(tmp_path):
    data = pytest.importorskip("engine.experiment.data")
    train = write_csv(tmp_path / "train.csv", labelled_rows(per_label=10))
    test = write_csv(tmp_path / "test.csv", [(f"held out {i}", LABELS[i % 3]) for i in range(6)])
    out = tmp_path / "out"
    build_splits(str(train), out, "cls", k=3, seeds=(13, 42), data_files={"test": str(test)})
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"input": f"q{i}", "output": [f"a{i}", f"A{i}"]}) + "\n" for i in range(12)))
    build_splits(str(qa), out, "qa", k=4, seeds=(13,), task_type="free-form", test_split=None)

    td = data.TaskData(out)
    assert td.tasks() == ["cls", "qa"]
    info = td.task_info("cls")
    assert (info.task_type, info.options, info.layout) == ("classification", LABELS, "crossfit")
    assert td.seeds("cls", 3) == [13, 42]
    split = td.load_split("cls", 3, 42)
    assert len(split.train) == 9 and len(split.dev) == 9 and len(split.test) == 6
    assert all(ex.options == LABELS for ex in split.train)
    assert td.task_info("qa").task_type == "free-form"
    qa_split = td.load_split("qa", 4, 13, need_test=False)
    assert qa_split.test is None
    assert all(ex.references == [ex.output, "A" + ex.output[1:]] for ex in qa_split.train)
