"""Spatial augmentation applied with ONE sampled geometry to the image and every annotation kind.

Each ``Random*`` class samples its parameters from a ``numpy.random.Generator`` and calls a deterministic function.
Dense label maps (labels, valid, roi) are moved with nearest-neighbour sampling and never intensity-transformed;
points and boxes are coordinates moved by the same geometry; tags ignore spatial transforms. The dispatch over
kinds happens once, in :func:`_apply_dense` and the coordinate helpers.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from everylabel.data.batch import Sample


def _apply_dense(sample: Sample, image_fn, label_fn) -> Sample:
    return replace(sample, image=image_fn(sample.image), labels=label_fn(sample.labels),
                   valid=label_fn(sample.valid), roi=label_fn(sample.roi))


def flip(sample: Sample, axes: tuple[int, ...]) -> Sample:
    """Flip along the given spatial axes (0-based, excluding the channel axis)."""
    if not axes:
        return sample
    dims = [a + 1 for a in axes]
    out = _apply_dense(sample, lambda t: torch.flip(t, dims), lambda t: torch.flip(t, dims))
    shape = np.array(sample.spatial_shape, dtype=np.float32)
    pts = sample.points.clone()
    boxes = sample.boxes.clone()
    nd = len(shape)
    for a in axes:
        if len(pts):
            pts[:, a] = shape[a] - 1 - pts[:, a]
        if len(boxes):
            lo, hi = boxes[:, a].clone(), boxes[:, nd + a].clone()
            boxes[:, a] = shape[a] - hi
            boxes[:, nd + a] = shape[a] - lo
    return replace(out, points=pts, boxes=boxes)


def rot90(sample: Sample, k: int, axes: tuple[int, int]) -> Sample:
    """Rotate by k * 90 degrees in the plane of two spatial axes of equal size (shape is kept)."""
    k = k % 4
    if k == 0:
        return sample
    a0, a1 = axes
    shape = sample.spatial_shape
    if shape[a0] != shape[a1]:
        raise ValueError(f"rot90 needs equal sizes on axes {axes}, got {shape}")
    dims = (a0 + 1, a1 + 1)
    out = _apply_dense(sample, lambda t: torch.rot90(t, k, dims), lambda t: torch.rot90(t, k, dims))
    n = shape[a0]
    nd = len(shape)
    pts = sample.points.clone()
    boxes = sample.boxes.clone()
    for _ in range(k):
        # torch.rot90 with k=1 maps index (i, j) -> (n - 1 - j, i) in the (a0, a1) plane.
        if len(pts):
            i, j = pts[:, a0].clone(), pts[:, a1].clone()
            pts[:, a0], pts[:, a1] = n - 1 - j, i
        if len(boxes):
            lo0, hi0 = boxes[:, a0].clone(), boxes[:, nd + a0].clone()
            lo1, hi1 = boxes[:, a1].clone(), boxes[:, nd + a1].clone()
            boxes[:, a0], boxes[:, nd + a0] = n - hi1, n - lo1
            boxes[:, a1], boxes[:, nd + a1] = lo0, hi0
    return replace(out, points=pts, boxes=boxes)


def zoom(sample: Sample, factor: float) -> Sample:
    """Scale the content about the patch centre by ``factor`` (>1 zooms in), keeping the patch shape.

    The image is sampled linearly and the label maps by nearest neighbour; voxels that come from outside the patch
    get image 0, ``valid`` False and ``roi`` False.
    """
    if abs(factor - 1.0) < 1e-6:
        return sample
    shape = sample.spatial_shape
    nd = len(shape)
    # Output voxel o samples input at c + (o - c) / factor, with c the patch centre.
    theta = torch.zeros(1, nd, nd + 1)
    theta[0, :, :nd] = torch.eye(nd) / factor
    mode_img = "bilinear"

    def warp(t: torch.Tensor, nearest: bool) -> torch.Tensor:
        grid = F.affine_grid(theta, [1, t.shape[0], *shape], align_corners=False)
        src = t[None].float()
        out = F.grid_sample(src, grid, mode="nearest" if nearest else mode_img, padding_mode="zeros",
                            align_corners=False)[0]
        return out.to(t.dtype)

    out = replace(sample, image=warp(sample.image, False), labels=warp(sample.labels, True),
                  valid=warp(sample.valid, True), roi=warp(sample.roi, True))
    centre = (torch.tensor(shape, dtype=torch.float32) - 1) / 2
    pts, boxes = sample.points, sample.boxes
    keep_p = torch.ones(len(pts), dtype=torch.bool)
    if len(pts):
        pts = (pts - centre) * factor + centre
        keep_p = ((pts >= 0) & (pts <= torch.tensor(shape) - 1)).all(1)
    keep_b = torch.ones(len(boxes), dtype=torch.bool)
    if len(boxes):
        c2 = torch.tensor(shape, dtype=torch.float32) / 2
        lo = ((boxes[:, :nd] - c2) * factor + c2).clamp(min=0)
        hi = torch.minimum((boxes[:, nd:] - c2) * factor + c2, torch.tensor(shape, dtype=torch.float32))
        boxes = torch.cat([lo, hi], 1)
        keep_b = (hi > lo).all(1)
    return replace(out, points=pts[keep_p], point_labels=sample.point_labels[keep_p], boxes=boxes[keep_b],
                   box_labels=sample.box_labels[keep_b])


class RandomFlip:
    """Flip each spatial axis independently with probability ``prob``."""

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        axes = tuple(a for a in range(len(sample.spatial_shape)) if rng.random() < self.prob)
        return flip(sample, axes)


class RandomRot90:
    """With probability ``prob`` rotate by a random multiple of 90 degrees in a random plane of equal-size axes."""

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.prob:
            return sample
        shape = sample.spatial_shape
        planes = [(i, j) for i in range(len(shape)) for j in range(i + 1, len(shape)) if shape[i] == shape[j]]
        if not planes:
            return sample
        plane = planes[int(rng.integers(len(planes)))]
        return rot90(sample, int(rng.integers(1, 4)), plane)


class RandomZoom:
    """With probability ``prob`` zoom by a factor drawn uniformly from ``scale_range`` (nnU-Net: 0.7-1.4)."""

    def __init__(self, prob: float = 0.2, scale_range: tuple[float, float] = (0.7, 1.4)):
        self.prob = prob
        self.scale_range = scale_range

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.prob:
            return sample
        return zoom(sample, float(rng.uniform(*self.scale_range)))
