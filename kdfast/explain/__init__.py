"""Explanations for e2KD: GradCAM (autograd at any layer, exact closed form at a pool + linear head), map
resizing, and frozen (precomputed) teacher explanations with aligned augmentation.

`kdfast.explain.gradcam` is the module (a package attribute never hides a submodule); the function is
`kdfast.explain.gradcam.gradcam`.
"""
from kdfast.explain import gradcam
from kdfast.explain.frozen import (
    ExplanationStore,
    FrozenExplanationDataset,
    crop_resize,
    precompute_explanations,
    sample_box,
)
from kdfast.explain.gradcam import closed_form_cam, pool_linear_cam, resize_maps

__all__ = [
    "ExplanationStore",
    "FrozenExplanationDataset",
    "closed_form_cam",
    "crop_resize",
    "gradcam",
    "pool_linear_cam",
    "precompute_explanations",
    "resize_maps",
    "sample_box",
]
