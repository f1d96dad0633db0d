"""Per-group accuracy and teacher agreement (the e2KD paper's Waterbirds measures, Fig. 3 and Figs. B1-B2).

Every sample belongs to a group (Waterbirds: 2·y + place, kdfast.data.waterbirds). Reported: accuracy and
agreement (student top-1 = teacher top-1) per group, the worst group's, and over the pooled samples of the
in-distribution and out-of-distribution groups (sample-weighted, as the paper's "Waterbirds on Land" /
"Landbirds on Water" panels pool their images), plus overall.
"""
import torch

from kdfast.data.waterbirds import GROUP_NAMES


def _fraction(hits, mask):
    count = int(mask.sum())
    return float(hits[mask].double().mean()) if count else None


def group_metrics(predictions, targets, groups, teacher_predictions=None, group_names=GROUP_NAMES,
                  in_distribution_groups=(0, 3)):
    """A flat dict of measures from (N,) predicted classes, labels, group ids and (optionally) the teacher's
    predicted classes. Groups without samples are left out of the per-group entries and the worst group."""
    predictions, targets, groups = (torch.as_tensor(t).long() for t in (predictions, targets, groups))
    if not predictions.shape == targets.shape == groups.shape or predictions.dim() != 1:
        raise ValueError(f"predictions, targets and groups must be (N,) tensors of one length, got "
                         f"{tuple(predictions.shape)}, {tuple(targets.shape)}, {tuple(groups.shape)}")
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= len(group_names)):
        raise ValueError(f"groups must lie in [0, {len(group_names)}), got [{int(groups.min())}, {int(groups.max())}]")
    correct = predictions == targets
    rows = {"acc": correct}
    if teacher_predictions is not None:
        teacher_predictions = torch.as_tensor(teacher_predictions).long()
        if teacher_predictions.shape != predictions.shape:
            raise ValueError(f"teacher_predictions must be {tuple(predictions.shape)}, got {tuple(teacher_predictions.shape)}")
        rows["agreement"] = predictions == teacher_predictions
    in_dist = torch.zeros_like(groups, dtype=torch.bool)
    for g in in_distribution_groups:
        in_dist |= groups == g
    out = {}
    for key, hits in rows.items():
        out[key] = _fraction(hits, torch.ones_like(hits))
        per_group = {}
        for g, name in enumerate(group_names):
            value = _fraction(hits, groups == g)
            if value is not None:
                per_group[name] = value
                out[f"{key}_{name}"] = value
        out[f"worst_group_{key}"] = min(per_group.values()) if per_group else None
        out[f"in_distribution_{key}"] = _fraction(hits, in_dist)
        out[f"out_of_distribution_{key}"] = _fraction(hits, ~in_dist)
    return out
