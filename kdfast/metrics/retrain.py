"""Retraining a model on images held in memory (DiffROAR's ROAR-modified data), through the one trainer:
kdfast.distill.trainer with data.type memory. Deterministic for a given seed on CPU."""
import tempfile

import torch

from ._checks import check_class_indices, check_tensor


def fit_classifier(model, images, labels, epochs=2, batch_size=32, lr=1e-3, weight_decay=5e-5, seed=0,
                   desc="train"):
    """Trains `model` on (images, labels) with Adam (constant lr, no augmentation) by the distill trainer;
    returns the model after the last epoch, in eval mode.

    The trainer's per-epoch validation runs on the first batch of training images only: this fit's accuracy is
    measured by the caller on its own test set. Checkpoints go to a temporary folder, removed afterwards."""
    from kdfast.distill.config import from_dict
    from kdfast.distill.trainer import in_memory_datasets, train

    check_tensor("images", images, dims=4, floating=True)
    check_class_indices("labels", labels, size=images.shape[0])
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"need epochs ≥ 1 and batch_size ≥ 1, got {epochs} and {batch_size}")
    device = next(model.parameters()).device
    nominal = slice(0, min(batch_size, len(images)))
    datasets = in_memory_datasets(images, labels, images[nominal], labels[nominal])
    with tempfile.TemporaryDirectory(prefix="kdfast-fit-") as folder:
        config = from_dict({
            "name": desc, "seed": int(seed), "output_dir": folder, "device": str(device), "epochs": int(epochs),
            "batch_size": int(batch_size), "workers": 0,
            "data": {"type": "memory", "augment": False, "normalize": False},
            "student": {"spec": type(model).__name__},  # names the given module in the (temporary) outputs
            "method": {"name": "scratch"},
            "optim": {"name": "adam", "lr": float(lr), "weight_decay": float(weight_decay)},
            "schedule": {"name": "constant"},
            "log": {"csv": False, "progress": False, "epoch_lines": False},
        })
        train(config, datasets=datasets, student=model)
    return model.eval()


@torch.no_grad()
def predict_logits(model, images, batch_size=128):
    """(N, K) logits of `model` in eval mode, on CPU."""
    model.eval()
    device = next(model.parameters()).device
    out = [model(images[s:s + batch_size].to(device)).float().cpu() for s in range(0, images.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def accuracy(model, images, labels, batch_size=128):
    if images.shape[0] == 0:
        raise ValueError("accuracy needs at least one image")
    return float((predict_logits(model, images, batch_size).argmax(dim=1) == labels).double().mean())
