"""What every kdfast Triton launch needs: the inputs' GPU made current, and scalars in the inputs' precision."""
import contextlib

import torch
import triton
import triton.language as tl

# The most programs one launch may put on grid axes 1 and 2 (CUDA's limit; axis 0 takes 2^31 - 1).
MAX_GRID_YZ = 65535


def device_of(tensor):
    """Makes the tensor's GPU current for the launch (Triton launches on the current device), as the
    C++ ops' CUDAGuard does; a no-op for CPU tensors (the interpreter)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def scalars(like, *values):
    """Python floats reach a Triton kernel as float32. For float64 inputs each value becomes a 0-d float64
    tensor on the inputs' device (filled there, no host copy) that the kernel loads (`SCALARS_IN_MEMORY`);
    float32 (or narrower) inputs keep the plain floats, which lose nothing in their arithmetic."""
    if like.dtype != torch.float64:
        return tuple(float(v) for v in values), False
    return tuple(torch.full((), float(v), dtype=torch.float64, device=like.device) for v in values), True


@triton.jit
def kernel_scalar(arg, IN_MEMORY: tl.constexpr):
    """The kernel side of scalars(): the value of a scalar argument, loaded when it came as a 0-d float64
    tensor (IN_MEMORY, the kernels' SCALARS_IN_MEMORY), else the plain float itself."""
    if IN_MEMORY:
        return tl.load(arg)
    else:
        return arg
