"""GradCAM at any layer (autograd), its exact closed form at a global-average-pool + linear head, and resizing.

GradCAM (Selvaraju et al. 2017) of class c at a layer with activations A (B, C, h, w):

    cam = relu(Σ_k α_k · A_k),   α_k = mean_hw ∂y_c / ∂A_k.

When the layer feeds only a global average pool and a linear head (torchvision ResNets at `layer4`),
∂y_c/∂A_k = W[c, k] / (h·w) at every position, so

    cam = relu(Σ_k W[c, k] · A_k) / (h·w)

exactly. That is a forward expression: training through it (e2KD) needs no double backward, and its
autograd gradient w.r.t. the parameters equals the double-backward gradient of the autograd GradCAM.
"""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from kdfast.distill.features import capture_outputs, captured, find_submodule


def check_classes(classes, logits, name="classes"):
    """(B,) int64 class indices on the logits' device; None means each sample's top-1 class."""
    if classes is None:
        return logits.detach().argmax(dim=1)
    if not isinstance(classes, torch.Tensor) or classes.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer tensor of shape ({logits.shape[0]},), got {classes!r:.80}")
    if classes.shape != (logits.shape[0],):
        raise ValueError(f"{name} must have shape ({logits.shape[0]},), one class per sample, got {tuple(classes.shape)}")
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= logits.shape[1]):
        raise ValueError(f"{name} must lie in [0, {logits.shape[1]}), got [{int(classes.min())}, {int(classes.max())}]")
    return classes.to(device=logits.device, dtype=torch.int64)


def _leaf_output(module, inputs, output):
    # The activation as a fresh leaf: its gradient is all GradCAM needs, and nothing upstream is recorded.
    return output.detach().requires_grad_(True)


@contextlib.contextmanager
def _as_leaf(model, layer):
    handle = find_submodule(model, layer).register_forward_hook(_leaf_output)
    try:
        yield
    finally:
        handle.remove()


def gradcam(model, images, classes=None, layer="layer4", create_graph=False):
    """Autograd GradCAM: (logits (B, K), cams (B, h, w)) for `classes` (B,) (default: each sample's top-1).

    With create_graph=True the cams are differentiable w.r.t. the parameters (double backward, as the e2KD
    reference trains); otherwise the layer's output is cut from the graph above it, so the pass records only
    the head. Samples are explained in one backward of the summed class logits, which is exact when samples
    do not interact after `layer` (true for eval-mode models and for ResNets at layer4)."""
    leaf = contextlib.nullcontext() if create_graph else _as_leaf(model, layer)
    with torch.enable_grad(), leaf, capture_outputs(model, [layer]) as outputs:
        logits = model(images)
        activations = captured(outputs, layer, model)
        if activations.dim() != 4:
            raise ValueError(f"GradCAM needs a (B, C, h, w) activation at {layer!r}, got shape {tuple(activations.shape)}")
        classes = check_classes(classes, logits)
        picked = logits.gather(1, classes[:, None]).sum()
        (grads,) = torch.autograd.grad(picked, activations, create_graph=create_graph)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cams = F.relu((weights * activations).sum(dim=1))
    if not create_graph:
        cams, logits = cams.detach(), logits.detach()
    return logits, cams


def closed_form_cam(features, weight, classes):
    """relu(Σ_k W[c_b, k] · A_b,k) / (h·w) for features (B, C, h, w), head weight (K, C), classes (B,)."""
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, h, w), got shape {tuple(features.shape)}")
    if weight.dim() != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(
            f"head weight must be (K, C={features.shape[1]}) for features {tuple(features.shape)}, got {tuple(weight.shape)}"
        )
    h, w = features.shape[2:]
    class_weights = weight.index_select(0, classes)  # (B, C)
    return F.relu(torch.einsum("bc,bchw->bhw", class_weights, features)) / (h * w)


def linear_head(model, head):
    head_module = find_submodule(model, head)
    if not isinstance(head_module, nn.Linear):
        raise ValueError(
            f"the closed-form CAM needs a linear head; {head!r} is a {type(head_module).__name__} "
            "(use the autograd GradCAM, cam='autograd', for other heads)"
        )
    return head_module


def check_pool_linear_head(logits, features, head_module, layer, head):
    """Raises unless logits == head(global average of features): the closed form is exact only then."""
    # Recomputed in float32 or wider outside autocast; the tolerance covers logits made in reduced precision.
    dtype = torch.promote_types(head_module.weight.dtype, torch.float32)
    with torch.no_grad(), torch.autocast(logits.device.type, enabled=False):
        bias = None if head_module.bias is None else head_module.bias.to(dtype)
        expected = F.linear(features.to(dtype).mean(dim=(2, 3)), head_module.weight.to(dtype), bias)
        scale = expected.abs().max().clamp_min(1.0)
        mismatch = float((expected - logits.to(dtype)).abs().max() / scale)
    tolerance = 3e-2 if logits.dtype in (torch.float16, torch.bfloat16) else 1e-4
    if mismatch > tolerance:
        raise ValueError(
            f"the model's logits are not {head!r}(global average pool of {layer!r}) (relative mismatch {mismatch:.3g}), "
            "so the closed-form CAM would not equal GradCAM; pick the layer that feeds the pool and head, or "
            "use the autograd GradCAM (cam='autograd')"
        )


def pool_linear_cam(model, images, classes=None, layer="layer4", head="fc", check_head=True):
    """Closed-form GradCAM for a model whose `layer` feeds a global average pool and the nn.Linear `head`:
    (logits (B, K), cams (B, h, w)), both differentiable through the ordinary autograd graph.
    check_head verifies the pool + linear structure numerically on this batch (a ValueError if it fails)."""
    head_module = linear_head(model, head)
    with capture_outputs(model, [layer]) as outputs:
        logits = model(images)
    features = captured(outputs, layer, model)
    if check_head:
        check_pool_linear_head(logits, features, head_module, layer, head)
    classes = check_classes(classes, logits)
    return logits, closed_form_cam(features, head_module.weight.to(features.dtype), classes)


def resize_maps(maps, size):
    """Bilinear resize (half-pixel centres; antialiased when shrinking, like torchvision's resize) of (B, h, w)
    or (B, C, h, w) maps to `size` (h', w'); maps already that size are returned as they are."""
    if maps.dim() not in (3, 4):
        raise ValueError(f"maps must be (B, h, w) or (B, C, h, w), got shape {tuple(maps.shape)}")
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (height, width) with both >= 1, got {size}")
    if tuple(maps.shape[-2:]) == size:
        return maps
    planar = maps.dim() == 3
    batch = maps[:, None] if planar else maps
    shrinking = size[0] < batch.shape[-2] or size[1] < batch.shape[-1]
    resized = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
    return resized[:, 0] if planar else resized
