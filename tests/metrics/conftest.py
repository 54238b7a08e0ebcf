"""Shared helpers for the metric tests: seeded random blobs in 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage


def random_blobs(shape: tuple[int, ...], seed: int, sigma: float = 2.0, fraction: float = 0.3) -> np.ndarray:
    """A binary mask of smooth random blobs covering about ``fraction`` of the image."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > np.quantile(field, 1.0 - fraction)


@pytest.fixture
def blobs():
    return random_blobs
