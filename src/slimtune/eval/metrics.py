"""Task metrics on per-example scores: loss and perplexity (token-weighted), accuracy, macro-F1 and the
confusion matrix for classification, exact match, token F1 and ROUGE-L for generation. Pure functions over
arrays, deterministic; the bootstrap (bootstrap.py) resamples the per-example values these return."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

from slimtune.errors import ConfigError

__all__ = [
    "accuracy", "confusion_matrix", "exact_match", "lcs_length", "macro_f1", "normalize_answer",
    "perplexity", "rouge_l", "token_f1", "token_weighted_loss",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def _same_length(name: str, a: Sequence[object] | np.ndarray, b: Sequence[object] | np.ndarray) -> None:
    if len(a) != len(b):
        raise ConfigError(f"{name}: predictions and references differ in length ({len(a)} vs {len(b)})")
    if len(a) == 0:
        raise ConfigError(f"{name}: no examples to score")


# ----- language modelling --------------------------------------------------------------------------
def token_weighted_loss(loss_sums: Sequence[float] | np.ndarray, counts: Sequence[float] | np.ndarray) -> float:
    """Mean loss per target token: sum of per-example summed losses over the sum of their target counts."""
    sums, n = np.asarray(loss_sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    _same_length("token_weighted_loss", sums, n)
    total = float(n.sum())
    if total <= 0:
        raise ConfigError("token_weighted_loss: the examples hold no target tokens")
    return float(sums.sum() / total)


def perplexity(loss: float) -> float:
    """exp(mean token loss), capped so that a diverged model reports a huge finite number, not inf."""
    return math.exp(min(loss, 700.0)) if math.isfinite(loss) else float("nan")


# ----- classification ------------------------------------------------------------------------------
def accuracy(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    p, y = np.asarray(preds), np.asarray(labels)
    _same_length("accuracy", p, y)
    return float((p == y).mean())


def confusion_matrix(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray,
                     num_classes: int | None = None) -> np.ndarray:
    """(C, C) counts; row = true label, column = prediction."""
    p, y = np.asarray(preds, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    _same_length("confusion_matrix", p, y)
    if p.min() < 0 or y.min() < 0:
        raise ConfigError("confusion_matrix: class ids must be non-negative")
    c = int(num_classes if num_classes is not None else max(p.max(), y.max()) + 1)
    if max(p.max(), y.max()) >= c:
        raise ConfigError(f"confusion_matrix: a class id >= num_classes={c}")
    out = np.zeros((c, c), dtype=np.int64)
    np.add.at(out, (y, p), 1)
    return out


def macro_f1(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray,
             num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in labels or predictions."""
    cm = confusion_matrix(preds, labels, num_classes)
    return macro_f1_from_confusion(cm)


def macro_f1_from_confusion(cm: np.ndarray) -> float:
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = (support + predicted) > 0
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean()) if present.any() else 0.0


# ----- generation ----------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, drop punctuation and the articles a/an/the, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 on normalised tokens (bag overlap); two empty strings score 1, one empty scores 0."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, O(len(a) * len(b)) time, O(len(b)) memory."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _rouge_tokens(text: str) -> list[str]:
    # rouge-score's default tokenizer: lower case, non-alphanumerics become spaces
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) on lower-cased alphanumeric tokens, as rouge-score computes it."""
    pred, ref = _rouge_tokens(prediction), _rouge_tokens(reference)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def generation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-example exact_match, token_f1 and rouge_l arrays (for means and bootstrap intervals)."""
    _same_length("generation_scores", predictions, references)
    pairs = list(zip(predictions, references, strict=True))
    return {"exact_match": np.array([exact_match(p, r) for p, r in pairs]),
            "token_f1": np.array([token_f1(p, r) for p, r in pairs]),
            "rouge_l": np.array([rouge_l(p, r) for p, r in pairs])}
