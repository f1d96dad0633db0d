"""Loads kdfast._C, which registers the torch.ops.kdfast.* kernels."""
import importlib

_C = None
_ERROR = None


def load():
    """Imports the compiled extension (once it succeeds); raises with build instructions when it is missing.
    torch is imported first: kdfast._C links against libc10/libtorch, which only torch's import puts in the
    process. A failure is not cached, so a later call (after a build, say) tries again."""
    global _C, _ERROR
    if _C is None:
        import torch  # noqa: F401  (loads libc10 and libtorch for the extension)

        try:
            _C = importlib.import_module("kdfast._C")
        except ImportError as exc:  # keep the reason for the message below
            _ERROR = exc
    if _C is None:
        raise RuntimeError(
            "kdfast's compiled extension kdfast._C is not importable "
            f"({_ERROR}). Build it with `pip install --no-build-isolation -e .` in the kdfast checkout."
        )
    return _C


def available():
    try:
        load()
        return True
    except RuntimeError:
        return False


def cuda_built():
    return available() and bool(_C.built_with_cuda())
