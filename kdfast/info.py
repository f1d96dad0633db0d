"""`python -m kdfast.info`: versions and which kernel backends are available here."""
import platform

import torch

from kdfast import __version__, _extension


def backends():
    """{"cpu": bool, "cuda": bool, "triton": bool}: what kdfast can dispatch to on this machine.

    cpu: the C++ kernels were built; cuda: the CUDA kernels were built and a GPU is visible;
    triton: triton imports and a GPU is visible (or TRITON_INTERPRET=1 runs it on the CPU)."""
    import os

    try:
        import triton  # noqa: F401

        has_triton = True
    except ImportError:
        has_triton = False
    gpu = torch.cuda.is_available()
    return {
        "cpu": _extension.available(),
        "cuda": _extension.cuda_built() and gpu,
        "triton": has_triton and (gpu or os.environ.get("TRITON_INTERPRET") == "1"),
    }


def report():
    lines = [
        f"kdfast {__version__}",
        f"python {platform.python_version()} ({platform.machine()})",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), {torch.get_num_threads()} CPU threads",
    ]
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except ImportError:
        lines.append("triton not installed")
    if _extension.available():
        built = "cpu + cuda" if _extension.cuda_built() else "cpu"
        lines.append(f"kdfast._C built with: {built}")
    else:
        lines.append("kdfast._C not built (run `pip install --no-build-isolation -e .`)")
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}")
    else:
        lines.append("GPU: none visible")
    available = backends()
    lines.append("backends available: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in available.items()))
    return "\n".join(lines)


def main():
    print(report())


if __name__ == "__main__":
    main()
