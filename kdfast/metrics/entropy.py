"""Predictive entropy over all classes and within the true class's category (ICML 2023, §4.1 and Table 2).

A student that learnt the teacher's class similarities spreads probability over the classes similar to the true
one, so its entropy within the true class's category (probabilities renormalised over that category) is higher.
Entropies are in nats.
"""
import torch

from ._checks import check_class_indices, check_finite, check_tensor


def _check_logits(logits):
    check_tensor("logits", logits, dims=2, floating=True)
    check_finite("logits", logits)
    return logits


def entire_entropy(logits):
    """(N,) entropy of softmax(logits) over all K classes."""
    log_p = torch.log_softmax(_check_logits(logits).double(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def category_entropy(logits, targets, category_map):
    """(N,) entropy of the softmax restricted to the classes of each sample's true category, renormalised.

    Every target must belong to a category: select samples first with `category_map.included(targets)`."""
    _check_logits(logits)
    num_classes = logits.shape[1]
    if category_map.num_classes != num_classes:
        raise ValueError(f"the category map covers {category_map.num_classes} classes but the logits have "
                         f"{num_classes}")
    check_class_indices("targets", targets, num_classes, size=logits.shape[0])
    excluded = ~category_map.included(targets)
    if bool(excluded.any()):
        i = int(excluded.nonzero()[0])
        raise ValueError(f"sample {i}'s class {int(targets[i])} has no category (excluded); select samples with "
                         "category_map.included(targets) first")
    same = category_map.same_category_matrix()[targets.long()]  # (N, K)
    masked = logits.double().masked_fill(~same, float("-inf"))
    log_p = torch.log_softmax(masked, dim=1)
    # Classes outside the category have p = 0 and contribute 0 (not 0 · −inf).
    return -torch.where(same, log_p.exp() * log_p, torch.zeros_like(log_p)).sum(dim=1)
