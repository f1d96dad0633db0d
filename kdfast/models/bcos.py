"""B-cos networks (Böhle et al., CVPR 2022 / TPAMI 2024), built as the `bcos` package (B-cos v2) builds its
ImageNet models, with the same module names, so the package's state dicts load unchanged.

A B-cos network is dynamic linear: with its dynamic scales (and normalisation statistics) treated as constants
— `explanation_mode(model)` — every logit is exactly W(x)ᵀx (+ the logit layer's bias), and W(x) = ∂logit/∂x is
the explanation. `explain_batch` gets W(x) and the contribution maps Σ_c W(x)⊙x for a whole batch and
per-sample classes in one forward and one backward (the package's `model.explain` takes one image at a time).
"""
import math
from collections import namedtuple
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from kdfast.ops.bcos_conv import bcos_conv2d, bcos_conv2d_reference, dynamic_scale

LINEAR_NORM_EPS = 1e-12  # ‖x‖ + 1e-12 in BcosLinear, as in the bcos package

BcosExplanation = namedtuple("BcosExplanation", ["logits", "weights", "contributions"])


def encode_input(images):
    """(B, 3, H, W) images in [0, 1] -> (B, 6, H, W) [r, g, b, 1−r, 1−g, 1−b], the B-cos input encoding
    (it makes every colour, black included, a vector of the same norm's direction family)."""
    if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point:
        raise TypeError(f"images must be a floating-point tensor, got {getattr(images, 'dtype', type(images))}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    return torch.cat([images, 1 - images], dim=1)


class Detachable:
    """Mixin for modules with dynamic weights or statistics that explanation mode turns into constants
    (the method name is the bcos package's, so its `explanation_mode` drives these modules too)."""

    explaining = False

    def set_explanation_mode(self, active=True):
        self.explaining = bool(active)

    @property
    def is_in_explanation_mode(self):
        return self.explaining


@contextmanager
def explanation_mode(model):
    """Within the block, every explanation-aware module of `model` treats its dynamic scale (B-cos layers),
    normalisation statistics (norm layers) and attention (ViT) as constants for autograd. Forward values do
    not change. Restores each module's previous mode on exit."""
    modules = [m for m in model.modules() if hasattr(m, "set_explanation_mode")]
    previous = [bool(getattr(m, "is_in_explanation_mode", False)) for m in modules]
    try:
        for m in modules:
            m.set_explanation_mode(True)
        yield model
    finally:
        for m, was in zip(modules, previous):
            m.set_explanation_mode(was)


def _check_b_and_max_out(b, max_out):
    """The arguments every B-cos layer shares: the exponent b >= 1 and the max-out group size >= 1."""
    if max_out < 1:
        raise ValueError(f"max_out must be >= 1, got {max_out}")
    if b < 1:
        raise ValueError(f"b must be >= 1, got {b}")


class BcosConv2d(Detachable, nn.Module):
    """B-cos convolution: filters normalised to unit norm, no bias, optional max-out over `max_out` units,
    output scaled by |cos(x, ŵ)|^(b−1) per patch (see kdfast.ops.bcos_conv for the exact arithmetic).
    `fused=True` runs torch.ops.kdfast.bcos_conv2d (needs the compiled extension); False runs the plain-PyTorch
    definition. The filters live in `self.linear` (state-dict key `linear.weight`, as in the bcos package)."""

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=0, dilation=1, groups=1,
                 b=2, max_out=1, fused=True, device=None, dtype=None):
        super().__init__()
        _check_b_and_max_out(b, max_out)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.b, self.max_out, self.fused = b, max_out, fused
        self.linear = nn.Conv2d(in_channels, out_channels * max_out, kernel_size, stride, padding, dilation,
                                groups, bias=False, device=device, dtype=dtype)

    def forward(self, x):
        w = self.linear.weight
        w = w / torch.linalg.vector_norm(w, dim=(1, 2, 3), keepdim=True)
        conv = self.linear
        args = (x, w, conv.stride, conv.padding, conv.dilation, conv.groups, self.max_out, self.b, self.explaining)
        return bcos_conv2d(*args) if self.fused else bcos_conv2d_reference(*args)[0]

    def extra_repr(self):
        return f"b={self.b}, max_out={self.max_out}, fused={self.fused}"


class BcosLinear(Detachable, nn.Module):
    """B-cos linear layer over the last dimension: unit-norm rows, no bias, max-out, |cos|^(b−1) scaling with
    ‖x‖ + 1e-12 as the input norm (the bcos package's definition)."""

    def __init__(self, in_features, out_features, b=2, max_out=1, device=None, dtype=None):
        super().__init__()
        _check_b_and_max_out(b, max_out)
        self.in_features, self.out_features = in_features, out_features
        self.b, self.max_out = b, max_out
        self.linear = nn.Linear(in_features, out_features * max_out, bias=False, device=device, dtype=dtype)

    def forward(self, x):
        w = self.linear.weight
        out = F.linear(x, w / torch.linalg.vector_norm(w, dim=1, keepdim=True))
        if self.max_out > 1:
            out = out.unflatten(-1, (self.out_features, self.max_out)).max(dim=-1).values
        if self.b == 1:
            return out
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) + LINEAR_NORM_EPS
        if self.explaining:
            return dynamic_scale(out.detach(), norm.detach(), self.b) * out
        return dynamic_scale(out, norm, self.b) * out

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, b={self.b}, max_out={self.max_out}"


class BatchNormUncentered2d(Detachable, nn.BatchNorm2d):
    """Batch norm without centring: x / sqrt(var + eps) · weight (+ bias), var over (N, H, W) without Bessel's
    correction, also for the running estimate (the bcos package's "BNU"). Without a bias (the default, the
    package's NoBias wrapper) it keeps the network dynamic linear. In explanation mode the batch variance is a
    constant. `running_mean` is kept, unused, so state dicts match nn.BatchNorm2d's layout."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, bias=False, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine=True, device=device, dtype=dtype)
        if not bias:
            self.bias = None

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"BatchNormUncentered2d expects (N, C, H, W), got shape {tuple(x.shape)}")
        if self.training:
            var = (x.detach() if self.explaining else x).var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_var.mul_(1 - factor).add_(factor * var.detach())
        else:
            var = self.running_var
        x = x / (var + self.eps).sqrt()[None, :, None, None] * self.weight[None, :, None, None]
        return x if self.bias is None else x + self.bias[None, :, None, None]


class LogitLayer(nn.Module):
    """logits / temperature + bias (both optional constants); the B-cos models' last step."""

    def __init__(self, logit_temperature=None, logit_bias=None):
        super().__init__()
        self.logit_temperature, self.logit_bias = logit_temperature, logit_bias

    def forward(self, x):
        if self.logit_temperature is not None:
            x = x / self.logit_temperature
        return x if self.logit_bias is None else x + self.logit_bias

    def extra_repr(self):
        return f"logit_temperature={self.logit_temperature}, logit_bias={self.logit_bias}"


def default_logit_bias(num_classes):
    """-log(K − 1): a uniform prior for the B-cos models' binary-cross-entropy training."""
    if num_classes < 2:
        raise ValueError(f"the default logit bias -log(num_classes - 1) needs num_classes >= 2, got {num_classes}")
    return -math.log(num_classes - 1)


class BasicBlock(nn.Module):
    """Residual block of two 3x3 B-cos convs; no ReLU (the B-cos scaling is the non-linearity)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride, downsample, conv, norm):
        super().__init__()
        self.conv1 = conv(inplanes, planes, kernel_size=3, stride=stride, padding=1)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, kernel_size=3, padding=1)
        self.bn2 = norm(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return out + (x if self.downsample is None else self.downsample(x))


class Bottleneck(nn.Module):
    """1x1 – 3x3 (strided, ResNet v1.5) – 1x1 B-cos bottleneck; no ReLU."""

    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample, conv, norm):
        super().__init__()
        self.conv1 = conv(inplanes, planes, kernel_size=1)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, kernel_size=3, stride=stride, padding=1)
        self.bn2 = norm(planes)
        self.conv3 = conv(planes, planes * self.expansion, kernel_size=1)
        self.bn3 = norm(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv3(self.bn2(self.conv2(self.bn1(self.conv1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class BcosResNet(nn.Module):
    """The bcos package's B-cos ResNet: B-cos convs, uncentred bias-free batch norm, average pooling in the stem,
    and a 1x1 B-cos conv classifier applied BEFORE global average pooling, then the logit layer (bias
    -log(K−1) unless given). `inplanes` scales every stage's width (64 for the ImageNet models)."""

    def __init__(self, block, layers, num_classes=1000, *, in_chans=6, inplanes=64, small_inputs=False, b=2,
                 max_out=1, norm_layer=BatchNormUncentered2d, logit_bias=None, logit_temperature=None, fused=True):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must give the number of blocks of the 4 stages, got {layers}")
        conv = partial(BcosConv2d, b=b, max_out=max_out, fused=fused)
        if small_inputs:  # CIFAR-style stem
            self.conv1 = conv(in_chans, inplanes, kernel_size=3, padding=1)
            self.pool = None
        else:
            self.conv1 = conv(in_chans, inplanes, kernel_size=7, stride=2, padding=3)
            self.pool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = norm_layer(inplanes)
        self.inplanes = inplanes
        self.layer1 = self._make_layer(block, inplanes, layers[0], 1, conv, norm_layer)
        self.layer2 = self._make_layer(block, inplanes * 2, layers[1], 2, conv, norm_layer)
        self.layer3 = self._make_layer(block, inplanes * 4, layers[2], 2, conv, norm_layer)
        self.layer4 = self._make_layer(block, inplanes * 8, layers[3], 2, conv, norm_layer)
        self.num_features = inplanes * 8 * block.expansion
        self.num_classes = num_classes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = conv(self.num_features, num_classes, kernel_size=1)
        if logit_bias is None:
            logit_bias = default_logit_bias(num_classes)
        self.logit_layer = LogitLayer(logit_temperature=logit_temperature, logit_bias=logit_bias)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)

    def _make_layer(self, block, planes, blocks, stride, conv, norm):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride),
                norm(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, conv, norm)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, conv, norm) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x):
        x = self.bn1(self.conv1(x))
        if self.pool is not None:
            x = self.pool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        x = self.avgpool(self.fc(self.forward_features(x))).flatten(1)
        return self.logit_layer(x)


def bcos_resnet18(num_classes=1000, **kwargs):
    """B-cos ResNet-18 (the bcos package's `resnet18` with its ImageNet settings: BNU norms, b=2)."""
    return BcosResNet(BasicBlock, [2, 2, 2, 2], num_classes, **kwargs)


def bcos_resnet34(num_classes=1000, **kwargs):
    """B-cos ResNet-34 (the bcos package's `resnet34` with its ImageNet settings)."""
    return BcosResNet(BasicBlock, [3, 4, 6, 3], num_classes, **kwargs)


def bcos_resnet50(num_classes=1000, **kwargs):
    """B-cos ResNet-50 (the bcos package's `resnet50` with its ImageNet settings)."""
    return BcosResNet(Bottleneck, [3, 4, 6, 3], num_classes, **kwargs)


def _check_batch_independent(model):
    # Centred (or other) batch norms in training mode mix samples through batch statistics that explanation
    # mode does not freeze; uncentred B-cos batch norm treats its batch variance as a constant there.
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and not isinstance(m, BatchNormUncentered2d):
            raise ValueError(
                f"explain_batch: module {name!r} ({type(m).__name__}) is in training mode, so samples would "
                "interact through its batch statistics; call model.eval()"
            )


def explain_batch(model, x6, classes=None, create_graph=False):
    """Explanations of a whole batch in one forward and one backward.

    x6: (B, C, H, W) encoded input (`encode_input`); classes: (B,) class per sample, or None for each sample's
    prediction. Returns BcosExplanation(logits (B, K), weights W(x) (B, C, H, W) = ∂logit[b, class_b]/∂x_b,
    contributions (B, H, W) = Σ_c W(x)⊙x). The summed selected logits are differentiated once: in explanation
    mode no sample's logit depends on another sample's input (eval mode; in training mode the B-cos batch
    norm's batch variance is a constant, and running statistics update as in any training forward).
    `create_graph=True` keeps W(x) differentiable w.r.t. the parameters (e2KD); the dynamic scales stay
    constants at every order, as in the bcos package. The logits are detached unless create_graph=True; then
    they carry this pass's (explanation-mode) graph too, for a loss on the same forward."""
    if not isinstance(x6, torch.Tensor) or not x6.dtype.is_floating_point or x6.dim() != 4:
        raise ValueError(f"x6 must be a floating-point (B, C, H, W) tensor, got {getattr(x6, 'shape', type(x6))}")
    _check_batch_independent(model)
    x = x6.detach().requires_grad_(True)
    with torch.enable_grad(), explanation_mode(model):
        logits = model(x)
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"model must return (B={x.shape[0]}, K) logits, got shape {tuple(logits.shape)}")
        classes = _check_classes(classes, logits)
        selected = logits.gather(1, classes[:, None]).sum()
        (weights,) = torch.autograd.grad(selected, x, create_graph=create_graph)
    logits = logits if create_graph else logits.detach()
    return BcosExplanation(logits, weights, (x.detach() * weights).sum(1))


def _check_classes(classes, logits):
    batch, num_classes = logits.shape
    if classes is None:
        return logits.detach().argmax(1)
    if not isinstance(classes, torch.Tensor):
        classes = torch.as_tensor(classes)
    if classes.dtype.is_floating_point or classes.dtype == torch.bool or classes.shape != (batch,):
        raise ValueError(f"classes must be a ({batch},) integer tensor, got {classes.dtype} {tuple(classes.shape)}")
    if batch and not bool(((classes >= 0) & (classes < num_classes)).all()):
        raise ValueError(
            f"classes must lie in [0, {num_classes}), got min {int(classes.min())}, max {int(classes.max())}"
        )
    return classes.to(device=logits.device, dtype=torch.int64)
