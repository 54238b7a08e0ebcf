"""nnU-Net-style preprocessing: crop to non-zero, resample to a target spacing, normalise intensities.

Follows nnU-Net v2 (Isensee et al., Nature Methods 2021): images are cropped to the bounding box of their non-zero
region, resampled to the dataset's target spacing (median spacing by default), and normalised per channel: CT
channels are clipped to the [0.5, 99.5] percentiles of the foreground intensities of the training set and z-scored
with the foreground mean/std; every other channel is z-scored per image. Deviation: images are resampled with
linear (order 1) interpolation instead of nnU-Net's third-order splines, to keep preprocessing fast on 2 cores;
label maps use nearest-neighbour as in nnU-Net's order-0 path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from everylabel.annotations.kinds import Annotations


@dataclass
class IntensityStats:
    """Foreground intensity statistics of one channel over the training set (nnU-Net's CT normalisation)."""

    mean: float
    std: float
    lower: float
    upper: float


@dataclass
class PreprocessPlan:
    """What preprocessing does, resolved from the data and the config; saved with the model.

    Attributes:
        normalization: one entry per channel: "zscore", "ct" or "none".
        target_spacing: spacing to resample to, or None to keep each image's grid.
        crop_nonzero: crop each image to the bounding box of its non-zero voxels.
        ct_stats: per-channel statistics for "ct" channels (None for the others).
    """

    normalization: list[str]
    target_spacing: tuple[float, ...] | None = None
    crop_nonzero: bool = True
    ct_stats: list[IntensityStats | None] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "normalization": list(self.normalization),
            "target_spacing": None if self.target_spacing is None else [float(s) for s in self.target_spacing],
            "crop_nonzero": self.crop_nonzero,
            "ct_stats": [None if s is None else vars(s) for s in self.ct_stats],
        }

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessPlan:
        return cls(
            normalization=list(d["normalization"]),
            target_spacing=None if d.get("target_spacing") is None else tuple(d["target_spacing"]),
            crop_nonzero=bool(d.get("crop_nonzero", True)),
            ct_stats=[None if s is None else IntensityStats(**s) for s in d.get("ct_stats", [])],
        )


@dataclass
class Geometry:
    """How a preprocessed case maps back to its original grid (to write predictions in the input's geometry)."""

    original_shape: tuple[int, ...]
    bbox: tuple[tuple[int, int], ...]
    cropped_shape: tuple[int, ...]
    resampled_shape: tuple[int, ...]


def nonzero_bbox(image: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Bounding box (start, stop) per spatial axis of the voxels non-zero in any channel (whole image if none).

    Shapes:
        image: (C, *S)
    """
    nz = np.any(image != 0, axis=0)
    if not nz.any():
        return tuple((0, s) for s in nz.shape)
    out = []
    for ax in range(nz.ndim):
        other = tuple(a for a in range(nz.ndim) if a != ax)
        idx = np.flatnonzero(nz.any(axis=other))
        out.append((int(idx[0]), int(idx[-1]) + 1))
    return tuple(out)


def fit_ct_stats(images: list[np.ndarray], labels: list[np.ndarray | None], channel: int,
                 max_samples: int = 100_000, seed: int = 0) -> IntensityStats:
    """nnU-Net's foreground intensity statistics for a CT channel (clip to [0.5, 99.5] percentiles, then z-score).

    Args:
        images: list of (C, *S) arrays.
        labels: matching label maps (S) or None (unlabelled cases are skipped).
        channel: which channel.
    """
    rng = np.random.default_rng(seed)
    values = []
    for img, lab in zip(images, labels):
        if lab is None:
            continue
        fg = img[channel][lab > 0]
        if fg.size > max_samples:
            fg = rng.choice(fg, max_samples, replace=False)
        values.append(fg)
    if not values or sum(v.size for v in values) == 0:
        values = [img[channel].ravel() for img in images]
    v = np.concatenate(values).astype(np.float64)
    lower, upper = np.percentile(v, [0.5, 99.5])
    v = np.clip(v, lower, upper)
    return IntensityStats(mean=float(v.mean()), std=float(max(v.std(), 1e-8)), lower=float(lower),
                          upper=float(upper))


def normalize(image: np.ndarray, plan: PreprocessPlan) -> np.ndarray:
    """Normalise each channel of a (C, *S) image as the plan says."""
    out = np.empty_like(image, dtype=np.float32)
    for c in range(image.shape[0]):
        kind = plan.normalization[c]
        x = image[c].astype(np.float32)
        if kind == "ct":
            s = plan.ct_stats[c]
            out[c] = (np.clip(x, s.lower, s.upper) - s.mean) / s.std
        elif kind == "zscore":
            out[c] = (x - x.mean()) / max(float(x.std()), 1e-8)
        elif kind == "none":
            out[c] = x
        else:
            raise ValueError(f"unknown normalization {kind!r}; expected 'zscore', 'ct' or 'none'")
    return out


def _zoom_factors(spacing, target_spacing, shape) -> tuple[float, ...] | None:
    if target_spacing is None:
        return None
    factors = tuple(float(s) / float(t) for s, t in zip(spacing, target_spacing))
    if all(abs(f - 1.0) < 1e-3 for f in factors):
        return None
    return factors


def resampled_shape(shape, spacing, target_spacing) -> tuple[int, ...]:
    f = _zoom_factors(spacing, target_spacing, shape)
    if f is None:
        return tuple(shape)
    return tuple(max(1, int(round(s * z))) for s, z in zip(shape, f))


def _resize(arr: np.ndarray, new_shape: tuple[int, ...], order: int) -> np.ndarray:
    factors = [n / o for n, o in zip(new_shape, arr.shape)]
    return ndimage.zoom(arr, factors, order=order, mode="nearest", grid_mode=True)


def preprocess_case(image: np.ndarray, ann: Annotations, spacing: tuple[float, ...],
                    plan: PreprocessPlan) -> tuple[np.ndarray, Annotations, Geometry]:
    """Crop, resample and normalise one case; annotations follow the same geometry.

    Shapes:
        image: (C, *S) -> (C, *S')
    Returns:
        (image, annotations, geometry) in the preprocessed grid.
    """
    spatial = image.shape[1:]
    bbox = nonzero_bbox(image) if plan.crop_nonzero else tuple((0, s) for s in spatial)
    sl = tuple(slice(a, b) for a, b in bbox)
    image = image[(slice(None),) + sl]
    cropped = image.shape[1:]
    offset = np.array([a for a, _ in bbox], dtype=np.float64)

    def crop(a):
        return None if a is None else a[sl]

    ann = ann.replace(labels=crop(ann.labels), valid=crop(ann.valid), roi=crop(ann.roi))
    if ann.points is not None and len(ann.points):
        ann = ann.replace(points=np.asarray(ann.points, dtype=np.float64) - offset)
    if ann.boxes is not None and len(ann.boxes):
        b = np.asarray(ann.boxes, dtype=np.float64) - np.concatenate([offset, offset])
        hi = np.array(cropped * 2, dtype=np.float64)
        ann = ann.replace(boxes=np.clip(b, 0, hi))

    new_shape = resampled_shape(cropped, spacing, plan.target_spacing)
    if new_shape != tuple(cropped):
        image = np.stack([_resize(ch, new_shape, order=1) for ch in image])
        scale = np.array(new_shape, dtype=np.float64) / np.array(cropped, dtype=np.float64)

        def rs(a):
            return None if a is None else _resize(a, new_shape, order=0)

        ann = ann.replace(labels=rs(ann.labels), valid=rs(ann.valid), roi=rs(ann.roi))
        if ann.points is not None and len(ann.points):
            ann = ann.replace(points=np.clip((ann.points + 0.5) * scale - 0.5, 0, np.array(new_shape) - 1))
        if ann.boxes is not None and len(ann.boxes):
            ann = ann.replace(boxes=ann.boxes * np.concatenate([scale, scale]))
    image = normalize(image, plan)
    geom = Geometry(original_shape=tuple(spatial), bbox=bbox, cropped_shape=tuple(cropped),
                    resampled_shape=tuple(new_shape))
    return image, ann, geom


def restore_probabilities(probs, geom: Geometry, background_class: int = 0):
    """Map (N, *S') probabilities from the preprocessed grid back to the original grid (torch tensor in and out).

    Resampling is linear on probabilities (nnU-Net resamples logits/probabilities, not labels); voxels outside the
    non-zero crop get probability 1 for the background class.
    """
    import torch
    import torch.nn.functional as F

    if tuple(probs.shape[1:]) != tuple(geom.cropped_shape):
        mode = "bilinear" if probs.ndim == 3 else "trilinear"
        probs = F.interpolate(probs[None].float(), size=geom.cropped_shape, mode=mode, align_corners=False)[0]
    full = torch.zeros((probs.shape[0],) + tuple(geom.original_shape), dtype=probs.dtype)
    full[background_class] = 1.0
    sl = (slice(None),) + tuple(slice(a, b) for a, b in geom.bbox)
    full[sl] = probs
    return full
