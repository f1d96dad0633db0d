"""Datasets: Broden (reader + packed memory-mapped cache) and a synthetic Broden with known concepts.

The writer itself is `kdfast.data.synthetic_broden.synthetic_broden`; it is not re-exported here so that
`kdfast.data.synthetic_broden` stays the module."""

from kdfast.data.broden import BrodenDataset, BrodenFormatError, PackedBroden
from kdfast.data.synthetic_broden import COLOR_PALETTE, SCENE_BACKGROUNDS, default_broden

__all__ = [
    "COLOR_PALETTE",
    "SCENE_BACKGROUNDS",
    "BrodenDataset",
    "BrodenFormatError",
    "PackedBroden",
    "default_broden",
]
