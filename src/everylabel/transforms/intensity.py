"""Intensity augmentation: touches only the image, never a label map, box, point or tag."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from everylabel.data.batch import Sample


def scale_shift(sample: Sample, scale: float, shift: float) -> Sample:
    """image * scale + shift."""
    return replace(sample, image=sample.image * scale + shift)


def gamma(sample: Sample, g: float, invert: bool = False) -> Sample:
    """nnU-Net-style gamma: rescale each channel to [0, 1], raise to ``g``, restore range (optionally on -image)."""
    img = -sample.image if invert else sample.image
    dims = tuple(range(1, img.ndim))
    lo = img.amin(dim=dims, keepdim=True)
    hi = img.amax(dim=dims, keepdim=True)
    rng = (hi - lo).clamp_min(1e-8)
    mean, std = img.mean(dim=dims, keepdim=True), img.std(dim=dims, keepdim=True)
    out = ((img - lo) / rng).clamp(0, 1).pow(g) * rng + lo
    # keep the first two moments as nnU-Net's GammaTransform(retain_stats=True) does
    out = (out - out.mean(dim=dims, keepdim=True)) / out.std(dim=dims, keepdim=True).clamp_min(1e-8) * std + mean
    return replace(sample, image=-out if invert else out)


def gaussian_noise(sample: Sample, sigma: float, generator: torch.Generator) -> Sample:
    noise = torch.randn(sample.image.shape, generator=generator) * sigma
    return replace(sample, image=sample.image + noise)


class RandomScaleShift:
    """With probability ``prob``: multiply by U(scale_range) and add U(shift_range) (brightness/contrast)."""

    def __init__(self, prob: float = 0.15, scale_range=(0.75, 1.25), shift_range=(-0.1, 0.1)):
        self.prob, self.scale_range, self.shift_range = prob, scale_range, shift_range

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.prob:
            return sample
        return scale_shift(sample, float(rng.uniform(*self.scale_range)), float(rng.uniform(*self.shift_range)))


class RandomGamma:
    """With probability ``prob``: gamma from U(gamma_range) (nnU-Net: 0.7-1.5), inverted image with ``invert_prob``."""

    def __init__(self, prob: float = 0.3, gamma_range=(0.7, 1.5), invert_prob: float = 0.1):
        self.prob, self.gamma_range, self.invert_prob = prob, gamma_range, invert_prob

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.prob:
            return sample
        return gamma(sample, float(rng.uniform(*self.gamma_range)), invert=bool(rng.random() < self.invert_prob))


class RandomNoise:
    """With probability ``prob``: additive Gaussian noise with sigma from U(0, max_sigma)."""

    def __init__(self, prob: float = 0.1, max_sigma: float = 0.1):
        self.prob, self.max_sigma = prob, max_sigma

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.prob:
            return sample
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        return gaussian_noise(sample, float(rng.uniform(0, self.max_sigma)), g)
