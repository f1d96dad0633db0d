"""Input checks shared by the op wrappers: clear errors naming the tensor and what was expected."""
import torch

_UPCAST_EXACT = (torch.float16, torch.bfloat16)


def as_float32(tensor, name, finite=True):
    """float32 view of `tensor` (float16/bfloat16 are widened exactly); anything else is an error."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype in _UPCAST_EXACT:
        tensor = tensor.float()
    elif tensor.dtype != torch.float32:
        raise TypeError(f"{name} must be float32 (or float16/bfloat16), got {tensor.dtype}")
    if finite and tensor.numel() and not bool(torch.isfinite(tensor).all()):
        bad = (~torch.isfinite(tensor)).sum().item()
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s); activations must be finite")
    return tensor


def as_int(tensor, name, dtype):
    """Integer tensor converted to `dtype`; floating or boolean tensors are an error."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {tensor.dtype}")
    return tensor.to(dtype)


def check_dims(tensor, name, dims, layout):
    if tensor.dim() not in dims:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(tensor.shape)}")
