"""Build CrossFit-style k-shot splits from any Hugging Face ``datasets`` data set.

``build_splits`` loads a data set (a local CSV/TSV, JSON/JSONL or parquet file,
a directory of such files, or a hub name), samples k-shot train/dev splits for
each seed with CrossFit's rule, and writes them in the CrossFit layout::

    <out_dir>/<task>/<task>_<k>_<seed>_train.tsv
    <out_dir>/<task>/<task>_<k>_<seed>_dev.tsv
    <out_dir>/<task>/<task>_<k>_<seed>_test.tsv      (unless test_split is None)
    <out_dir>/<task>/task.json                       {"task_type": ..., "options": [...]}

Each TSV line is ``input<TAB>output``; a free-form example with several gold
answers is ``input<TAB>answer1<TAB>answer2 ...``.

CrossFit's sampling rule, as its code does it
---------------------------------------------
Source: INK-USC/CrossFit, ``tasks/fewshot_gym_dataset.py`` (classes
``FewshotGymClassificationDataset`` and ``FewshotGymTextToTextDataset``) and the
per-task scripts (e.g. ``tasks/glue_sst2.py``, ``tasks/squad.py``)::

    train_lines, test_lines = self.get_train_test_lines(dataset)
    np.random.seed(seed)
    np.random.shuffle(train_lines)          # list of (input, output) tuples
    # classification:
    label_list = {}                          # label -> lines, in first-seen order
    for line in train_lines: label_list.setdefault(line[-1], []).append(line)
    k_shot_train = [l for lab in label_list for l in label_list[lab][:k]]
    k_shot_dev   = [l for lab in label_list for l in label_list[lab][k:2*k]]
    # text-to-text:
    k_shot_train = train_lines[:k];  k_shot_dev = train_lines[k:2*k]
    k_shot_test  = test_lines

This module reproduces that exactly (same permutation, same grouping, same
order of lines in the files). Where the code differs from the usual summary
("random.seed(seed); k per label; test = test split"):

* The shuffle is **NumPy's** legacy global RNG (``np.random.seed`` +
  ``np.random.shuffle``), not Python's ``random``. We use a private
  ``np.random.RandomState(seed)``, which yields the identical permutation
  without touching global state.
* Classification train/dev files are **grouped by label** (all train lines of
  the first label, then the next label, ...), labels ordered by their first
  appearance in the shuffled list; lines are not reshuffled afterwards.
* Dev is taken from the same shuffled per-label lists right after train
  (``[k:2k]``), so train and dev are disjoint rows.
* CrossFit's generic default test split is ``"validation"``, not ``"test"``
  (``get_train_test_lines`` reads ``"validation"``); individual task scripts
  override it with ``"test"`` or carve a test set out of train. Here the test
  split is ``test_split`` (default ``"test"``); if that default is missing
  but a ``"validation"`` split exists, validation is used, as CrossFit would.
  The test split is written complete and in its original order, identical for
  every seed.
* CrossFit never fails on too few examples: a label with fewer than k (or 2k)
  examples just gets fewer lines. Here a label with fewer than k examples (for
  free-form tasks: a train split of k examples or fewer) raises
  ``DataBuildError``, and so does a build that would leave the dev split empty
  (``engine.experiment.data`` rejects empty split files); between k and 2k the dev split
  is short, as in CrossFit, and a warning goes through ``progress``.
* Missing values (None) and empty outputs raise ``DataBuildError``; the
  reader (``engine.experiment.data``) rejects TSV lines without an output.
* Seeds are [100, 13, 21, 42, 87]; CrossFit uses k=16 for classification and
  often k=32 for text-to-text tasks (e.g. SQuAD) -- k is a parameter here.
* CrossFit joins several answers with ``"\\t".join(set(answers))`` (order
  varies between runs because of string hash randomisation); we keep the first
  occurrence order of the answers instead, so output is reproducible.
* CrossFit's per-task ``clean()`` strips and collapses whitespace; here only
  tabs and line breaks are replaced by spaces (nothing else is changed).

Other choices
-------------
* ``max_test`` keeps a random subset (fixed ``RandomState(42)``, like
  CrossFit's hand-made test splits) of at most that many test examples, written
  in original order -- never "the first n", since many test splits are sorted
  by label.
* ``task.json``'s ``options`` are the sorted label strings seen in the train
  and test splits, plus every name of a ``ClassLabel`` output feature.
* Nothing is written until everything has been loaded, validated and sampled.
  A new task directory is built in a hidden temporary directory next to it and
  renamed into place; into an existing task directory (e.g. another k), every
  file is written to a temporary file first and then moved with ``os.replace``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from engine.experiment.data import PAPER_SEEDS

__all__ = [
    "CROSSFIT_SEEDS",
    "DataBuildError",
    "build_splits",
    "clean_text",
    "crossfit_permutation",
    "normalize_task_type",
    "sample_k_shot",
]

CROSSFIT_SEEDS: tuple[int, ...] = PAPER_SEEDS

CLASSIFICATION = "classification"
FREE_FORM = "free-form"
_TASK_TYPES = {
    "classification": CLASSIFICATION,
    "free-form": FREE_FORM,
    "freeform": FREE_FORM,
    "free form": FREE_FORM,
    "text-to-text": FREE_FORM,
    "text to text": FREE_FORM,
    "text2text": FREE_FORM,
    "generation": FREE_FORM,
}

# Everything str.splitlines() treats as a line boundary, plus the tab.
_BREAKS = "\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_BREAK_TABLE = str.maketrans({c: " " for c in _BREAKS})

_FORMATS = {  # data_format / suffix -> (datasets builder, extra kwargs)
    "csv": ("csv", {}),
    "tsv": ("csv", {"sep": "\t"}),
    "json": ("json", {}),
    "jsonl": ("json", {}),
    "ndjson": ("json", {}),
    "parquet": ("parquet", {}),
}
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4"}

Row = tuple[str, str]  # (input, output field; answers already joined by tabs)
Progress = Callable[[str], None]


class DataBuildError(ValueError):
    """A data set cannot be turned into k-shot splits (message says why)."""


# --------------------------------------------------------------------------
# small pure helpers


def normalize_task_type(task_type: str) -> str:
    """Return ``"classification"`` or ``"free-form"``; aliases such as
    ``"text-to-text"`` (CrossFit's name) map to ``"free-form"``."""
    key = str(task_type).strip().lower().replace("_", "-")
    if key in _TASK_TYPES:
        return _TASK_TYPES[key]
    key = key.replace("-", " ")
    if key in _TASK_TYPES:
        return _TASK_TYPES[key]
    raise DataBuildError(
        f"unknown task_type {task_type!r}; use 'classification' or 'free-form' "
        "(multi-choice tasks need per-example options, which the TSV layout cannot hold); "
        f"aliases: {', '.join(sorted(k for k in _TASK_TYPES if k != 'classification'))}"
    )


def clean_text(text: str) -> str:
    """Replace tabs and every kind of line break by a space (one example per line)."""
    return text.translate(_BREAK_TABLE)


def crossfit_permutation(n: int, seed: int) -> list[int]:
    """Indices in the order ``np.random.seed(seed); np.random.shuffle(lst)`` leaves
    a list of length ``n`` -- CrossFit's shuffle, without touching global state."""
    order = list(range(n))
    np.random.RandomState(seed).shuffle(order)
    return order


def sample_k_shot(rows: Sequence[Row], k: int, seed: int, task_type: str) -> tuple[list[Row], list[Row]]:
    """CrossFit's k-shot rule: shuffle with ``seed``; classification takes the
    first k rows of each label (labels in first-seen order) for train and the
    next k for dev; free-form takes the first k rows for train and the next k
    for dev. No minimum-count checks here (CrossFit has none)."""
    kind = normalize_task_type(task_type)
    shuffled = [rows[i] for i in crossfit_permutation(len(rows), seed)]
    if kind == FREE_FORM:
        return shuffled[:k], shuffled[k : 2 * k]
    groups: dict[str, list[Row]] = {}
    for row in shuffled:
        groups.setdefault(row[-1], []).append(row)
    train = [row for lines in groups.values() for row in lines[:k]]
    dev = [row for lines in groups.values() for row in lines[k : 2 * k]]
    return train, dev


# --------------------------------------------------------------------------
# loading


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Silence datasets' progress bars and warnings; restore them afterwards."""
    import datasets
    from datasets.utils import logging as ds_logging

    bars_were_on = not datasets.are_progress_bars_disabled()
    verbosity = ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity_error()
    try:
        yield
    finally:
        ds_logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()


def _format_of(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1].lstrip(".") in _FORMATS:
        return suffixes[-1].lstrip(".")
    return None


def _builder(fmt: str, where: str) -> tuple[str, dict]:
    key = fmt.strip().lower().lstrip(".")
    if key not in _FORMATS:
        raise DataBuildError(
            f"unknown data format {fmt!r} for {where}; use one of {', '.join(sorted(_FORMATS))}"
        )
    name, kwargs = _FORMATS[key]
    return name, dict(kwargs)


def _first_file(data_files: dict) -> str | None:
    for value in data_files.values():
        if isinstance(value, (list, tuple)):
            if value:
                return str(value[0])
        elif value:
            return str(value)
    return None


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith((".", "/", "~", "\\"))
        or os.path.isabs(source)
        or _format_of(Path(source)) is not None
    )


def _load(source: str, *, data_files: dict | None, data_format: str | None, train_split: str):
    """Return a ``datasets.DatasetDict`` (or raise DataBuildError)."""
    import datasets

    path = Path(source).expanduser()
    if path.exists():
        if path.is_file():
            if path.stat().st_size == 0:
                raise DataBuildError(f"source file {str(path)!r} is empty")
            fmt = data_format or _format_of(path)
            if fmt is None:
                raise DataBuildError(
                    f"cannot tell the format of {str(path)!r} from its suffix; "
                    f"pass data_format (one of {', '.join(sorted(_FORMATS))})"
                )
            builder, kwargs = _builder(fmt, repr(str(path)))
            files: dict = {train_split: str(path)}
            files.update(data_files or {})
            args: tuple = (builder,)
            kwargs["data_files"] = files
        else:
            if data_format is None and data_files:
                first = _first_file(data_files)
                data_format = _format_of(Path(first)) if first else None
            if data_format is not None:
                builder, kwargs = _builder(data_format, repr(str(path)))
                args = (builder,)
                kwargs["data_dir"] = str(path)
            else:
                args, kwargs = (str(path),), {}
            if data_files:
                kwargs["data_files"] = data_files
    else:
        if _looks_like_path(source) and not data_files:
            raise DataBuildError(f"source file or directory {source!r} does not exist")
        if data_format is not None:
            if not data_files:
                raise DataBuildError(
                    f"data_format={data_format!r} needs a local source or data_files; "
                    f"{source!r} does not exist"
                )
            builder, kwargs = _builder(data_format, repr(source))
            args = (builder,)
            kwargs["data_files"] = data_files
        else:
            name, config = source, None
            if ":" in source and "://" not in source:
                name, config = source.split(":", 1)
            args = (name, config) if config else (name,)
            kwargs = {"data_files": data_files} if data_files else {}

    try:
        with _quiet_datasets():
            loaded = datasets.load_dataset(*args, **kwargs)
    except DataBuildError:
        raise
    except Exception as exc:  # datasets raises many kinds; report them uniformly
        if "corresponds to no data" in str(exc):
            raise DataBuildError(f"source {source!r} is empty (no rows): {exc}") from exc
        raise DataBuildError(f"could not load data set {source!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({train_split: loaded})
    return loaded


# --------------------------------------------------------------------------
# conversion


def _class_label_names(feature: Any) -> list[str] | None:
    from datasets import ClassLabel

    if isinstance(feature, ClassLabel):
        return list(feature.names)
    inner = getattr(feature, "feature", None)
    if isinstance(inner, ClassLabel):
        return list(inner.names)
    return None


def _to_text(value: Any, names: list[str] | None, where: str) -> str:
    if value is None:
        raise DataBuildError(f"{where} is empty (missing value)")
    if names is not None and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if 0 <= int(value) < len(names):
            return clean_text(names[int(value)])
        raise DataBuildError(
            f"{where} has label id {int(value)}, which is not a class of {names} "
            "(unlabelled split? hub test splits often use -1; use the validation split)"
        )
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return clean_text(str(value))


def _answers(value: Any, names: list[str] | None, where: str) -> list[str]:
    """Gold answers of one free-form example (a list column gives several)."""
    if isinstance(value, dict) and "text" in value:  # SQuAD-style {"text": [...], ...}
        value = value["text"]
    if isinstance(value, (list, tuple, np.ndarray)):
        seen: dict[str, None] = {}
        for i, item in enumerate(value):
            text = _to_text(item, names, f"{where} (answer {i})")
            if text.strip():
                seen.setdefault(text, None)
        if not seen:
            raise DataBuildError(f"{where} has no non-empty answer")
        return list(seen)
    return [_to_text(value, names, where)]


def _convert(ds, split: str, source: str, input_column: str, output_column: str, kind: str) -> list[Row]:
    columns = list(ds.column_names)
    for role, column in (("input_column", input_column), ("output_column", output_column)):
        if column not in columns:
            raise DataBuildError(
                f"{role} {column!r} not found in split {split!r} of {source!r}; "
                f"available columns: {', '.join(map(repr, columns))}"
            )
    in_names = _class_label_names(ds.features[input_column])
    out_names = _class_label_names(ds.features[output_column])
    inputs = ds[input_column]
    outputs = ds[output_column]
    rows: list[Row] = []
    for i, (x, y) in enumerate(zip(inputs, outputs)):
        x_text = _to_text(x, in_names, f"row {i} of split {split!r} of {source!r}, column {input_column!r}")
        where_y = f"row {i} of split {split!r} of {source!r}, column {output_column!r}"
        if kind == CLASSIFICATION:
            if isinstance(y, (list, tuple, dict, np.ndarray)):
                raise DataBuildError(
                    f"{where_y} holds {type(y).__name__} value {y!r}; a classification label must "
                    "be a single value (use task_type='free-form' for several answers)"
                )
            y_text = _to_text(y, out_names, where_y)
        else:
            y_text = "\t".join(_answers(y, out_names, where_y))
        if not y_text.strip():
            raise DataBuildError(f"{where_y} is empty (every example needs an output)")
        rows.append((x_text, y_text))
    return rows


def _choose_test_split(splits: Sequence[str], test_split: str | None, source: str, note: Progress) -> str | None:
    if test_split is None:
        return None
    if test_split in splits:
        return test_split
    if test_split == "test" and "validation" in splits:
        note(f"{source}: no 'test' split, using 'validation' as the test split (CrossFit's default)")
        return "validation"
    raise DataBuildError(
        f"test split {test_split!r} not found in {source!r}; available splits: "
        f"{', '.join(map(repr, splits))} (pass test_split=None to write no test file)"
    )


# --------------------------------------------------------------------------
# writing


def _file_mode(directory: bool) -> int:
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def _write_temp(directory: Path, name: str, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode(False))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _write_task_dir(out_dir: Path, task: str, files: dict[str, str]) -> list[Path]:
    created_out_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / task
    try:
        if not target.exists():
            tmp_dir = Path(tempfile.mkdtemp(prefix=f".{task}.", suffix=".tmp", dir=out_dir))
            try:
                for name, text in files.items():
                    os.replace(_write_temp(tmp_dir, name, text), tmp_dir / name)
                os.chmod(tmp_dir, _file_mode(True))
                os.rename(tmp_dir, target)
            except BaseException:
                shutil.rmtree(tmp_dir, ignore_errors=True)
                raise
        else:
            if not target.is_dir():
                raise DataBuildError(f"{str(target)!r} exists and is not a directory")
            temps: dict[str, Path] = {}
            try:
                for name, text in files.items():
                    temps[name] = _write_temp(target, name, text)
                for name in list(temps):
                    os.replace(temps[name], target / name)
                    del temps[name]
            except BaseException:
                for tmp in temps.values():
                    tmp.unlink(missing_ok=True)
                raise
    except BaseException:
        if created_out_dir:
            try:
                out_dir.rmdir()
            except OSError:
                pass
        raise
    return [target / name for name in files]


def _tsv(rows: Iterable[Row]) -> str:
    return "".join(f"{x}\t{y}\n" for x, y in rows)


# --------------------------------------------------------------------------
# the entry point


def _check_task_name(task: str) -> None:
    if (
        not isinstance(task, str)
        or not task
        or task in (".", "..")
        or task.startswith(".")
        or any(c in task for c in "/\\\0")
        or any(c in task for c in _BREAKS)
    ):
        raise DataBuildError(f"invalid task name {task!r}: it must be a plain directory name")


def build_splits(
    source: str,
    out_dir: Path,
    task: str,
    *,
    k: int = 16,
    seeds: Iterable[int] = CROSSFIT_SEEDS,
    input_column: str = "input",
    output_column: str = "output",
    task_type: str = "classification",
    train_split: str = "train",
    test_split: str | None = "test",
    data_files: dict | None = None,
    max_test: int | None = None,
    data_format: str | None = None,
    progress: Progress | None = None,
) -> list[Path]:
    """Build ``<out_dir>/<task>/<task>_<k>_<seed>_{train,dev,test}.tsv`` (+ task.json).

    ``source``: a local file (CSV, TSV, JSON/JSONL, parquet -- by suffix, or
    ``data_format``), a local directory (split names inferred from the file
    names, e.g. ``train.csv``/``test.csv``), or a hub data set name
    (``"name"`` or ``"name:config"``). ``data_files`` maps split names to files
    (relative to ``source`` when it is a directory); with a file ``source`` it
    adds splits to it, the file itself being ``train_split``.

    ``task_type``: ``"classification"`` (k rows per label) or ``"free-form"``
    (alias ``"text-to-text"``; first k rows). See the module docstring for the
    exact CrossFit rule. ``test_split=None`` writes no test file. ``progress``
    receives human-readable status and warning lines.

    Returns the written paths (per seed train, dev[, test], then task.json).
    Raises ``DataBuildError`` (a ``ValueError``) before writing anything if the
    input is unusable.
    """
    note: Progress = progress or (lambda _msg: None)

    kind = normalize_task_type(task_type)
    _check_task_name(task)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataBuildError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    seed_list: list[int] = []
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
            raise DataBuildError(f"seeds must be integers in [0, 2**32), got {seed!r}")
        if int(seed) not in seed_list:
            seed_list.append(int(seed))
    if not seed_list:
        raise DataBuildError("no seeds given")
    if max_test is not None and (isinstance(max_test, bool) or not isinstance(max_test, int) or max_test < 1):
        raise DataBuildError(f"max_test must be a positive integer or None, got {max_test!r}")
    out_dir = Path(out_dir).expanduser()

    # ---- load and convert (nothing written yet)
    note(f"loading {source}")
    loaded = _load(str(source), data_files=data_files, data_format=data_format, train_split=train_split)
    splits = list(loaded.keys())
    if train_split not in splits:
        raise DataBuildError(
            f"train split {train_split!r} not found in {source!r}; available splits: "
            f"{', '.join(map(repr, splits))}"
        )
    test_name = _choose_test_split(splits, test_split, str(source), note)
    if test_name == train_split:
        note(f"warning: the test split is the train split {train_split!r}; test will overlap train/dev")

    train_ds = loaded[train_split]
    if train_ds.num_rows == 0:
        raise DataBuildError(f"split {train_split!r} of {source!r} is empty (no rows)")
    train_rows = _convert(train_ds, train_split, str(source), input_column, output_column, kind)

    test_rows: list[Row] | None = None
    if test_name is not None:
        test_ds = loaded[test_name]
        test_rows = _convert(test_ds, test_name, str(source), input_column, output_column, kind)
        if not test_rows:
            raise DataBuildError(f"test split {test_name!r} of {source!r} is empty (no rows)")
        if max_test is not None and len(test_rows) > max_test:
            keep = sorted(crossfit_permutation(len(test_rows), 42)[:max_test])
            test_rows = [test_rows[i] for i in keep]
            note(f"test split {test_name!r}: kept {max_test} of {len(test_ds)} examples (seed 42)")

    # ---- size checks (seed independent)
    options: list[str] = []
    if kind == CLASSIFICATION:
        counts: dict[str, int] = {}
        for _, label in train_rows:
            counts[label] = counts.get(label, 0) + 1
        short = {label: n for label, n in counts.items() if n < k}
        if short:
            detail = ", ".join(f"{label!r} has {n}" for label, n in sorted(short.items()))
            raise DataBuildError(
                f"too few examples per label in split {train_split!r} of {source!r} "
                f"(column {output_column!r}) for k={k}: {detail}; each label needs at least {k} "
                f"(and {2 * k} for a full dev split)"
            )
        if all(n == k for n in counts.values()):
            raise DataBuildError(
                f"split {train_split!r} of {source!r} has exactly k={k} examples of every label, "
                f"which leaves none for the dev split; use a smaller k (up to {k // 2} gives a full dev split)"
            )
        thin = {label: n for label, n in counts.items() if n < 2 * k}
        if thin:
            detail = ", ".join(f"{label!r} has {n}" for label, n in sorted(thin.items()))
            note(f"warning: dev split will have fewer than k={k} examples for some labels ({detail})")
        label_set = set(counts)
        if test_rows is not None:
            unseen = {label for _, label in test_rows} - label_set
            if unseen:
                note(f"warning: test labels not in the train split: {sorted(unseen)}")
            label_set |= {label for _, label in test_rows}
        names = _class_label_names(train_ds.features[output_column])
        if names:
            label_set |= {clean_text(n) for n in names}
        options = sorted(label_set)
    else:
        if len(train_rows) <= k:
            raise DataBuildError(
                f"split {train_split!r} of {source!r} has only {len(train_rows)} examples; k={k} needs "
                f"more than {k} (and {2 * k} for a full dev split)"
            )
        if len(train_rows) < 2 * k:
            note(f"warning: dev split will have {len(train_rows) - k} examples, fewer than k={k}")

    # ---- sample every seed, then write everything at once
    files: dict[str, str] = {}
    test_text = _tsv(test_rows) if test_rows is not None else None
    for seed in seed_list:
        train, dev = sample_k_shot(train_rows, k, seed, kind)
        prefix = f"{task}_{k}_{seed}"
        files[f"{prefix}_train.tsv"] = _tsv(train)
        files[f"{prefix}_dev.tsv"] = _tsv(dev)
        if test_text is not None:
            files[f"{prefix}_test.tsv"] = test_text
        note(
            f"seed {seed}: train {len(train)}, dev {len(dev)}"
            + (f", test {len(test_rows)}" if test_rows is not None else "")
        )
    files["task.json"] = json.dumps({"task_type": kind, "options": options}, ensure_ascii=False, indent=2) + "\n"

    written = _write_task_dir(out_dir, task, files)
    note(f"wrote {len(written)} files to {out_dir / task}")
    return written
