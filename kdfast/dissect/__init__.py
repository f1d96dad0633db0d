"""Network dissection (Bau et al. 2017, as NetDissect-Lite does it) with exact thresholds, fused tallies,
several layers per forward pass, quantile/IoU sweeps, resumable passes and torchrun scale-out."""
import importlib

# Loaded on first use (PEP 562), so that `scripts/dissect.py --help` does not wait for torch.
_HOMES = {
    "DissectConfig": "config", "parse_values": "config", "PREPROCESS": "config",
    "LayerRecorder": "models", "Normalizer": "models", "build_model": "models", "load_weights": "models",
    "Dissection": "pipeline", "dissect": "pipeline",
    "Concepts": "results", "DetectorCount": "results", "LayerTally": "results", "UnitLabel": "results",
}


def __getattr__(name):
    if name in _HOMES:
        return getattr(importlib.import_module(f"kdfast.dissect.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'kdfast.dissect' has no attribute '{name}'")


__all__ = [
    "PREPROCESS",
    "Concepts",
    "DetectorCount",
    "DissectConfig",
    "Dissection",
    "LayerRecorder",
    "LayerTally",
    "Normalizer",
    "UnitLabel",
    "build_model",
    "dissect",
    "load_weights",
    "parse_values",
]
