"""Metric implementations against hand-computed cases, and ROUGE-L against rouge-score where installed."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from slimtune.errors import ConfigError
from slimtune.eval import metrics as mt


def test_token_weighted_loss_weights_by_tokens_not_examples() -> None:
    # example 1: 3 tokens with total loss 3.0; example 2: 1 token with loss 5.0 -> (3 + 5) / 4 = 2.0
    assert mt.token_weighted_loss([3.0, 5.0], [3, 1]) == pytest.approx(2.0)
    assert mt.perplexity(2.0) == pytest.approx(math.exp(2.0))
    assert math.isfinite(mt.perplexity(1e6))
    with pytest.raises(ConfigError):
        mt.token_weighted_loss([1.0], [0])


def test_classification_metrics_by_hand() -> None:
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]
    assert mt.accuracy(preds, labels) == pytest.approx(4 / 6)
    cm = mt.confusion_matrix(preds, labels)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # per class F1: c0 = 2*2/(3+2) = 0.8; c1 = 2*1/(2+2) = 0.5; c2 = 2*1/(1+2) = 2/3
    assert mt.macro_f1(preds, labels) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    with pytest.raises(ConfigError):
        mt.accuracy([0, 1], [0])


def test_macro_f1_matches_its_definition_on_random_labels() -> None:
    rng = np.random.default_rng(3)
    labels, preds = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    f1s = []
    for c in range(4):
        tp = np.sum((preds == c) & (labels == c))
        fp, fn = np.sum((preds == c) & (labels != c)), np.sum((preds != c) & (labels == c))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    assert mt.macro_f1(preds, labels) == pytest.approx(float(np.mean(f1s)))


def test_squad_normalisation_exact_match_and_f1() -> None:
    assert mt.normalize_answer("The  Cat, sat!") == "cat sat"
    assert mt.exact_match("An apple.", "apple") == 1.0
    assert mt.exact_match("apples", "apple") == 0.0
    # pred tokens [cat, sat, down], ref [cat, sat, on, mat]: common 2, p = 2/3, r = 1/2, F1 = 4/7
    assert mt.token_f1("the cat sat down", "cat sat on the mat") == pytest.approx(4 / 7)
    assert mt.token_f1("", "") == 1.0
    assert mt.token_f1("x", "") == 0.0
    assert mt.token_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # bag counts, not sets


def test_rouge_l_by_hand() -> None:
    assert mt.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    # pred [police, killed, the, gunman], ref [police, kill, the, gunman]: LCS 3, P = R = 3/4
    assert mt.rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(0.75)
    assert mt.rouge_l("", "anything") == 0.0


def test_rouge_l_agrees_with_rouge_score_on_random_texts() -> None:
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer", reason="rouge-score not installed")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(7)
    words = ["a", "cat", "Dog", "sat", "on", "mat", "the", "ran", "far,", "x1"]
    for _ in range(200):
        pred = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        ref = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        assert mt.rouge_l(pred, ref) == pytest.approx(scorer.score(ref, pred)["rougeL"].fmeasure)
