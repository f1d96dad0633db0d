"""Word-level interpretability scores on SST (ICML 2023 §5.4 / appendix E.3): do a model's word attributions
agree with the human word sentiment labels?

Protocol, for the correctly classified sentences with a polar root (sentiment 0/1 or 3/4), attributing to the
true (= predicted) class: in a positive sentence the positive words should get positive attribution and the
negative words negative attribution, and the other way round in a negative sentence. So every polar word
(leaf label != 2) is one binary sample: label 1 when its polarity agrees with the sentence's ("supporting"),
0 when it opposes it; its score is its attribution. AUROC and AUPRC (average precision) are computed over the
pooled words of all those sentences. Neutral words have no expected sign and are left out.
"""
import numpy as np
import torch

from ..metrics.auroc import rowwise_auroc
from .sst import polarity


def average_precision(scores, labels):
    """Area under the precision-recall curve as scikit-learn's average_precision_score defines it:
    AP = Σ_n (R_n − R_{n−1}) P_n over the distinct score thresholds taken from high to low (tied scores enter
    together), with R_0 = 0. `scores` (N,) float, `labels` (N,) bool with at least one positive."""
    scores, labels = _check_scores(scores, labels)
    positives = int(labels.sum())
    if positives == 0:
        raise ValueError("labels have no positive sample; average precision needs at least one")
    order = torch.argsort(scores, descending=True, stable=True)
    scores, labels = scores[order], labels[order].double()
    true_positives = torch.cumsum(labels, 0)
    # Keep the last position of every run of equal scores: a threshold admits all tied samples at once.
    last_of_tie = torch.ones_like(scores, dtype=torch.bool)
    last_of_tie[:-1] = scores[1:] != scores[:-1]
    true_positives = true_positives[last_of_tie]
    predicted = torch.arange(1, len(scores) + 1, dtype=torch.float64)[last_of_tie]
    precision = true_positives / predicted
    recall = true_positives / positives
    recall_step = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((recall_step * precision).sum())


def auroc(scores, labels):
    """AUROC of `scores` (N,) against bool `labels` (N,), ties counting half (scikit-learn's roc_auc_score)."""
    scores, labels = _check_scores(scores, labels)
    return float(rowwise_auroc(scores[None], labels[None])[0])


def _check_scores(scores, labels):
    scores = torch.as_tensor(scores)
    labels = torch.as_tensor(labels)
    if scores.dim() != 1 or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must both be (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}")
    if not scores.dtype.is_floating_point:
        raise ValueError(f"scores must be floating point, got {scores.dtype}")
    if labels.dtype != torch.bool:
        raise ValueError(f"labels must be bool, got {labels.dtype}")
    if scores.numel() == 0:
        raise ValueError("scores are empty; the metric needs at least one sample")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"scores contain NaN or inf at index {int((~torch.isfinite(scores)).nonzero()[0])}")
    return scores.double(), labels


def supporting_words(examples, predictions, word_attributions):
    """The protocol's word samples: (scores float64 (W,), supporting bool (W,), number of sentences used).

    `predictions` are class indices per example; `word_attributions[i]` holds one attribution per word of
    examples[i] toward its true class. Only correct predictions with a polar root contribute."""
    if not len(examples) == len(predictions) == len(word_attributions):
        raise ValueError(f"got {len(examples)} examples, {len(predictions)} predictions and "
                         f"{len(word_attributions)} attribution vectors; need one of each per sentence")
    scores, supporting, sentences = [], [], 0
    for i, (example, predicted, attributions) in enumerate(zip(examples, predictions, word_attributions)):
        if len(attributions) != len(example.words):
            raise ValueError(f"example {i} has {len(example.words)} words but {len(attributions)} attributions")
        sentence_polarity = polarity(example.fine_label)
        if int(predicted) != example.label or sentence_polarity == 0:
            continue
        sentences += 1
        for word_label, attribution in zip(example.word_labels, attributions):
            if polarity(word_label) != 0:
                scores.append(float(attribution))
                supporting.append(polarity(word_label) == sentence_polarity)
    return np.asarray(scores, dtype=np.float64), np.asarray(supporting, dtype=bool), sentences


def interpretability_scores(examples, predictions, word_attributions):
    """{"accuracy", "auroc", "auprc", "sentences", "words", "supporting"} for one model on one set of examples
    (Table 5's columns plus the counts behind them)."""
    if not examples:
        raise ValueError("no examples to score")
    correct = sum(int(p) == e.label for p, e in zip(predictions, examples))
    scores, supporting, sentences = supporting_words(examples, predictions, word_attributions)
    if not len(scores):
        raise ValueError(f"the {sentences} correctly classified polar sentences (of {len(examples)}) hold no polar "
                         "words; AUROC/AUPRC are undefined")
    if supporting.all() or not supporting.any():
        raise ValueError(f"the {len(scores)} polar words of the {sentences} correctly classified polar sentences are "
                         f"all {'supporting' if supporting.any() else 'opposing'}; AUROC needs words of both kinds "
                         "(evaluate on more sentences)")
    return {
        "accuracy": correct / len(examples),
        "auroc": auroc(torch.from_numpy(scores), torch.from_numpy(supporting)),
        "auprc": average_precision(torch.from_numpy(scores), torch.from_numpy(supporting)),
        "sentences": sentences,
        "words": len(scores),
        "supporting": int(supporting.sum()),
    }
