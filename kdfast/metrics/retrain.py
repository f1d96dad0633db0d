"""A minimal in-memory training loop, used to retrain models on ROAR-modified data (and by the evaluation's
fallback models). Deterministic for a given seed on CPU."""
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ._checks import check_class_indices, check_tensor


def fit_classifier(model, images, labels, epochs=2, batch_size=32, lr=1e-3, weight_decay=5e-5, seed=0,
                   loss_fn=None, desc="train"):
    """Trains `model` with Adam on (images, labels) held in memory; returns the model in eval mode.

    `loss_fn(logits, labels, indices)` replaces cross-entropy, e.g. for distillation with precomputed teacher
    logits indexed by the batch's dataset `indices`."""
    check_tensor("images", images, dims=4, floating=True)
    check_class_indices("labels", labels, size=images.shape[0])
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs ≥ 0 and batch_size ≥ 1, got {epochs} and {batch_size}")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = loss_fn or (lambda logits, y, idx: F.cross_entropy(logits, y))
    model.train()
    steps = tqdm(total=epochs * -(-images.shape[0] // batch_size), desc=desc, leave=False)
    for _ in range(epochs):
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, images.shape[0], batch_size):
            idx = order[start:start + batch_size]
            logits = model(images[idx].to(device))
            loss = loss_fn(logits, labels[idx].to(device), idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps.update()
    steps.close()
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
