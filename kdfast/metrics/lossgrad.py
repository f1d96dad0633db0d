"""Display of input loss gradients (Tsipras et al. 2018; ICML 2023 §5.3, Fig. 8).

Gradients are clipped to their mean ± 3 standard deviations per image and rescaled linearly to [0, 1], so a
zero gradient shows mid-grey and the strongest positive/negative gradients show bright/dark.
"""
import torch

from ._checks import check_finite, check_tensor


def gradient_display(gradients):
    """(N, C, H, W) gradients → (N, C, H, W) images in [0, 1]; statistics over each image's C·H·W values.

    An image whose gradient is constant (σ = 0) maps to 0.5 everywhere."""
    check_tensor("gradients", gradients, dims=4, floating=True)
    check_finite("gradients", gradients)
    flat = gradients.double().flatten(1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, unbiased=False, keepdim=True) if flat.shape[1] else torch.zeros_like(mean)
    low, span = mean - 3 * std, 6 * std
    scaled = torch.where(span > 0, (flat.clamp(low, low + span) - low) / torch.where(span > 0, span, 1.0), 0.5)
    return scaled.view_as(gradients).to(gradients.dtype)
