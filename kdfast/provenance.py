"""What produced an output: the full configuration, the weights file (path and sha256) and the versions of
Python, torch, torchvision, numpy and kdfast. Every command's summary records it, so a result can be traced to
the exact model file and software that made it.

Operational settings that do not change results (the output folder, progress bars, checkpoint cadence,
restart) are left out, so that a killed-and-resumed run and an uninterrupted one write identical summaries.
"""
import dataclasses
import hashlib
import platform
from pathlib import Path

OPERATIONAL = ("out", "progress", "restart", "checkpoint_every", "checkpoint_seconds", "broden_cache", "workers",
               "activation_cache_gb")


def file_digest(path):
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path):
    """{"path": absolute path, "sha256": digest} of a file, or None without one."""
    if path is None:
        return None
    path = Path(path)
    return {"path": str(path.resolve()), "sha256": file_digest(path) if path.is_file() else None}


def versions():
    import numpy
    import torch
    import torchvision

    from kdfast import __version__, _extension

    return {
        "kdfast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "kdfast._C": ("cpu + cuda" if _extension.cuda_built() else "cpu") if _extension.available() else None,
    }


def plain(value):
    """JSON-ready copy: tuples become lists, paths and mapping keys strings."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def provenance(config, weights=None):
    """{"config": the result-relevant settings, "weights": file_record(weights), "versions": versions()} of a
    dataclass or dict config."""
    fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {
        "config": plain({k: v for k, v in fields.items() if k not in OPERATIONAL}),
        "weights": file_record(weights),
        "versions": versions(),
    }
