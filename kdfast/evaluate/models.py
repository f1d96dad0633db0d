"""Loading the models to evaluate: distillation checkpoints (`{"model": state_dict, "config": {...}}`, the
architecture read from `config.student.spec`) or plain state dicts with an architecture name."""
import torch
from torch import nn

from kdfast.models import registry

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
    """The checkpoint object (weights_only loading), with errors naming the file."""
    return registry.read_checkpoint(path)


def build_classifier(spec, num_classes, kwargs=None, where="--arch", seed=None):
    """A randomly initialised classifier: torchvision/timm name, `file.py:callable` or `module:callable`."""
    return registry.build_model(spec, num_classes, kwargs, seed=seed, where=where)


def check_architecture(path, arch, flag="--arch"):
    """Before any work: a trainer checkpoint of another architecture than an explicit `arch` is an error naming
    both (plain state dicts are checked when their weights load)."""
    info = registry.checkpoint_info(path) if arch is not None else None
    if info is not None and info.spec != arch:
        raise ValueError(f"{flag} {arch} does not match {path}, which holds a '{info.spec}' model (kwargs "
                         f"{info.kwargs}); drop {flag} to use the checkpoint's own")


def load_classifier(path, num_classes, arch=None):
    """(model in eval mode, the checkpoint's config dict or None). A trainer checkpoint rebuilds its own model
    (config.student.spec, kwargs, num_classes; `arch`, when given, must name the same architecture); a plain
    state dict needs `arch` and gets `num_classes`. Weights load strictly."""
    try:
        model, info = registry.load_checkpoint_model(path, spec=arch, num_classes=num_classes, where="--arch")
    except ValueError as exc:
        if "plain state dict" in str(exc):
            raise ValueError(f"{path} holds no config naming its architecture (config.student.spec); pass --arch "
                             "NAME (a torchvision name such as resnet18, or file.py:callable)") from exc
        raise
    return model, (info.config if info is not None else None)
