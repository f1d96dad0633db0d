"""Input checks shared by the metrics: each failure names the tensor and says what was expected."""
import torch


def check_tensor(name, value, dims=None, floating=None):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dims is not None and value.dim() not in (dims if isinstance(dims, tuple) else (dims,)):
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(value.shape)}")
    if floating is True and not value.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point, got {value.dtype}")
    if floating is False and (value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool):
        raise ValueError(f"{name} must hold integer class indices, got {value.dtype}")
    return value


def check_finite(name, value):
    """Raises naming the first sample (index along dim 0) holding NaN or ±inf."""
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        first = int(bad.reshape(bad.shape[0], -1).any(dim=1).nonzero()[0]) if value.dim() > 0 else 0
        kind = "NaN" if bool(torch.isnan(value).any()) else "inf"
        raise ValueError(f"{name} contains {kind} values (first in sample {first}); check the attribution method "
                         "and the model's inputs")
    return value


def check_nonempty(name, value):
    if value.shape[0] == 0:
        raise ValueError(f"{name} holds no samples; the metric needs at least one")
    return value


def check_same_shape(name_a, a, name_b, b):
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
                         "they must match")


def check_class_indices(name, targets, num_classes=None, size=None):
    """1-D integer class indices, one per sample, in 0..num_classes−1 (only ≥ 0 when num_classes is None)."""
    check_tensor(name, targets, dims=1, floating=False)
    if size is not None and targets.shape[0] != size:
        raise ValueError(f"{name} has {targets.shape[0]} entries, expected one per sample ({size})")
    if targets.numel():
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or (num_classes is not None and high >= num_classes):
            expected = f"0..{num_classes - 1}" if num_classes is not None else "≥ 0"
            raise ValueError(f"{name} holds classes {low}..{high}, expected {expected}")
    return targets
