import numpy as np
import pytest
import torch

from kdfast.nlp.scores import auroc, average_precision, interpretability_scores, supporting_words
from kdfast.nlp.sst import SSTExample


def direct_auroc(scores, labels):
    """P(positive scores higher than negative) + ½ P(tie), by comparing every pair."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def direct_average_precision(scores, labels):
    """Σ over distinct thresholds t (high to low) of (recall(t) − recall(previous t)) · precision(t), where a
    threshold admits every sample scoring >= t."""
    total_pos = sum(labels)
    ap, previous_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        admitted = [y for s, y in zip(scores, labels) if s >= t]
        recall = sum(admitted) / total_pos
        ap += (recall - previous_recall) * (sum(admitted) / len(admitted))
        previous_recall = recall
    return ap


def _random_case(gen, n, ties):
    scores = torch.randn(n, generator=gen, dtype=torch.float64)
    if ties:
        scores = torch.round(scores * 2) / 2  # few distinct values: many ties, also across the classes
    labels = torch.rand(n, generator=gen) < 0.6
    labels[0], labels[1] = True, False
    return scores, labels


@pytest.mark.parametrize("n", [2, 3, 17, 250])
@pytest.mark.parametrize("ties", [False, True])
def test_against_direct_implementation(gen, n, ties):
    for _ in range(3):
        scores, labels = _random_case(gen, n, ties)
        s, y = scores.tolist(), labels.tolist()
        assert auroc(scores, labels) == pytest.approx(direct_auroc(s, y), abs=1e-12)
        assert average_precision(scores, labels) == pytest.approx(direct_average_precision(s, y), abs=1e-12)


def test_float32_scores(gen):
    scores, labels = _random_case(gen, 40, ties=False)
    scores = scores.float()
    s, y = scores.double().tolist(), labels.tolist()
    assert average_precision(scores, labels) == pytest.approx(direct_average_precision(s, y), abs=1e-12)
    assert auroc(scores, labels) == pytest.approx(direct_auroc(s, y), abs=1e-12)


def test_known_values():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    perfect = torch.tensor([True, True, False, False])
    assert auroc(scores, perfect) == 1.0 and average_precision(scores, perfect) == 1.0
    assert auroc(scores, perfect.flip(0)) == 0.0
    # Positives at ranks 2 and 4: AP = ½·(1/2) + ½·(2/4).
    assert average_precision(scores, torch.tensor([False, True, False, True])) == pytest.approx(0.5)


def test_constant_scores():
    scores = torch.full((5,), 0.3, dtype=torch.float64)
    labels = torch.tensor([True, False, True, False, False])
    assert auroc(scores, labels) == 0.5
    assert average_precision(scores, labels) == pytest.approx(2 / 5)  # one threshold: recall 1 at precision 2/5


def test_single_positive_and_all_positive():
    scores = torch.tensor([0.1, 0.5, 0.3], dtype=torch.float64)
    assert average_precision(scores, torch.tensor([False, False, True])) == pytest.approx(0.5)
    assert average_precision(torch.tensor([0.2]), torch.tensor([True])) == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="no positive"):
        average_precision(torch.tensor([0.1, 0.2]), torch.tensor([False, False]))
    with pytest.raises(ValueError, match="empty"):
        average_precision(torch.zeros(0), torch.zeros(0, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be bool"):
        average_precision(torch.tensor([0.1]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        auroc(torch.zeros(3), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN or inf at index 1"):
        average_precision(torch.tensor([0.1, float("nan")]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="negatives"):
        auroc(torch.tensor([0.1, 0.2]), torch.tensor([True, True]))


def _example(words_labels, fine_label, classes=4):
    label = {0: 0, 1: 1, 3: 2, 4: 3}[fine_label] if classes == 4 else fine_label
    return SSTExample(words=tuple(f"w{i}" for i in range(len(words_labels))), word_labels=tuple(words_labels),
                      label=label, fine_label=fine_label)


def test_supporting_words_protocol():
    examples = [
        _example([2, 3, 1, 4], fine_label=4),  # positive: 3 and 4 support, 1 opposes, 2 is left out
        _example([0, 3, 2], fine_label=1),  # negative: 0 supports, 3 opposes
        _example([3, 3], fine_label=3),  # misclassified below: left out
    ]
    attributions = [np.array([9.0, 0.5, -0.2, 0.7]), np.array([0.4, -0.3, 9.0]), np.array([1.0, 1.0])]
    predictions = [3, 1, 0]
    scores, supporting, sentences = supporting_words(examples, predictions, attributions)
    assert sentences == 2
    assert scores.tolist() == [0.5, -0.2, 0.7, 0.4, -0.3]
    assert supporting.tolist() == [True, False, True, True, False]
    result = interpretability_scores(examples, predictions, attributions)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["auroc"] == 1.0 and result["auprc"] == 1.0
    assert (result["sentences"], result["words"], result["supporting"]) == (2, 5, 3)


def test_neutral_sentences_are_left_out_in_five_class_mode():
    examples = [_example([3, 1], fine_label=2, classes=5), _example([3, 1], fine_label=3, classes=5)]
    scores, supporting, sentences = supporting_words(examples, [2, 3], [np.array([1.0, 2.0]), np.array([1.0, 2.0])])
    assert sentences == 1 and supporting.tolist() == [True, False]


def test_scores_reject_mismatches():
    example = _example([3, 1], fine_label=4)
    with pytest.raises(ValueError, match="example 0 has 2 words but 3 attributions"):
        supporting_words([example], [3], [np.zeros(3)])
    with pytest.raises(ValueError, match="one of each"):
        supporting_words([example], [3, 3], [np.zeros(2)])
    with pytest.raises(ValueError, match="all supporting"):
        interpretability_scores([_example([3, 4], fine_label=4)], [3], [np.zeros(2)])
    with pytest.raises(ValueError, match="no polar words"):
        interpretability_scores([_example([3, 4], fine_label=4)], [0], [np.zeros(2)])
