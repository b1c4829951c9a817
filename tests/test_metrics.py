"""Tests for engine.experiment.metrics (CrossFit's metrics: scikit-learn, SciPy, rouge, string comparisons).

Expected values are worked out by hand in the comments, so each test pins
CrossFit's behaviour (INK-USC/CrossFit dataloader/metrics.py) rather than
comparing the module with the library it calls.
"""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from engine.experiment.metrics import (
    CROSSFIT_METRICS,
    FALLBACK_METRICS,
    METRIC_NAMES,
    compute_metric,
    metric_for_task,
    normalize_answer,
)

DATA_DIR = Path("/work/shared/data/metaicl")
CONFIG_DIR = Path("/work/shared/data/metaicl-config/tasks")


# ---------------------------------------------------------------- mapping

@pytest.mark.parametrize(
    "task, metric",
    [
        ("glue-sst2", "ACC"),
        ("superglue-cb", "ACC"),
        ("ag_news", "Classification-F1"),
        ("tweet_eval-hate", "Classification-F1"),
        ("glue-cola", "Matthew-Correlation"),
        ("mocha", "Pearson-Correlation"),
        ("app_reviews", "Pearson-Correlation"),
        ("squad-with_context", "QA-F1"),
        ("squad-no_context", "EM"),
        ("kilt_nq", "EM"),
        ("xsum", "Rouge-L"),
        ("codah", "Classification-F1"),
        ("superglue-multirc", "EM"),
    ],
)
def test_known_task_metrics(task, metric):
    assert metric_for_task(task) == metric
    # CrossFit's map wins over the task_type fallback.
    assert metric_for_task(task, "free-form") == metric


def test_crossfit_map_size_and_values():
    assert len(CROSSFIT_METRICS) == 160
    assert set(CROSSFIT_METRICS.values()) == set(METRIC_NAMES)


@pytest.mark.parametrize(
    "task_type, metric",
    [("classification", "Classification-F1"), ("multi-choice", "ACC"), ("free-form", "QA-F1")],
)
def test_fallback_for_unmapped_task(task_type, metric):
    assert "glue-stsb" not in CROSSFIT_METRICS  # CrossFit's map has no stsb entry
    assert metric_for_task("glue-stsb", task_type) == metric
    assert FALLBACK_METRICS[task_type] == metric


def test_unmapped_task_without_type_raises():
    with pytest.raises(ValueError, match="not-a-task"):
        metric_for_task("not-a-task")
    with pytest.raises(ValueError, match="not-a-task"):
        metric_for_task("not-a-task", "regression")


def test_every_metaicl_task_gets_a_metric():
    if not DATA_DIR.is_dir():
        pytest.skip(f"{DATA_DIR} not present (shared MetaICL data not laid out here)")
    tasks = sorted(p.name for p in DATA_DIR.iterdir() if p.is_dir())
    assert len(tasks) == 109
    for task in tasks:
        cfg = CONFIG_DIR / f"{task}.json"
        task_type = json.loads(cfg.read_text())["task_type"] if cfg.is_file() else None
        assert metric_for_task(task, task_type) in METRIC_NAMES, task
    # All of them come straight from CrossFit's map, no fallback needed.
    assert [t for t in tasks if t not in CROSSFIT_METRICS] == []


# ---------------------------------------------------------------- errors

def test_unknown_metric_raises_and_lists_known():
    with pytest.raises(ValueError) as exc:
        compute_metric("BLEU", ["a"], [["a"]])
    msg = str(exc.value)
    assert "BLEU" in msg
    for name in METRIC_NAMES:
        assert name in msg


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_empty_predictions_raise(metric):
    with pytest.raises(ValueError, match="empty"):
        compute_metric(metric, [], [])


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_metric("ACC", ["a", "b"], [["a"]])


def test_metric_names():
    assert METRIC_NAMES == (
        "EM", "ACC", "QA-F1", "Classification-F1",
        "Matthew-Correlation", "Pearson-Correlation", "Rouge-L",
    )


# ---------------------------------------------------------------- EM / ACC / QA-F1

def test_normalize_answer():
    assert normalize_answer("  The  Cat's   hat!  ") == "cats hat"
    assert normalize_answer("An apple, a day") == "apple day"


def test_exact_match():
    preds = ["The Cat!", "dog", "a mat"]
    refs = [["cat"], ["cats", "Dog."], ["rug"]]
    # 1 (normalised equal), 1 (second gold matches), 0
    assert compute_metric("EM", preds, refs) == pytest.approx(2 / 3)


def test_exact_match_accepts_bare_string_reference_and_empty_gold():
    assert compute_metric("EM", ["x", "y"], ["X", []]) == pytest.approx(0.5)


def test_accuracy_is_case_insensitive_only():
    preds = ["Positive", "negative ", "x"]
    refs = [["positive"], ["negative"], ["y", "X"]]
    # 1, 0 (trailing space is not stripped, as in CrossFit), 1
    assert compute_metric("ACC", preds, refs) == pytest.approx(2 / 3)


def test_qa_f1():
    # pred tokens {big, red, cat}, gold {red, cat, sat}: P = R = 2/3 -> F1 = 2/3
    assert compute_metric("QA-F1", ["the big red cat"], [["red cat sat"]]) == pytest.approx(2 / 3)
    # max over gold answers
    assert compute_metric("QA-F1", ["the big red cat"], [["red cat sat", "Big red cat."]]) == 1.0
    # no overlap; no gold at all
    assert compute_metric("QA-F1", ["dog", "dog"], [["cat"], []]) == 0.0
    # tokens count with multiplicity: "cat cat" vs "cat" -> common 1, P = 1/2, R = 1 -> 2/3
    assert compute_metric("QA-F1", ["cat cat"], [["cat"]]) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- Classification-F1

def test_classification_f1_macro_over_gold_and_predicted_labels():
    gold = [["a"], ["a"], ["b"], ["c"]]
    pred = ["a", "b", "b", "d"]
    # a: tp1 fp0 fn1 -> 2/3 ; b: tp1 fp1 fn0 -> 2/3 ; c: 0 ; d (only predicted): 0
    # macro over {a,b,c,d} = (4/3)/4 = 1/3 (over gold labels only it would be 4/9;
    # micro-F1 and support-weighted F1 would both be 1/2)
    assert compute_metric("Classification-F1", pred, gold) == pytest.approx(1 / 3)


def test_classification_f1_label_never_predicted():
    gold = [["a"], ["b"], ["c"]]
    pred = ["a", "b", "b"]
    # a: 1 ; b: tp1 fp1 fn0 -> 2/3 ; c (never predicted): 0 -> (5/3)/3 = 5/9
    assert compute_metric("Classification-F1", pred, gold) == pytest.approx(5 / 9)


def test_classification_f1_uses_first_gold_and_exact_strings():
    # only the first gold answer counts; "Pos" != "pos"
    gold = [["pos", "neg"], ["neg"]]
    pred = ["Pos", "neg"]
    # labels {pos, neg, Pos}: pos 0, neg 1, Pos 0 -> 1/3
    assert compute_metric("Classification-F1", pred, gold) == pytest.approx(1 / 3)
    assert compute_metric("Classification-F1", ["x", "y"], [["x"], ["y"]]) == 1.0


# ---------------------------------------------------------------- Matthews

def test_matthews_correlation():
    gold = [["acceptable"], ["acceptable"], ["unacceptable"], ["unacceptable"]]
    pred = [" acceptable ", "unacceptable", "unacceptable", "garbage"]
    # tp1 fn1 tn2 fp0 -> (1*2 - 0) / sqrt(1*2*2*3) = 2/sqrt(12)
    assert compute_metric("Matthew-Correlation", pred, gold) == pytest.approx(2 / math.sqrt(12))
    assert compute_metric("Matthew-Correlation", ["unacceptable", "acceptable"], [["acceptable"], ["unacceptable"]]) == pytest.approx(-1.0)


def test_matthews_gold_is_not_stripped():
    # CrossFit strips predictions only: gold " acceptable" is class 0, so
    # gold (0, 1) vs prediction (1, 0) -> -1 (stripping gold would give a constant gold -> 0)
    gold = [[" acceptable"], ["acceptable"]]
    assert compute_metric("Matthew-Correlation", ["acceptable", "unacceptable"], gold) == pytest.approx(-1.0)


@pytest.mark.filterwarnings("ignore:A single label was found")
def test_matthews_degenerate_is_zero():
    # constant prediction: (tp*tn - fp*fn) has a zero denominator -> sklearn gives 0.0
    gold = [["acceptable"], ["unacceptable"], ["acceptable"]]
    assert compute_metric("Matthew-Correlation", ["acceptable"] * 3, gold) == 0.0
    # constant prediction and gold, all correct: still 0.0, not 1.0
    assert compute_metric("Matthew-Correlation", ["acceptable"] * 2, [["acceptable"]] * 2) == 0.0


# ---------------------------------------------------------------- Pearson

def test_pearson_correlation():
    gold = [["1"], ["2"], ["3"]]
    assert compute_metric("Pearson-Correlation", ["2", "4", "6"], gold) == pytest.approx(1.0)
    assert compute_metric("Pearson-Correlation", ["3", "2", " 1 "], gold) == pytest.approx(-1.0)
    # xd = (-1,0,1), yd = (-1,1,0): 1 / sqrt(2*2) = 0.5
    assert compute_metric("Pearson-Correlation", ["1", "3", "2"], gold) == pytest.approx(0.5)


def test_pearson_is_scale_invariant_at_extreme_magnitudes():
    # same ranks as above, gold scaled by 1e200 / 1e-300: still 0.5. (The old
    # pure-Python version overflowed to 0.0 and underflowed to NaN here.)
    for scale in ("e200", "e-300"):
        gold = [["1" + scale], ["2" + scale], ["3" + scale]]
        assert compute_metric("Pearson-Correlation", ["1", "3", "2"], gold) == pytest.approx(0.5)


@pytest.mark.filterwarnings("ignore:An input array is constant")
def test_pearson_nan_cases_follow_crossfit():
    gold = [["1"], ["2"], ["3"]]
    # unparseable prediction -> NaN in CrossFit -> NaN overall (not dropped, not 0)
    assert math.isnan(compute_metric("Pearson-Correlation", ["1", "two", "3"], gold))
    assert math.isnan(compute_metric("Pearson-Correlation", ["1", "", "3"], gold))
    # constant prediction -> NaN (scipy)
    assert math.isnan(compute_metric("Pearson-Correlation", ["2", "2", "2"], gold))
    with pytest.raises(ValueError, match="at least 2"):
        compute_metric("Pearson-Correlation", ["1"], [["1"]])
    with pytest.raises(ValueError, match="not a number"):
        compute_metric("Pearson-Correlation", ["1", "2"], [["x"], ["2"]])


# ---------------------------------------------------------------- Rouge-L

def test_rouge_l_basic():
    # ref distinct tokens {the,cat,sat,on,mat} = 5, hyp 3, LCS = 3
    # R = 3/5, P = 1 -> F = 1.2 / 1.6 = 0.75
    assert compute_metric("Rouge-L", ["the cat sat"], [["the cat sat on the mat"]]) == pytest.approx(0.75)


def test_rouge_l_quirks_of_rouge_package():
    # distinct-token counting: m = n = 2 ({the, cat}), LCS {the, cat} -> ~1
    assert compute_metric("Rouge-L", ["the the cat"], [["the cat"]]) == pytest.approx(1.0)
    # case-sensitive: only "cat" is shared -> P = R = 1/2
    assert compute_metric("Rouge-L", ["The cat"], [["the cat"]]) == pytest.approx(0.5)
    # sentences split on "." with union LCS: {cat,sat} U {dog,ran} = 4 of 4
    # (a single LCS over the whole text would give 2/4 -> 0.5)
    assert compute_metric("Rouge-L", ["cat sat. dog ran"], [["dog ran cat sat"]]) == pytest.approx(1.0)
    # a perfect match is 2 * 1 / (1 + 1 + 1e-8), just under 1
    assert compute_metric("Rouge-L", ["a b"], [["a b"]]) == pytest.approx(2 / (2 + 1e-8), rel=1e-12, abs=0)
    # a "." followed by blanks leaves an empty sentence, which counts as one more
    # (empty) word: hyp words {cat, ""}, P = 1/2, R = 1 -> 2/3; "cat." has no such piece
    assert compute_metric("Rouge-L", ["cat. "], [["cat"]]) == pytest.approx(2 / 3)
    assert compute_metric("Rouge-L", ["cat . ."], [["cat"]]) == pytest.approx(2 / 3)
    assert compute_metric("Rouge-L", ["cat."], [["cat"]]) == pytest.approx(1.0)


def test_rouge_l_edge_cases_and_max_over_gold():
    # CrossFit: a prediction with no non-punctuation character scores 0
    assert compute_metric("Rouge-L", ["...", "x"], [["x"], ["x"]]) == pytest.approx(0.5)
    assert compute_metric("Rouge-L", ["", "x"], [["x"], ["x"]]) == pytest.approx(0.5)
    # a blank prediction passes that check; rouge scores its single empty word: 0
    assert compute_metric("Rouge-L", [" "], [["cat"]]) == 0.0
    assert compute_metric("Rouge-L", ["cat"], [["dog", "cat"]]) == pytest.approx(1.0)
    assert compute_metric("Rouge-L", ["cat"], [[]]) == 0.0


def test_rouge_l_gold_without_sentence_scores_zero():
    # rouge raises on a reference with no sentence (CrossFit would crash there) ...
    from rouge import Rouge

    with pytest.raises(ValueError, match="Reference is empty"):
        Rouge().get_scores("cat", ".", avg=True)
    # ... here that gold answer scores 0 and the other gold answers still count
    assert compute_metric("Rouge-L", ["cat"], [["."]]) == 0.0
    assert compute_metric("Rouge-L", ["cat"], [[""]]) == 0.0
    assert compute_metric("Rouge-L", ["cat"], [["..", "cat"]]) == pytest.approx(1.0)


@pytest.mark.parametrize("metric", ["EM", "ACC", "QA-F1", "Classification-F1", "Rouge-L"])
def test_bounded_scores(metric):
    rng = random.Random(1)
    words = ["a", "the", "cat", "dog", "sat", "."]
    preds = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 5))) for _ in range(20)]
    refs = [[" ".join(rng.choice(words) for _ in range(rng.randint(1, 5)))] for _ in range(20)]
    assert 0.0 <= compute_metric(metric, preds, refs) <= 1.0


# ---------------------------------------------------------------- imports

_IMPORT_CHECK = """
import sys
import engine.experiment.metrics as m
lazy = [n for n in ("sklearn", "scipy", "rouge") if n in sys.modules]
assert not lazy, f"imported with the module: {lazy}"
for name in m.METRIC_NAMES:
    gold = [["1"], ["2"]] if name == "Pearson-Correlation" else [["1"], ["acceptable"]]
    m.compute_metric(name, ["1", "acceptable"] if name != "Pearson-Correlation" else ["1", "3"], gold)
heavy = [n for n in ("torch", "transformers", "textual") if n in sys.modules]
assert not heavy, f"computing metrics imported {heavy}"
"""


def test_module_import_is_light_and_never_pulls_torch():
    # A fresh interpreter: other tests in this session may have imported torch.
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _IMPORT_CHECK],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr
