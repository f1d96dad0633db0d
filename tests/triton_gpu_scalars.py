"""Imported first by the Triton interpreter checks: makes the interpreter pass Python float kernel arguments
as float32, as compiled Triton does on a GPU (the interpreter keeps them float64), so that a float64 path
that forgot to pass its scalars as float64 tensors fails here as it would on a GPU."""
import numpy as np
import triton.runtime.interpreter as interpreter

_keep_float64 = interpreter._implicit_cvt


def _float32_like_a_gpu(arg):
    if isinstance(arg, float):
        arg = float(np.float32(arg))
    return _keep_float64(arg)


interpreter._implicit_cvt = _float32_like_a_gpu
