"""Network dissection (Bau et al. 2017, as NetDissect-Lite does it) with exact thresholds, fused tallies,
several layers per forward pass, quantile/IoU sweeps, resumable passes and torchrun scale-out."""
from kdfast.dissect.config import DissectConfig, parse_values
from kdfast.dissect.models import PREPROCESS, LayerRecorder, Normalizer, build_model, load_weights
from kdfast.dissect.pipeline import Dissection, dissect
from kdfast.dissect.results import Concepts, DetectorCount, LayerTally, UnitLabel

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
