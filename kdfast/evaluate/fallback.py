"""The models the evaluation compares when no distillation run exists: a small teacher, and a scratch and a KD
student trained on the synthetic shapes with a minimal loop (KD loss (1−α)·CE + α·T²·KL(p_T ‖ p_S), α 0.5, T 4,
as in the ICML paper's synthetic-data experiment). Sized for a 2-core CPU: tiny ResNets, few epochs."""
from pathlib import Path

import torch
import torch.nn.functional as F

from kdfast.evaluate.models import TINY_RESNET, build_classifier
from kdfast.metrics.retrain import fit_classifier, predict_logits

KD_ALPHA, KD_TEMPERATURE = 0.5, 4.0
TEACHER_KWARGS = {"widths": [24, 48, 96, 192], "strides": [2, 2, 2, 2]}
STUDENT_KWARGS = {"widths": [16, 32, 64, 128], "strides": [2, 2, 2, 2]}


def kd_loss(student_logits, teacher_logits, labels, alpha=KD_ALPHA, temperature=KD_TEMPERATURE):
    """(1−α)·CE(z_s, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), batch mean."""
    ce = F.cross_entropy(student_logits, labels)
    kl = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                  F.log_softmax(teacher_logits / temperature, dim=1), log_target=True, reduction="batchmean")
    return (1 - alpha) * ce + alpha * temperature**2 * kl


def _checkpoint(model, kwargs, method):
    return {"model": model.state_dict(), "config": {"student": {"spec": TINY_RESNET, "kwargs": kwargs},
                                                    "method": {"name": method}}}


def _fresh(kwargs, num_classes, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_classifier(TINY_RESNET, num_classes, kwargs)


def train_fallback_models(data, out_dir, teacher_epochs=3, student_epochs=3, batch_size=32, lr=1e-3,
                          weight_decay=5e-5, seed=0):
    """Trains teacher, scratch and KD models on `data`'s training images; writes `<out_dir>/<name>.pt`
    checkpoints in the distillation trainer's format and returns {name: path}."""
    if data.train_images is None:
        raise ValueError(f"{data.name} has no training images to train the fallback models on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, labels, k = data.train_images, data.train_labels, data.num_classes
    fit = dict(batch_size=batch_size, lr=lr, weight_decay=weight_decay)
    teacher = fit_classifier(_fresh(TEACHER_KWARGS, k, seed), images, labels, epochs=teacher_epochs, seed=seed,
                             desc="teacher", **fit)
    teacher_logits = predict_logits(teacher, images)
    # Scratch and KD students start from the same weights and see the same batches: only the loss differs.
    scratch = fit_classifier(_fresh(STUDENT_KWARGS, k, seed + 1), images, labels, epochs=student_epochs,
                             seed=seed + 1, desc="scratch student", **fit)
    kd = fit_classifier(_fresh(STUDENT_KWARGS, k, seed + 1), images, labels, epochs=student_epochs, seed=seed + 1,
                        loss_fn=lambda logits, y, idx: kd_loss(logits, teacher_logits[idx].to(logits.device), y),
                        desc="KD student", **fit)
    paths = {}
    for name, model, kwargs, method in (("teacher", teacher, TEACHER_KWARGS, "scratch"),
                                        ("scratch", scratch, STUDENT_KWARGS, "scratch"),
                                        ("kd", kd, STUDENT_KWARGS, "kd")):
        paths[name] = out_dir / f"{name}.pt"
        torch.save(_checkpoint(model, kwargs, method), paths[name])
    return paths
