"""Attribution maps from captum: Saliency (|∂ logit / ∂ input|, the ICML paper's choice) and Grad-CAM."""
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from tqdm import tqdm

from ._checks import check_class_indices, check_tensor

METHODS = ("saliency", "gradcam")


def _batches(images, targets, batch_size, desc):
    check_tensor("images", images, dims=4, floating=True)
    check_class_indices("targets", targets, size=images.shape[0])
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    starts = range(0, images.shape[0], batch_size)
    for start in tqdm(starts, desc=desc, leave=False, disable=len(starts) < 4):
        yield images[start:start + batch_size], targets[start:start + batch_size]


def saliency(model, images, targets, batch_size=64):
    """(N, C, H, W) |∂ logit_target / ∂ input| via captum Saliency(abs=True); the model runs in eval mode."""
    model.eval()
    explainer = Saliency(model)
    device = next(model.parameters()).device
    maps = []
    for x, y in _batches(images, targets, batch_size, "saliency"):
        x = x.to(device).detach().requires_grad_(True)
        maps.append(explainer.attribute(x, target=y.to(device), abs=True).detach().cpu())
    return torch.cat(maps) if maps else images.new_zeros(images.shape)


def find_layer(model, name):
    modules = dict(model.named_modules())
    if name not in modules:
        raise ValueError(f"model has no layer '{name}'; its modules are: {', '.join(n for n in modules if n)}")
    return modules[name]


def last_conv_name(model):
    """Name of the model's last Conv2d-holding top-level block (e.g. 'layer4' for a ResNet): Grad-CAM's default."""
    convs = [name for name, m in model.named_children() if any(isinstance(x, torch.nn.Conv2d) for x in m.modules())]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolutional block for Grad-CAM; pass a layer name")
    return convs[-1]


def gradcam(model, images, targets, layer=None, batch_size=64):
    """(N, H, W) Grad-CAM relu(Σ_k mean_hw(∂y/∂A_k)·A_k) at `layer` (default: the last conv block), upsampled
    bilinearly to the image size."""
    model.eval()
    layer = layer or last_conv_name(model)
    explainer = LayerGradCam(model, find_layer(model, layer))
    device = next(model.parameters()).device
    maps = []
    for x, y in _batches(images, targets, batch_size, "grad-cam"):
        cam = explainer.attribute(x.to(device).detach().requires_grad_(True), target=y.to(device),
                                  relu_attributions=True)
        maps.append(LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear").detach().cpu()[:, 0])
    return torch.cat(maps) if maps else images.new_zeros(images.shape[0], *images.shape[-2:])


def explanation_maps(model, images, targets, method="saliency", layer=None, batch_size=64):
    """(N, H, W) single-channel explanations: Saliency summed over colour channels, or Grad-CAM."""
    if method == "saliency":
        return saliency(model, images, targets, batch_size).sum(dim=1)
    if method == "gradcam":
        return gradcam(model, images, targets, layer, batch_size)
    raise ValueError(f"unknown explanation method '{method}'; choose from {list(METHODS)}")


def loss_gradients(model, images, targets, batch_size=64):
    """(N, C, H, W) ∇ₓ CE(model(x), y) per sample (summed loss, so each sample gets its own loss's gradient)."""
    model.eval()
    device = next(model.parameters()).device
    grads = []
    for x, y in _batches(images, targets, batch_size, "loss gradients"):
        x = x.to(device).detach().requires_grad_(True)
        loss = F.cross_entropy(model(x), y.to(device), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        grads.append(grad.cpu())
    return torch.cat(grads) if grads else images.new_zeros(images.shape)
