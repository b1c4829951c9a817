#!/usr/bin/env python3
"""Build the demo preset's few-shot split files from the hand-written pools.

    python presets/demo-data/make_splits.py

Reads   pools/<task>.tsv                       (`input<TAB>label`, 96 lines)
Writes  tasks/<task>/<task>_16_<seed>_{train,dev,test}.jsonl   seeds 1 2 3
        config/tasks/<task>.json
        config/demo.json

Rules (see README.md):
  * lines 1-48 of a pool are the train/dev pool, lines 49-96 are the test set;
    both halves must be balanced across the task's labels;
  * per seed, random.Random(seed) draws k=16 train examples and then 16 dev
    examples from the train/dev pool, disjoint, balanced per label as far as
    possible (16 // n_labels each, the remainder to labels drawn at random);
  * test is the whole second half, in one fixed shuffled order, identical for
    every seed;
  * the output is deterministic: running the script twice gives the same bytes.

Only the standard library is used.
"""

import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
POOLS = HERE / "pools"
OUT_DATA = HERE / "tasks"
OUT_CONFIG = HERE / "config"

K = 16
SEEDS = (1, 2, 3)
POOL_SIZE = 96
HALF = POOL_SIZE // 2
TEST_ORDER_SEED = 0

# Source tasks (the soft prompt is trained on these) and target tasks.
SOURCE_TASKS = (
    "demo-movie_sentiment",
    "demo-news_topic",
    "demo-spam",
    "demo-question_or_statement",
)
TARGET_TASKS = (
    "demo-product_sentiment",
    "demo-emotion",
    "demo-formality",
)

# Field prefix put in front of every input, in the style of the MetaICL data.
PREFIX = {
    "demo-movie_sentiment": "review: ",
    "demo-news_topic": "headline: ",
    "demo-spam": "message: ",
    "demo-question_or_statement": "sentence: ",
    "demo-product_sentiment": "review: ",
    "demo-emotion": "text: ",
    "demo-formality": "sentence: ",
}

# The label set of every task (written out so that a typo in a pool fails).
LABELS = {
    "demo-movie_sentiment": ["negative", "positive"],
    "demo-news_topic": ["business", "science", "sports", "world"],
    "demo-spam": ["ham", "spam"],
    "demo-question_or_statement": ["question", "statement"],
    "demo-product_sentiment": ["negative", "positive"],
    "demo-emotion": ["anger", "joy", "sadness"],
    "demo-formality": ["formal", "informal"],
}


def normalize(text):
    """Key used for the duplicate check: lowercase letters and digits only."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def read_pool(task):
    path = POOLS / f"{task}.tsv"
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            assert len(parts) == 2, f"{path}:{lineno}: expected input<TAB>label"
            text, label = parts[0].strip(), parts[1].strip()
            assert text, f"{path}:{lineno}: empty input"
            assert text.isascii(), f"{path}:{lineno}: non-ASCII input"
            assert label in LABELS[task], f"{path}:{lineno}: unknown label {label!r}"
            rows.append((text, label))
    return rows


def check_pool(task, rows):
    labels = LABELS[task]
    assert len(rows) == POOL_SIZE, f"{task}: {len(rows)} rows, expected {POOL_SIZE}"
    seen = {}
    for i, (text, _) in enumerate(rows):
        key = normalize(text)
        assert key not in seen, (
            f"{task}: duplicate input on lines {seen[key] + 1} and {i + 1}: {text!r}")
        seen[key] = i
    for name, half in (("train/dev pool", rows[:HALF]), ("test set", rows[HALF:])):
        counts = Counter(label for _, label in half)
        want = HALF // len(labels)
        assert HALF % len(labels) == 0
        assert all(counts[l] == want for l in labels), (
            f"{task}: {name} is not balanced: {dict(counts)}")


def balanced_counts(rng, labels, k):
    base, rem = divmod(k, len(labels))
    extra = set(rng.sample(labels, rem))
    return {l: base + (l in extra) for l in labels}


def draw_train_dev(task, pool, seed):
    """Disjoint train and dev sets of K examples each, balanced per label."""
    rng = random.Random(seed)
    labels = LABELS[task]
    by_label = {l: [i for i, (_, lab) in enumerate(pool) if lab == l] for l in labels}
    for l in labels:
        rng.shuffle(by_label[l])
    splits = []
    taken = {l: 0 for l in labels}
    for _ in ("train", "dev"):
        counts = balanced_counts(rng, labels, K)
        picked = []
        for l in labels:
            n = counts[l]
            assert taken[l] + n <= len(by_label[l]), f"{task}: not enough {l!r} examples"
            picked += by_label[l][taken[l]:taken[l] + n]
            taken[l] += n
        rng.shuffle(picked)
        splits.append([pool[i] for i in picked])
    return splits


def record(task, text, label):
    return {"task": task, "input": PREFIX[task] + text, "output": label,
            "options": LABELS[task]}


def write_jsonl(path, task, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for text, label in rows:
            f.write(json.dumps(record(task, text, label)) + "\n")


def write_json(path, obj, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(obj, **kw) + "\n")


def verify(task):
    """Re-read what was written and check the layout's invariants."""
    options = LABELS[task]
    cfg = json.loads((OUT_CONFIG / "tasks" / f"{task}.json").read_text())
    assert cfg == {"task_type": "classification", "options": options}, task
    test_inputs = None
    for seed in SEEDS:
        split_inputs = {}
        for split, n in (("train", K), ("dev", K), ("test", HALF)):
            path = OUT_DATA / task / f"{task}_{K}_{seed}_{split}.jsonl"
            lines = path.read_text(encoding="utf-8").splitlines()
            assert len(lines) == n, f"{path}: {len(lines)} lines, expected {n}"
            items = [json.loads(line) for line in lines]
            for it in items:
                assert list(it) == ["task", "input", "output", "options"], path
                assert it["task"] == task and it["options"] == options, path
                assert it["output"] in options, path
            inputs = [it["input"] for it in items]
            assert len(set(inputs)) == len(inputs), f"{path}: repeated input"
            split_inputs[split] = set(inputs)
        assert not split_inputs["train"] & split_inputs["dev"], f"{task} {seed}: train/dev overlap"
        assert not (split_inputs["train"] | split_inputs["dev"]) & split_inputs["test"], (
            f"{task} {seed}: train/dev overlap test")
        if test_inputs is None:
            test_inputs = split_inputs["test"]
        assert split_inputs["test"] == test_inputs, f"{task}: test differs between seeds"


def main():
    tasks = list(SOURCE_TASKS) + list(TARGET_TASKS)
    assert sorted(tasks) == sorted(LABELS) == sorted(PREFIX)
    on_disk = sorted(p.stem for p in POOLS.glob("*.tsv"))
    assert on_disk == sorted(tasks), f"pools on disk {on_disk} do not match the task list"

    for task in tasks:
        rows = read_pool(task)
        check_pool(task, rows)
        pool, test = rows[:HALF], rows[HALF:]
        test = list(test)
        random.Random(TEST_ORDER_SEED).shuffle(test)
        for seed in SEEDS:
            train, dev = draw_train_dev(task, pool, seed)
            base = OUT_DATA / task / f"{task}_{K}_{seed}"
            write_jsonl(Path(f"{base}_train.jsonl"), task, train)
            write_jsonl(Path(f"{base}_dev.jsonl"), task, dev)
            write_jsonl(Path(f"{base}_test.jsonl"), task, test)
        write_json(OUT_CONFIG / "tasks" / f"{task}.json",
                   {"task_type": "classification", "options": LABELS[task]})
        verify(task)

    write_json(OUT_CONFIG / "demo.json",
               {"train": list(SOURCE_TASKS), "test": list(TARGET_TASKS)}, indent=1)
    n_files = sum(1 for _ in OUT_DATA.rglob("*.jsonl"))
    print(f"wrote {n_files} split files for {len(tasks)} tasks under {OUT_DATA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
