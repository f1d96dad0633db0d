"""Building the teacher and the student from a config's model spec, and a small ResNet for CPU-sized runs.

A spec is a torchvision model name, a timm model name (when timm is installed), `path/to/file.py:callable`
or `package.module:callable`. Builders get `num_classes` (callables only when their signature accepts it) and
the config's `kwargs`. Weights are a state dict or a checkpoint holding one under `model`/`state_dict` (loaded
strictly by kdfast.dissect.models.load_weights, the loader scripts/dissect.py uses, so anything the trainer
writes loads there too), or `pretrained` / `pretrained:<weights name>` for the library's own weights.
"""
import difflib
import importlib
import importlib.util
import inspect

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

from kdfast.dissect.models import load_weights, split_file_spec
from kdfast.distill.config import ConfigError


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


def _import_callable(spec, key):
    file_spec = split_file_spec(spec)
    if file_spec is not None:
        path, name = file_spec
        if not path.is_file():
            raise ConfigError(f"{key}: model file {path} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"kdfast_user_model_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module_name, _, name = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"{key}: cannot import module '{module_name}' ({exc})") from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ConfigError(f"{key}: '{spec}' names no callable; callables there: {', '.join(found) or 'none'}")
    return factory


def _accepts(factory, argument):
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == argument or p.kind is p.VAR_KEYWORD for p in params)


def _pretrained_name(weights):
    """None for a weights file; 'DEFAULT' or the named weights for `pretrained[:NAME]`."""
    if weights is None or not (weights == "pretrained" or weights.startswith("pretrained:")):
        return None
    return weights.partition(":")[2] or "DEFAULT"


def build_model(model_config, num_classes, key):
    """The nn.Module described by a ModelConfig (`key` is its config path, e.g. 'teacher', for errors)."""
    spec, weights = model_config.spec, model_config.weights
    kwargs = dict(model_config.kwargs)
    classes = model_config.num_classes or num_classes
    pretrained = _pretrained_name(weights)
    try:
        if ":" in spec:
            if pretrained is not None:
                raise ConfigError(f"{key}.weights: 'pretrained' needs a torchvision or timm name, not '{spec}'")
            factory = _import_callable(spec, f"{key}.spec")
            if _accepts(factory, "num_classes"):
                kwargs.setdefault("num_classes", classes)
            model = factory(**kwargs)
        elif spec in _torchvision_names():
            import torchvision

            model = torchvision.models.get_model(spec, weights=pretrained, num_classes=classes, **kwargs)
        elif _timm_has(spec):
            import timm

            model = timm.create_model(spec, pretrained=pretrained is not None, num_classes=classes, **kwargs)
        else:
            close = difflib.get_close_matches(spec, _torchvision_names(), n=5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            timm_note = "" if importlib.util.find_spec("timm") else " (timm is not installed)"
            raise ConfigError(f"{key}.spec: unknown model '{spec}': not a torchvision name, nor a timm name"
                              f"{timm_note}, nor file.py:callable / package.module:callable.{hint}")
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a builder rejecting its arguments
        raise ConfigError(f"{key}: building '{spec}' with num_classes={classes} and kwargs {kwargs} failed: "
                          f"{exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{key}.spec: '{spec}' returned {type(model).__name__}, expected a torch.nn.Module")
    if weights is not None and pretrained is None:
        try:
            load_weights(model, weights)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{key}.weights: {exc}") from exc
    return model


def _torchvision_names():
    import torchvision

    return torchvision.models.list_models()


def _timm_has(name):
    if importlib.util.find_spec("timm") is None:
        return False
    import timm

    return name in timm.list_models()
