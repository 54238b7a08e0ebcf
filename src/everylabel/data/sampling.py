"""Preprocessed cases in memory and patch sampling with foreground oversampling (nnU-Net style).

A :class:`PreparedCase` is one case after preprocessing; :func:`case_to_sample` turns it (or a crop of it) into
the tensors of a :class:`~everylabel.data.batch.Sample`; :class:`PatchSampler` draws random patches, a fraction
of them centred on a foreground voxel (dense labels, box or point of a foreground class).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from everylabel.annotations.kinds import Annotations, Kind
from everylabel.data.batch import Sample


@dataclass
class PreparedCase:
    """A case in the preprocessed grid.

    Attributes:
        image: (C, *S) float32.
        ann: annotations in the same grid.
        case_id: case identifier.
        geometry: how to map back to the original grid (see ``data.preprocess.Geometry``).
        meta: the original image's metadata (``data.io.ImageMeta``).
    """

    image: np.ndarray
    ann: Annotations
    case_id: str
    num_classes: int
    geometry: object = None
    meta: object = None
    foreground: np.ndarray | None = field(default=None, repr=False)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])

    def foreground_voxels(self, max_voxels: int = 20_000, seed: int = 0) -> np.ndarray:
        """(K, ndim) voxel coordinates of annotated foreground (cached; subsampled to ``max_voxels``)."""
        if self.foreground is None:
            a = self.ann
            coords = np.zeros((0, len(self.spatial_shape)), dtype=np.int64)
            if a.labels is not None:
                fg = a.labels > 0
                if a.valid is not None:
                    fg &= a.valid
                coords = np.argwhere(fg)
            extra = []
            if a.points is not None and len(a.points):
                extra.append(np.round(a.points[np.asarray(a.point_labels) > 0]).astype(np.int64))
            if a.boxes is not None and len(a.boxes):
                nd = len(self.spatial_shape)
                b = np.asarray(a.boxes)
                extra.append(np.floor((b[:, :nd] + b[:, nd:]) / 2).astype(np.int64))
            if extra:
                coords = np.concatenate([coords] + extra)
            if len(coords) > max_voxels:
                rng = np.random.default_rng(seed)
                coords = coords[rng.choice(len(coords), max_voxels, replace=False)]
            self.foreground = coords
        return self.foreground


def _crop_pad(arr: np.ndarray, start: np.ndarray, size: tuple[int, ...], fill=0) -> np.ndarray:
    """Crop ``arr[..., start:start+size]`` over its last len(size) axes, padding with ``fill`` outside."""
    nd = len(size)
    lead = arr.shape[:-nd]
    shape = np.array(arr.shape[-nd:])
    out = np.full(lead + tuple(size), fill, dtype=arr.dtype)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + np.array(size), shape)
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    src = (Ellipsis,) + tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
    dst = (Ellipsis,) + tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))
    out[dst] = arr[src]
    return out


def case_to_sample(case: PreparedCase, start: np.ndarray | None = None,
                   size: tuple[int, ...] | None = None) -> Sample:
    """Tensors of a whole case, or of the crop ``[start, start + size)`` (padded where it leaves the image)."""
    shape = case.spatial_shape
    nd = len(shape)
    if size is None:
        size, start = shape, np.zeros(nd, dtype=np.int64)
    start = np.asarray(start, dtype=np.int64)
    a = case.ann
    kinds = a.kinds
    image = _crop_pad(case.image, start, size, 0.0)
    inside = _crop_pad(np.ones(shape, dtype=bool), start, size, False)
    roi = inside if a.roi is None else _crop_pad(a.roi.astype(bool), start, size, False)
    if a.labels is not None:
        labels = _crop_pad(a.labels.astype(np.int64), start, size, 0)
        valid = inside if a.valid is None else _crop_pad(a.valid.astype(bool), start, size, False)
        valid = valid & roi
    else:
        labels = np.zeros(size, dtype=np.int64)
        valid = np.zeros(size, dtype=bool)
    off = start.astype(np.float32)
    pts = np.zeros((0, nd), np.float32)
    plab = np.zeros((0,), np.int64)
    if a.points is not None and len(a.points):
        p = np.asarray(a.points, np.float32) - off
        keep = np.all((p >= 0) & (p <= np.array(size) - 1), axis=1)
        pts, plab = p[keep], np.asarray(a.point_labels, np.int64)[keep]
    boxes = np.zeros((0, 2 * nd), np.float32)
    blab = np.zeros((0,), np.int64)
    if a.boxes is not None and len(a.boxes):
        b = np.asarray(a.boxes, np.float32) - np.concatenate([off, off])
        lo = np.clip(b[:, :nd], 0, np.array(size))
        hi = np.clip(b[:, nd:], 0, np.array(size))
        keep = np.all(hi > lo, axis=1)
        boxes, blab = np.concatenate([lo, hi], 1)[keep], np.asarray(a.box_labels, np.int64)[keep]
    tags = np.full(case.num_classes, -1, np.int64) if a.tags is None else np.asarray(a.tags, np.int64)
    classes = np.zeros(case.num_classes, bool)
    if a.dense_kind in (Kind.MASK, Kind.SCRIBBLE):
        classes[:] = True
    elif a.dense_kind == Kind.PARTIAL and a.classes is not None:
        classes[list(a.classes)] = True
    return Sample(
        image=torch.from_numpy(np.ascontiguousarray(image)),
        labels=torch.from_numpy(labels[None]), valid=torch.from_numpy(valid[None]),
        roi=torch.from_numpy(roi[None]),
        points=torch.from_numpy(pts), point_labels=torch.from_numpy(plab),
        boxes=torch.from_numpy(boxes), box_labels=torch.from_numpy(blab),
        tags=torch.from_numpy(tags), classes=torch.from_numpy(classes),
        kinds=kinds, case_id=case.case_id,
    )


def squeeze_axis(sample: Sample, axis: int, context: int = 0) -> Sample:
    """Turn a 3D sample ``2 * context + 1`` voxels thick along spatial ``axis`` into a 2D sample of its centre slice.

    With ``context`` > 0 the neighbouring slices become extra channels (2.5D): channel ``c * (2k + 1) + j`` is
    channel c of slice ``centre - k + j`` (the order :func:`everylabel.engine.inference.slicewise_inference` uses).
    Labels, valid region, points and boxes are the centre slice's: points keep their two in-plane coordinates; a 3D
    box crossing the slice becomes the slice's 2D box (so a 3D box gives per-slice non-tight boxes, as in Redekop &
    Chernyavskiy, DALI 2021).

    Note: a volume-level tag "class present" does not say the class is in this slice, so positive tags become
    unknown (-1); absent-class tags stay valid for every slice.
    """
    thick = 2 * context + 1
    if context < 0 or sample.image.shape[axis + 1] != thick:
        raise ValueError(f"squeeze_axis needs a sample {thick} voxel(s) thick along axis {axis} (one voxel thick "
                         f"plus {context} context slice(s) per side), got {tuple(sample.image.shape[1:])}")
    nd = sample.image.ndim - 1
    keep = [i for i in range(nd) if i != axis]
    image = sample.image.movedim(axis + 1, 1)  # (C, 2k+1, a, b)
    image = image.reshape(-1, *image.shape[2:])

    def centre(t: torch.Tensor) -> torch.Tensor:
        return t.select(axis + 1, context)

    pts, plab = sample.points, sample.point_labels
    if len(pts):
        on = (pts[:, axis] - context).abs() < 0.5
        pts, plab = pts[on], plab[on]
    boxes, blab = sample.boxes, sample.box_labels
    if len(boxes):
        on = (boxes[:, axis] <= context) & (boxes[:, axis + nd] > context)
        boxes, blab = boxes[on], blab[on]
    tags = sample.tags.clone()
    tags[tags > 0] = -1
    return Sample(
        image=image, labels=centre(sample.labels), valid=centre(sample.valid), roi=centre(sample.roi),
        points=pts[:, keep], point_labels=plab,
        boxes=boxes[:, keep + [k + nd for k in keep]], box_labels=blab,
        tags=tags, classes=sample.classes, kinds=sample.kinds, case_id=sample.case_id,
    )


class PatchSampler:
    """Draw random patches from prepared cases, a fraction centred on foreground.

    Args:
        cases: the training cases.
        patch_size: spatial patch size.
        foreground_oversample: probability that a patch is centred on a random annotated foreground voxel.
        rng: numpy Generator (its state is saved with checkpoints for exact resume).
        slice_axis: with 3D cases and a patch ``2 * slice_context + 1`` voxels thick along this axis, return 2D
            samples of the centre slice (slice-wise training of a 2D network, see :func:`squeeze_axis`).
        slice_context: neighbouring slices per side stacked as channels (2.5D).
    """

    def __init__(self, cases: list[PreparedCase], patch_size: tuple[int, ...], foreground_oversample: float,
                 rng: np.random.Generator, slice_axis: int | None = None, slice_context: int = 0):
        if not cases:
            raise ValueError("no training cases to sample patches from")
        if not 0 <= foreground_oversample <= 1:
            raise ValueError(f"foreground_oversample must be in [0, 1], got {foreground_oversample}")
        self.cases, self.patch_size, self.p_fg, self.rng = cases, tuple(patch_size), foreground_oversample, rng
        self.slice_axis, self.slice_context = slice_axis, slice_context
        if slice_axis is not None and self.patch_size[slice_axis] != 2 * slice_context + 1:
            raise ValueError(f"slice-wise sampling needs a patch {2 * slice_context + 1} voxel(s) thick along axis "
                             f"{slice_axis} (one voxel thick plus {slice_context} context slice(s) per side), got "
                             f"{self.patch_size}")
        self.groups = {
            None: cases,
            "labelled": [c for c in cases if not c.ann.is_unlabelled],
            "unlabelled": [c for c in cases if c.ann.is_unlabelled],
        }

    def sample(self, group: str | None = None) -> Sample:
        """A random patch from a random case of ``group`` ("labelled", "unlabelled" or None for any case)."""
        pool = self.groups[group]
        if not pool:
            raise ValueError(f"no {group} training case to sample from")
        case = pool[int(self.rng.integers(len(pool)))]
        shape = np.array(case.spatial_shape)
        size = np.array(self.patch_size)
        fg = case.foreground_voxels() if self.rng.random() < self.p_fg else None
        if fg is not None and len(fg):
            centre = fg[int(self.rng.integers(len(fg)))]
            start = centre - size // 2
            # keep the patch inside the image where the image is large enough (random offset otherwise)
            start = np.clip(start, np.minimum(0, shape - size), np.maximum(0, shape - size))
            if self.slice_axis is not None:
                start[self.slice_axis] = centre[self.slice_axis] - self.slice_context  # the centre slice is fg
        else:
            hi = np.maximum(shape - size, 0)
            start = np.array([int(self.rng.integers(h + 1)) for h in hi])
            start = np.where(shape < size, (shape - size) // 2, start)
            if self.slice_axis is not None and self.slice_context:
                # every slice may be the centre one: the context of edge slices is zero-padded, as at inference
                k, a = self.slice_context, self.slice_axis
                start[a] = int(self.rng.integers(shape[a])) - k
        sample = case_to_sample(case, start, tuple(self.patch_size))
        return sample if self.slice_axis is None else squeeze_axis(sample, self.slice_axis, self.slice_context)
