"""Augmentation: ``Random*`` transforms sample parameters from a numpy Generator, then call deterministic ones."""

from __future__ import annotations

import numpy as np

from everylabel.data.batch import Sample
from everylabel.transforms.intensity import (
    RandomGamma,
    RandomNoise,
    RandomScaleShift,
    gamma,
    gaussian_noise,
    scale_shift,
)
from everylabel.transforms.spatial import RandomFlip, RandomRot90, RandomZoom, flip, rot90, zoom


class Compose:
    """Apply transforms in order, each drawing from the same Generator (so a run replays exactly)."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample


def build_augmentation(cfg) -> Compose:
    """Build the default augmentation pipeline from an :class:`~everylabel.experiments.config.AugmentConfig`."""
    if not cfg.enabled:
        return Compose([])
    return Compose([
        RandomZoom(cfg.zoom_prob, tuple(cfg.zoom_range)),
        RandomRot90(cfg.rot90_prob),
        RandomFlip(cfg.flip_prob),
        RandomScaleShift(cfg.intensity_prob, tuple(cfg.intensity_scale), tuple(cfg.intensity_shift)),
        RandomGamma(cfg.gamma_prob, tuple(cfg.gamma_range)),
        RandomNoise(cfg.noise_prob, cfg.noise_sigma),
    ])


__all__ = ["Compose", "build_augmentation", "RandomFlip", "RandomRot90", "RandomZoom", "RandomScaleShift",
           "RandomGamma", "RandomNoise", "flip", "rot90", "zoom", "scale_shift", "gamma", "gaussian_noise"]
