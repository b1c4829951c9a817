"""CrossFit per-task evaluation metrics, computed the way CrossFit computes them.

The meta prompt tuning paper (Qin et al., ACL 2023) scores CrossFit tasks with
CrossFit's own metrics. This module copies CrossFit's task -> metric map and
scores each metric as CrossFit's ``evaluate`` does.

Reference implementation: INK-USC/CrossFit, ``dataloader/metrics.py`` at
commit 76f165ba011ecdc98a73502cde43655006b12ef9 (later commits only fix the
``accruacy`` typo; the authors' fork qcwthu/transferfile, master,
``allcode_0628/CrossFit/dataloader/metrics.py``, is the same code).

Which library computes what, as in CrossFit:

* Classification-F1: scikit-learn ``f1_score(gold, pred, average="macro")``,
  gold = first answer, strings compared as they are.
* Matthew-Correlation: scikit-learn ``matthews_corrcoef`` on CrossFit's CoLA
  binarisation ("acceptable" -> 1.0, anything else -> 0.0; predictions are
  stripped, gold is not).
* Pearson-Correlation: SciPy ``pearsonr(gold, pred)[0]``; a prediction that
  does not parse as a float becomes NaN (so the score is NaN).
* Rouge-L: the ``rouge`` package (CrossFit's README pins ``rouge==1.0.0``),
  ``Rouge().get_scores(pred, gold, avg=True)["rouge-l"]["f"]``, max over gold
  answers; 0 for a prediction with no non-punctuation character. One
  deviation: a gold answer with no sentence for rouge (empty, or only dots)
  scores 0, where rouge raises and CrossFit's evaluation would stop.
* EM, ACC, QA-F1: CrossFit's own string comparisons, reproduced here (SQuAD
  normalisation for EM and QA-F1; case-insensitive equality for ACC), max over
  gold answers.

The libraries are imported when a metric that needs them is first computed,
so importing this module stays cheap.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Callable, Sequence

import numpy as np

# Metric names exactly as CrossFit spells them.
METRIC_NAMES = (
    "EM",
    "ACC",
    "QA-F1",
    "Classification-F1",
    "Matthew-Correlation",
    "Pearson-Correlation",
    "Rouge-L",
)

# Copied verbatim from INK-USC/CrossFit dataloader/metrics.py, dict METRICS
# (commit 76f165ba011ecdc98a73502cde43655006b12ef9).
CROSSFIT_METRICS: dict[str, str] = {
    'acronym_identification': 'EM',
    'ade_corpus_v2-classification': 'Classification-F1',
    'ade_corpus_v2-dosage': 'EM',
    'ade_corpus_v2-effect': 'EM',
    'adversarialqa': 'QA-F1',
    'aeslc': 'Rouge-L',
    'ag_news': 'Classification-F1',
    'ai2_arc': 'ACC',
    'amazon_polarity': 'Classification-F1',
    'anli': 'Classification-F1',
    'app_reviews': 'Pearson-Correlation',
    'aqua_rat': 'ACC',
    'art': 'ACC',
    'aslg_pc12': 'EM',
    'biomrc': 'QA-F1',
    'blimp-anaphor_gender_agreement': 'ACC',
    'blimp-anaphor_number_agreement': 'ACC',
    'blimp-determiner_noun_agreement_with_adj_irregular_1': 'ACC',
    'blimp-ellipsis_n_bar_1': 'ACC',
    'blimp-ellipsis_n_bar_2': 'ACC',
    'blimp-existential_there_quantifiers_1': 'ACC',
    'blimp-irregular_past_participle_adjectives': 'ACC',
    'blimp-sentential_negation_npi_licensor_present': 'ACC',
    'blimp-sentential_negation_npi_scope': 'ACC',
    'blimp-wh_questions_object_gap': 'ACC',
    'boolq': 'ACC',
    'break-QDMR': 'EM',
    'break-QDMR-high-level': 'EM',
    'circa': 'Classification-F1',
    'climate_fever': 'Classification-F1',
    'codah': 'Classification-F1',
    'common_gen': 'Rouge-L',
    'commonsense_qa': 'ACC',
    'cos_e': 'Rouge-L',
    'cosmos_qa': 'ACC',
    'crawl_domain': 'EM',
    'crows_pairs': 'ACC',
    'dbpedia_14': 'Classification-F1',
    'definite_pronoun_resolution': 'ACC',
    'discovery': 'Classification-F1',
    'dream': 'ACC',
    'duorc': 'QA-F1',
    'e2e_nlg_cleaned': 'Rouge-L',
    'eli5-askh': 'Rouge-L',
    'eli5-asks': 'Rouge-L',  # dev
    'eli5-eli5': 'Rouge-L',
    'emo': 'Classification-F1',
    'emotion': 'Classification-F1',
    'empathetic_dialogues': 'Rouge-L',
    'ethos-directed_vs_generalized': 'Classification-F1',
    'ethos-disability': 'Classification-F1',
    'ethos-gender': 'Classification-F1',
    'ethos-national_origin': 'Classification-F1',
    'ethos-race': 'Classification-F1',
    'ethos-religion': 'Classification-F1',
    'ethos-sexual_orientation': 'Classification-F1',
    'financial_phrasebank': 'Classification-F1',
    'freebase_qa': 'EM',
    'gigaword': 'Rouge-L',
    'glue-cola': 'Matthew-Correlation',
    'glue-mnli': 'ACC',
    'glue-mrpc': 'ACC',
    'glue-qnli': 'ACC',
    'glue-qqp': 'ACC',
    'glue-rte': 'ACC',
    'glue-sst2': 'ACC',
    'glue-wnli': 'ACC',
    'google_wellformed_query': 'ACC',
    'hate_speech18': 'Classification-F1',
    'hate_speech_offensive': 'Classification-F1',
    'hatexplain': 'Classification-F1',
    'health_fact': 'Classification-F1',
    'hellaswag': 'ACC',
    'hotpot_qa': 'QA-F1',
    'imdb': 'Classification-F1',
    'jeopardy': 'EM',
    'kilt_ay2': 'EM',
    'kilt_fever': 'ACC',
    'kilt_hotpotqa': 'EM',
    'kilt_nq': 'EM',
    'kilt_trex': 'EM',
    'kilt_wow': 'Rouge-L',
    'kilt_zsre': 'EM',
    'lama-conceptnet': 'EM',
    'lama-google_re': 'EM',
    'lama-squad': 'EM',
    'lama-trex': 'EM',
    'liar': 'Classification-F1',
    'limit': 'EM',
    'math_qa': 'ACC',
    'mc_taco': 'ACC',
    'medical_questions_pairs': 'ACC',
    'mocha': 'Pearson-Correlation',
    'multi_news': 'Rouge-L',
    'numer_sense': 'EM',
    'onestop_english': 'Classification-F1',
    'openbookqa': 'ACC',
    'paws': 'Classification-F1',
    'piqa': 'ACC',
    'poem_sentiment': 'Classification-F1',
    'proto_qa': 'EM',  # here
    'qa_srl': 'EM',
    'qasc': 'ACC',
    'quail': 'ACC',
    'quarel': 'ACC',
    'quartz-no_knowledge': 'ACC',
    'quartz-with_knowledge': 'ACC',
    'quoref': 'QA-F1',
    'race-high': 'ACC',
    'race-middle': 'ACC',
    'reddit_tifu-title': 'Rouge-L',
    'reddit_tifu-tldr': 'Rouge-L',
    'ropes': 'QA-F1',
    'rotten_tomatoes': 'Classification-F1',
    'samsum': 'Rouge-L',
    'scicite': 'Classification-F1',
    'sciq': 'ACC',
    'scitail': 'Classification-F1',
    'search_qa': 'EM',
    'sick': 'Classification-F1',
    'sms_spam': 'Classification-F1',
    'social_i_qa': 'ACC',
    'spider': 'EM',
    'squad-with_context': 'QA-F1',
    'squad-no_context': 'EM',
    'superglue-cb': 'ACC',
    'superglue-copa': 'ACC',
    'superglue-multirc': 'EM',
    'superglue-record': 'QA-F1',
    'superglue-rte': 'ACC',
    'superglue-wic': 'ACC',
    'superglue-wsc': 'ACC',
    'swag': 'ACC',
    'tab_fact': 'Classification-F1',
    'trec': 'Classification-F1',
    'trec-finegrained': 'Classification-F1',
    'tweet_eval-emoji': 'Classification-F1',
    'tweet_eval-emotion': 'Classification-F1',
    'tweet_eval-hate': 'Classification-F1',
    'tweet_eval-irony': 'Classification-F1',
    'tweet_eval-offensive': 'Classification-F1',
    'tweet_eval-sentiment': 'Classification-F1',
    'tweet_eval-stance_abortion': 'Classification-F1',
    'tweet_eval-stance_atheism': 'Classification-F1',
    'tweet_eval-stance_climate': 'Classification-F1',
    'tweet_eval-stance_feminist': 'Classification-F1',
    'tweet_eval-stance_hillary': 'Classification-F1',
    'tweet_qa': 'QA-F1',
    'web_questions': 'EM',
    'wiki_auto': 'Classification-F1',
    'wiki_bio': 'Rouge-L',
    'wiki_qa': 'Classification-F1',
    'wiki_split': 'Rouge-L',
    'wikisql': 'EM',
    'wino_grande': 'ACC',
    'wiqa': 'ACC',
    'xsum': 'Rouge-L',
    'yahoo_answers_topics': 'Classification-F1',
    'yelp_polarity': 'Classification-F1',
    'yelp_review_full': 'Pearson-Correlation'
}

# Used only for tasks absent from CROSSFIT_METRICS, keyed by the task_type in
# shared/data/metaicl-config/tasks/<task>.json. All 109 tasks under
# shared/data/metaicl are in CROSSFIT_METRICS, so none of them needs this
# fallback today; it exists for tasks added later (e.g. glue-stsb, which
# CrossFit's map does not list).
FALLBACK_METRICS: dict[str, str] = {
    "classification": "Classification-F1",
    "multi-choice": "ACC",
    "free-form": "QA-F1",
}


def metric_for_task(task: str, task_type: str | None = None) -> str:
    """CrossFit's metric for ``task``; unknown tasks fall back on ``task_type``."""
    if task in CROSSFIT_METRICS:
        return CROSSFIT_METRICS[task]
    if task_type in FALLBACK_METRICS:
        return FALLBACK_METRICS[task_type]
    raise ValueError(
        f"task {task!r} is not in CrossFit's metric map and task_type "
        f"{task_type!r} is not one of {sorted(FALLBACK_METRICS)}"
    )


# --------------------------------------------------------------------------
# Answer normalisation and per-example scores
# --------------------------------------------------------------------------

_PUNCT = set(string.punctuation)


def _remove_punc(text: str) -> str:
    return "".join(ch for ch in text if ch not in _PUNCT)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, squash spaces."""
    text = _remove_punc(s.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _max_over_gold(score: Callable[[str, str], float], prediction: str, golds: Sequence[str]) -> float:
    """Best score of ``prediction`` against any gold answer (0 if there is none)."""
    if not golds:
        return 0.0
    return max(float(score(prediction, g)) for g in golds)


def _exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _accuracy(prediction: str, gold: str) -> float:
    # CrossFit: case-insensitive string equality, no other normalisation.
    return float(prediction.lower() == gold.lower())


def _qa_f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------
# ROUGE-L with the rouge package, as CrossFit's get_rouge_over_list
# --------------------------------------------------------------------------

def _has_rouge_sentence(text: str) -> bool:
    # rouge.Rouge keeps the pieces of text.split(".") that are not empty.
    return any(len(piece) > 0 for piece in text.split("."))


def _rouge_l(prediction: str, gold: str, scorer) -> float:
    # CrossFit scores 0 when the prediction has no non-punctuation character.
    if len(_remove_punc(prediction)) == 0:
        return 0.0
    # A gold answer made only of "." (or empty) has no sentence; rouge raises
    # ValueError("Reference is empty.") there, which would abort CrossFit's whole
    # evaluation. Such a gold answer scores 0 here, like a missing one.
    if not _has_rouge_sentence(gold):
        return 0.0
    return float(scorer.get_scores(prediction, gold, avg=True)["rouge-l"]["f"])


# --------------------------------------------------------------------------
# Corpus-level metrics
# --------------------------------------------------------------------------

def exact_match(predictions: list[str], references: list[list[str]]) -> float:
    """Mean of max-over-gold exact match after SQuAD normalisation."""
    return float(np.mean([_max_over_gold(_exact_match, p, r) for p, r in zip(predictions, references)]))


def accuracy(predictions: list[str], references: list[list[str]]) -> float:
    """Mean of max-over-gold case-insensitive string equality."""
    return float(np.mean([_max_over_gold(_accuracy, p, r) for p, r in zip(predictions, references)]))


def qa_f1(predictions: list[str], references: list[list[str]]) -> float:
    """Mean of max-over-gold SQuAD token F1."""
    return float(np.mean([_max_over_gold(_qa_f1, p, r) for p, r in zip(predictions, references)]))


def rouge_l(predictions: list[str], references: list[list[str]]) -> float:
    """Mean of max-over-gold ``rouge`` ROUGE-L F (summary level, case-sensitive)."""
    from rouge import Rouge

    scorer = Rouge()
    return float(np.mean([
        _max_over_gold(lambda p, g: _rouge_l(p, g, scorer), p, r) for p, r in zip(predictions, references)
    ]))


def _first_gold(references: list[list[str]], metric: str) -> list[str]:
    golds = []
    for i, ref in enumerate(references):
        if not ref:
            raise ValueError(f"{metric}: reference {i} has no gold answer")
        golds.append(ref[0])
    return golds


def classification_f1(predictions: list[str], references: list[list[str]]) -> float:
    """scikit-learn ``f1_score(gold, pred, average="macro")`` with gold = first answer.

    The classes are the union of the labels in gold and predictions (sklearn's
    default), so a predicted label that never occurs in the gold counts as a
    class scoring 0. Strings are compared exactly, without normalisation.
    """
    from sklearn.metrics import f1_score

    golds = _first_gold(references, "Classification-F1")
    return float(f1_score(golds, predictions, average="macro"))


def matthews_correlation(predictions: list[str], references: list[list[str]]) -> float:
    """scikit-learn ``matthews_corrcoef`` with CrossFit's CoLA binarisation.

    As in CrossFit, "acceptable" is class 1.0 and anything else class 0.0
    (predictions are stripped, gold is not). sklearn gives 0.0 when the
    coefficient is undefined (e.g. a constant prediction).
    """
    from sklearn.metrics import matthews_corrcoef

    golds = [1.0 if g == "acceptable" else 0.0 for g in _first_gold(references, "Matthew-Correlation")]
    preds = [1.0 if p.strip() == "acceptable" else 0.0 for p in predictions]
    return float(matthews_corrcoef(golds, preds))


def _to_float(text: str) -> float:
    # CrossFit's cast_to_float: float(prediction.strip()), NaN when that fails.
    try:
        return float(text.strip())
    except ValueError:
        return float("nan")


def pearson_correlation(predictions: list[str], references: list[list[str]]) -> float:
    """SciPy ``pearsonr(float(first gold), float(prediction))[0]``.

    Following CrossFit, a prediction that does not parse as a float becomes
    NaN, so the whole score is NaN; constant inputs also give NaN (SciPy).
    """
    from scipy.stats import pearsonr

    if len(predictions) < 2:
        raise ValueError("Pearson-Correlation needs at least 2 examples")
    golds = []
    for g in _first_gold(references, "Pearson-Correlation"):
        try:
            golds.append(float(g))
        except ValueError:
            raise ValueError(f"Pearson-Correlation: gold answer {g!r} is not a number") from None
    return float(pearsonr(golds, [_to_float(p) for p in predictions])[0])


_METRIC_FUNCS: dict[str, Callable[[list[str], list[list[str]]], float]] = {
    "EM": exact_match,
    "ACC": accuracy,
    "QA-F1": qa_f1,
    "Classification-F1": classification_f1,
    "Matthew-Correlation": matthews_correlation,
    "Pearson-Correlation": pearson_correlation,
    "Rouge-L": rouge_l,
}
assert tuple(_METRIC_FUNCS) == METRIC_NAMES


def compute_metric(metric: str, predictions: list[str], references: list[list[str]]) -> float:
    """Score ``predictions`` against ``references`` (one list of gold answers each).

    A bare string reference is taken as a single gold answer.
    """
    if metric not in _METRIC_FUNCS:
        raise ValueError(f"unknown metric {metric!r}; known metrics: {', '.join(METRIC_NAMES)}")
    if len(predictions) == 0:
        raise ValueError(f"{metric}: cannot compute a metric over an empty prediction list")
    if len(predictions) != len(references):
        raise ValueError(
            f"{metric}: {len(predictions)} predictions but {len(references)} references"
        )
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    return _METRIC_FUNCS[metric](list(predictions), refs)
