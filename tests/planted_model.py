"""A model with planted concept detectors for the synthetic Broden, for the dissection tests.

Dissect it with `--mean 0 0 0 --std 1 1 1`, so that it sees pixel/255. Its `features` layer has PLANTED_UNITS:

0 red:    per-pixel closeness to COLOR_PALETTE['red']   → a 'red' (color) detector
1 ocean:  per-pixel closeness to the ocean scene's background colour → an 'ocean' (scene) detector, through the
          image-level label
2 mix:    a fixed linear mix of the channels (planted on no concept)
3 const:  1 everywhere (all values tie at the threshold: empty masks)
4 dead:   0 everywhere

each average-pooled to a MAP_SIZE x MAP_SIZE map. Every operation is per image and per pixel, so activations do
not depend on how images are batched. Factories (for `tests/planted_model.py:<factory>` specs) read environment
variables so that a test can plant failures: PLANTED_CRASH_AFTER (raise after that many forward passes) and
PLANTED_NAN_IMAGE (NaN activations where the red channel of pixel (0, 0) exceeds this value).
"""
import os

import torch
from torch import nn

from kdfast.data.synthetic_broden import COLOR_PALETTE, SCENE_BACKGROUNDS

PLANTED_UNITS = ("red", "ocean", "mix", "const", "dead")
MAP_SIZE = 7
SHARPNESS = 0.02  # squared RGB distance (0..1 scale) at which closeness falls to 1/e


def _colour(rgb):
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1) / 255


class PlantedCrash(Exception):
    """Stands in for the process being killed."""


class PixelUnits(nn.Module):
    def __init__(self, nan_above=None):
        super().__init__()
        self.nan_above = nan_above
        self.register_buffer("red", _colour(COLOR_PALETTE["red"]))
        self.register_buffer("ocean", _colour(SCENE_BACKGROUNDS["ocean"]))

    def forward(self, x):
        r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
        red = torch.exp(-((x - self.red) ** 2).sum(1, keepdim=True) / SHARPNESS)
        ocean = torch.exp(-((x - self.ocean) ** 2).sum(1, keepdim=True) / SHARPNESS)
        mix = 0.3 * r - 0.5 * g + 0.2 * b
        units = torch.cat([red, ocean, mix, torch.ones_like(r), torch.zeros_like(r)], dim=1)
        if self.nan_above is not None:
            units = torch.where((r[:, :, :1, :1] > self.nan_above), float("nan"), units)
        return units


class PlantedDetectors(nn.Module):
    def __init__(self, crash_after=None, nan_above=None):
        super().__init__()
        self.features = nn.Sequential(PixelUnits(nan_above), nn.AdaptiveAvgPool2d(MAP_SIZE))
        self.head = nn.Linear(len(PLANTED_UNITS), 2)
        self.crash_after = crash_after
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise PlantedCrash(f"planted crash in forward pass {self.calls}")
        return self.head(self.features(x).mean(dim=(2, 3)))


class RandomConv(PlantedDetectors):
    """Random-init units (a strided convolution drawn from torch's generator) with the planted crash: the
    model of a run without --weights, whose weights only --seed makes the same in every process."""

    def __init__(self, crash_after=None):
        super().__init__(crash_after)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 9, stride=8), nn.ReLU())
        self.head = nn.Linear(8, 2)


def random_conv_crashing():
    return RandomConv(crash_after=_env("PLANTED_CRASH_AFTER", int))


def _env(name, kind):
    value = os.environ.get(name)
    return None if value is None else kind(value)


def planted():
    return PlantedDetectors()


def crashing():
    return PlantedDetectors(crash_after=_env("PLANTED_CRASH_AFTER", int))


def nan_model():
    return PlantedDetectors(nan_above=_env("PLANTED_NAN_IMAGE", float))


def not_a_model():
    return "not a module"
