"""Loading the models to evaluate: distillation checkpoints (`{"model": state_dict, "config": {...}}`, the
architecture read from `config.student.spec`) or plain state dicts with an architecture name."""
from pathlib import Path

import torch
from torch import nn

from kdfast.dissect.models import load_weights
from kdfast.distill.config import ModelConfig
from kdfast.distill.models import build_model

# The small ResNet used for the fallback models and, by default, for DiffROAR retraining.
TINY_RESNET = "kdfast.distill.models:tiny_resnet"


class Normalized(nn.Module):
    """model((x − mean) / std): attributions are taken with respect to the [0, 1] image the user sees."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def read_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds; all mean "not a loadable checkpoint"
        raise ValueError(f"{path}: cannot read it as a PyTorch checkpoint with weights_only=True ({exc})") from exc


def build_classifier(spec, num_classes, kwargs=None, where="--arch"):
    """A randomly initialised classifier: torchvision/timm name, `file.py:callable` or `module:callable`."""
    return build_model(ModelConfig(spec=spec, kwargs=dict(kwargs or {})), num_classes, where)


def load_classifier(path, num_classes, arch=None):
    """(model in eval mode, the checkpoint's config dict or None). The architecture comes from the checkpoint's
    `config.student.spec` (and `kwargs`), else from `arch`; weights load strictly."""
    checkpoint = read_checkpoint(path)
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    student = (config or {}).get("student") or {}
    if arch is not None:
        spec, kwargs = arch, {}
    elif student.get("spec"):
        spec, kwargs = student["spec"], student.get("kwargs") or {}
    else:
        raise ValueError(f"{path} holds no config naming its architecture (config.student.spec); pass --arch NAME "
                         "(a torchvision name such as resnet18, or file.py:callable)")
    model = build_classifier(spec, student.get("num_classes") or num_classes, kwargs, where=f"{path}")
    load_weights(model, path)
    return model.eval(), config
