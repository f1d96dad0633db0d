"""Building the teacher and the student from a config's model spec, and a small ResNet for CPU-sized runs.

Specs are read by the one model registry (kdfast.models.registry: torchvision / timm names, `file.py:callable`,
`package.module:callable`; builders get `num_classes` and the config's `kwargs`). Weights are a state dict or a
checkpoint holding one under `model`/`state_dict` (loaded strictly by the registry's load_weights, the loader
scripts/dissect.py uses, so anything the trainer writes loads there too), or `pretrained` /
`pretrained:<weights name>` for the library's own weights.
"""
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

from kdfast.distill.config import ConfigError
from kdfast.models import registry


class TinyResNet(nn.Module):
    """A ResNet with torchvision's module names (conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc) and
    BasicBlocks, but chosen widths, depths and strides and a 3x3 stride-1 stem: sized for 32x32 images on a CPU.
    Feature methods (AT, FT, CRD, SSKD) and the closed-form GradCAM find the same layers as in a ResNet-18."""

    def __init__(self, num_classes=10, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), strides=(1, 2, 2, 2)):
        super().__init__()
        if not len(widths) == len(blocks) == len(strides) == 4:
            raise ValueError(f"widths, blocks and strides need 4 entries each, got {widths}, {blocks}, {strides}")
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        channels = widths[0]
        for i, (width, count, stride) in enumerate(zip(widths, blocks, strides), start=1):
            layers = []
            for b in range(count):
                step = stride if b == 0 else 1
                downsample = None
                if step != 1 or channels != width:
                    downsample = nn.Sequential(conv1x1(channels, width, step), nn.BatchNorm2d(width))
                layers.append(BasicBlock(channels, width, step, downsample))
                channels = width
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tiny_resnet(num_classes=10, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), strides=(1, 2, 2, 2)):
    return TinyResNet(num_classes, tuple(widths), tuple(blocks), tuple(strides))


def _pretrained_name(weights):
    """None for a weights file; 'DEFAULT' or the named weights for `pretrained[:NAME]`."""
    if weights is None or not (weights == "pretrained" or weights.startswith("pretrained:")):
        return None
    return weights.partition(":")[2] or "DEFAULT"


def build_model(model_config, num_classes, key, seed=None):
    """The nn.Module described by a ModelConfig (`key` is its config path, e.g. 'teacher', for errors), built by
    kdfast.models.registry.build_model; a weights file is loaded strictly."""
    spec, weights = model_config.spec, model_config.weights
    pretrained = _pretrained_name(weights)
    try:
        model = registry.build_model(spec, model_config.num_classes or num_classes, model_config.kwargs, seed=seed,
                                     where=f"{key}.spec", pretrained=pretrained)
    except (OSError, TypeError, ValueError) as exc:
        raise ConfigError(str(exc) if str(exc).startswith(key) else f"{key}: {exc}") from exc
    if weights is not None and pretrained is None:
        try:
            registry.load_weights(model, weights)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{key}.weights: {exc}") from exc
    return model
