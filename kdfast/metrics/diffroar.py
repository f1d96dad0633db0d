"""DiffROAR (Shah et al. 2021; ICML 2023 §5.2, Table 4).

Per image, coordinates (channel, row, column) are ranked by |attribution|. ROAR keeps a fraction k of them and
fills the rest with the dataset mean (per channel, over the training images); a model is retrained from scratch
on the modified training set and tested on the identically modified test set. DiffROAR(k) = accuracy when the
top-k coordinates are kept − accuracy when the bottom-k are kept: high when the attribution finds the features
the task needs. Repeated over seeds; the score is the mean over all k and runs.
"""
import statistics

import torch
from tqdm import tqdm

from ._checks import check_finite, check_same_shape, check_tensor
from .retrain import accuracy, fit_classifier

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def keep_mask(attributions, fraction, keep):
    """Bool mask (same shape) of the round(fraction·D) coordinates per image with the largest ("top") or
    smallest ("bottom") |attribution|, D = coordinates per image. Ties go to the lower flat index."""
    check_tensor("attributions", attributions, floating=True)
    check_finite("attributions", attributions)
    if keep not in ("top", "bottom"):
        raise ValueError(f"keep must be 'top' or 'bottom', got '{keep}'")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    flat = attributions.abs().flatten(1)
    count = round(fraction * flat.shape[1])
    order = torch.argsort(-flat if keep == "top" else flat, dim=1, stable=True)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    return mask.view_as(attributions)


def channel_mean(images):
    """(C, 1, 1) mean per channel over all images and pixels: the fill value of removed coordinates."""
    check_tensor("images", images, dims=4, floating=True)
    if images.shape[0] == 0:
        raise ValueError("images holds no samples; the dataset mean needs at least one")
    return images.double().mean(dim=(0, 2, 3)).view(-1, 1, 1).to(images.dtype)


def remove_and_fill(images, attributions, fraction, keep, fill):
    """Images with all but the kept coordinates replaced by `fill` (broadcastable to one image)."""
    check_same_shape("images", images, "attributions", attributions)
    mask = keep_mask(attributions, fraction, keep)
    return torch.where(mask, images, fill.to(images.dtype).expand_as(images[0]))


def diffroar(model_factory, train, test, fractions=FRACTIONS, runs=1, epochs=2, batch_size=32, lr=1e-3,
             weight_decay=5e-5, seed=0):
    """DiffROAR per fraction and overall. `train`/`test` are (images, labels, attributions) triples; the
    attributions have the images' shape. `model_factory()` returns a fresh untrained model. Run r retrains with
    seed `seed + r` (same seed for the top-k and bottom-k model, so only the data differ).

    Returns {"fractions": {k: {"top": [acc per run], "bottom": [...], "diff": mean(top − bottom)}},
    "mean": mean DiffROAR over all fractions and runs, "runs": runs}."""
    if runs < 1:
        raise ValueError(f"runs must be ≥ 1, got {runs}")
    for name, (images, _, attributions) in (("train", train), ("test", test)):
        check_same_shape(f"{name} images", images, f"{name} attributions", attributions)
    fill = channel_mean(train[0])
    results = {}
    progress = tqdm(total=len(fractions) * runs * 2, desc="DiffROAR retraining", leave=False)
    for fraction in fractions:
        accs = {"top": [], "bottom": []}
        for run in range(runs):
            for keep in ("top", "bottom"):
                train_x = remove_and_fill(train[0], train[2], fraction, keep, fill)
                test_x = remove_and_fill(test[0], test[2], fraction, keep, fill)
                with torch.random.fork_rng(devices=[]):  # seeds the initial weights, leaves the caller's RNG be
                    torch.manual_seed(seed + run)
                    model = model_factory()
                model = fit_classifier(model, train_x, train[1], epochs=epochs, batch_size=batch_size,
                                       lr=lr, weight_decay=weight_decay, seed=seed + run,
                                       desc=f"ROAR k={fraction} {keep}")
                accs[keep].append(accuracy(model, test_x, test[1]))
                progress.update()
        diffs = [t - b for t, b in zip(accs["top"], accs["bottom"])]
        results[fraction] = {**accs, "diff": statistics.fmean(diffs)}
    progress.close()
    all_diffs = [t - b for r in results.values() for t, b in zip(r["top"], r["bottom"])]
    return {"fractions": results, "mean": statistics.fmean(all_diffs), "runs": runs}
