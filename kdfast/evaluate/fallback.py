"""The models the evaluation compares when no distillation run exists: a small teacher, and a scratch and a KD
student (kdfast.distill's `kd` method: (1−α)·CE + α·T²·KL(p_T ‖ p_S), α 0.5, T 4, as in the ICML paper's
synthetic-data experiment) trained on the synthetic shapes by the one distill trainer (data.type memory). Sized
for a 2-core CPU: tiny ResNets, few epochs, Adam at a constant learning rate, no augmentation."""
from pathlib import Path

from kdfast.distill.config import from_dict
from kdfast.distill.trainer import CHECKPOINT_LAST, in_memory_datasets, train
from kdfast.evaluate.models import TINY_RESNET

KD_ALPHA, KD_TEMPERATURE = 0.5, 4.0
TEACHER_KWARGS = {"widths": [24, 48, 96, 192], "strides": [2, 2, 2, 2]}
STUDENT_KWARGS = {"widths": [16, 32, 64, 128], "strides": [2, 2, 2, 2]}
RUNS = ("teacher", "scratch", "kd")


def fallback_paths(out_dir):
    """{name: checkpoint} the fallback models are written to: <out_dir>/<name>/last.pt (the final epoch's model;
    the trainer's validation runs on the evaluation's test images, so 'best' would be chosen on the test set)."""
    return {name: Path(out_dir) / name / CHECKPOINT_LAST for name in RUNS}


def _config(name, out_dir, epochs, seed, kwargs, fit, method, teacher=None):
    config = {
        "name": f"fallback_{name}", "seed": seed, "output_dir": str(Path(out_dir) / name), "device": "cpu",
        "epochs": epochs, "batch_size": fit["batch_size"], "workers": 0,
        "data": {"type": "memory", "augment": False, "normalize": False},
        "student": {"spec": TINY_RESNET, "kwargs": kwargs},
        "method": method,
        "optim": {"name": "adam", "lr": fit["lr"], "weight_decay": fit["weight_decay"]},
        "schedule": {"name": "constant"},
        "log": {"progress": False},
    }
    if teacher is not None:
        config["teacher"] = {"spec": TINY_RESNET, "kwargs": TEACHER_KWARGS, "weights": str(teacher)}
    return from_dict(config)


def train_fallback_models(data, out_dir, teacher_epochs=3, student_epochs=3, batch_size=32, lr=1e-3,
                          weight_decay=5e-5, seed=0):
    """Trains teacher, scratch and KD models on `data`'s training images (validated on its test images);
    returns fallback_paths(out_dir). Scratch and KD students start from the same weights and see the same
    batches (same seed): only the loss differs."""
    if data.train_images is None:
        raise ValueError(f"{data.name} has no training images to train the fallback models on")
    datasets = in_memory_datasets(data.train_images, data.train_labels, data.test_images, data.test_labels,
                                  data.class_names)
    fit = dict(batch_size=batch_size, lr=float(lr), weight_decay=float(weight_decay))
    paths = fallback_paths(out_dir)
    train(_config("teacher", out_dir, teacher_epochs, seed, TEACHER_KWARGS, fit, {"name": "scratch"}),
          datasets=datasets)
    for name, method in (("scratch", {"name": "scratch"}),
                         ("kd", {"name": "kd", "options": {"alpha": KD_ALPHA, "temperature": KD_TEMPERATURE}})):
        train(_config(name, out_dir, student_epochs, seed + 1, STUDENT_KWARGS, fit, method, paths["teacher"]),
              datasets=datasets)
    return paths
