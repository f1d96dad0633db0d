"""Area under the ROC curve, one value per row, with ties counted as half (the Mann–Whitney U statistic)."""
import numpy as np
import torch
from scipy.stats import rankdata

from ._checks import check_finite, check_same_shape, check_tensor


def rowwise_auroc(scores, labels):
    """(N,) float64 AUROC of `scores` (N, D) against bool `labels` (N, D), each row separately.

    AUROC = P(score of a positive > score of a negative) + ½ P(tie) = (Σ ranks of positives − P(P+1)/2) / (P·Q)
    with average ranks for ties. Every row needs at least one positive and one negative."""
    check_tensor("scores", scores, dims=2, floating=True)
    check_tensor("labels", labels, dims=2)
    check_same_shape("scores", scores, "labels", labels)
    if labels.dtype != torch.bool:
        raise ValueError(f"labels must be bool, got {labels.dtype}")
    check_finite("scores", scores)
    positives = labels.sum(dim=1)
    negatives = labels.shape[1] - positives
    lacking = ((positives == 0) | (negatives == 0)).nonzero()
    if lacking.numel():
        i = int(lacking[0])
        raise ValueError(f"row {i} has {int(positives[i])} positives and {int(negatives[i])} negatives; AUROC needs "
                         "both")
    ranks = torch.from_numpy(rankdata(scores.double().cpu().numpy(), method="average", axis=1).astype(np.float64))
    positives, negatives = positives.double().cpu(), negatives.double().cpu()
    rank_sum = (ranks * labels.cpu()).sum(dim=1)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
