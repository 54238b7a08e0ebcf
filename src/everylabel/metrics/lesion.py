"""Lesion-level detection metrics and bounding-box IoU.

Lesions are connected components (``skimage.measure.label``; default connectivity ``ndim``: 8 in 2D, 26 in 3D).
Following the ADAM challenge (Timmins et al. 2021, "Comparing methods of detecting and segmenting unruptured
intracranial aneurysms on TOF-MRA: the ADAM challenge", NeuroImage 238), a predicted component is a true positive
when its centre of mass, rounded to the nearest voxel (halves rounded up), lies inside a reference component,
which is then detected; otherwise it is a false positive.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.measure import label

from everylabel.metrics._utils import Array, binary_numpy, crop_to_union

__all__ = ["LESION_METRICS", "box_iou", "lesion_detection", "lesion_metrics"]

LESION_METRICS = ("lesion_sensitivity", "lesion_fp", "box_iou")


def _pair(pred: Array, ref: Array) -> tuple[np.ndarray, np.ndarray]:
    p = binary_numpy(pred, "pred")
    r = binary_numpy(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got {p.shape} and {r.shape}.")
    return p, r


def lesion_detection(pred: Array, ref: Array, connectivity: int | None = None) -> dict[str, int]:
    """Counts lesions by the centre-of-mass rule of the module docstring.

    Args:
        pred: binary prediction ``(*S)``.
        ref: binary reference ``(*S)``.
        connectivity: component connectivity in scikit-image's convention (1..ndim); None for ``ndim``.

    Returns:
        ``{"n_ref": reference lesions, "n_pred": predicted components, "n_detected": reference lesions hit by at
        least one predicted centre of mass, "n_tp": predicted components whose centre lies in a reference lesion,
        "n_fp": the other predicted components}``.
    """
    p, r = _pair(pred, ref)
    if connectivity is not None and not 1 <= connectivity <= p.ndim:
        raise ValueError(f"connectivity must lie in [1, {p.ndim}], got {connectivity}.")
    ref_labels, n_ref = label(r, connectivity=connectivity, return_num=True)
    pred_labels, n_pred = label(p, connectivity=connectivity, return_num=True)
    hits = np.zeros(0, dtype=np.int64)
    if n_pred:
        centres = np.asarray(ndimage.center_of_mass(p, pred_labels, range(1, n_pred + 1)))  # (n_pred, ndim)
        idx = np.floor(centres.reshape(n_pred, p.ndim) + 0.5).astype(np.int64)
        hits = ref_labels[tuple(idx.T)]
    n_tp = int(np.count_nonzero(hits))
    return {
        "n_ref": int(n_ref),
        "n_pred": int(n_pred),
        "n_detected": int(np.unique(hits[hits > 0]).size),
        "n_tp": n_tp,
        "n_fp": int(n_pred) - n_tp,
    }


def box_iou(pred: Array, ref: Array) -> float:
    """IoU of the axis-aligned bounding boxes of the two foregrounds (boxes include their boundary voxels).

    Returns:
        IoU in [0, 1]; 0 when exactly one mask is empty, NaN when both are.
    """
    p, r = _pair(pred, ref)
    if not p.any() and not r.any():
        return math.nan
    if not p.any() or not r.any():
        return 0.0
    boxes = []
    for m in (p, r):
        coords = np.argwhere(m)
        boxes.append((coords.min(axis=0), coords.max(axis=0) + 1))
    (lo_p, hi_p), (lo_r, hi_r) = boxes
    inter = np.prod(np.clip(np.minimum(hi_p, hi_r) - np.maximum(lo_p, lo_r), 0, None))
    union = np.prod(hi_p - lo_p) + np.prod(hi_r - lo_r) - inter
    return float(inter / union)


def lesion_metrics(
    pred: Array, ref: Array, metrics: tuple[str, ...] | list[str] = LESION_METRICS, connectivity: int | None = None
) -> dict[str, float]:
    """Lesion-level metrics of one case.

    - ``lesion_sensitivity``: detected reference lesions / reference lesions; NaN when the reference is empty.
    - ``lesion_fp``: number of false-positive predicted components (defined, possibly 0, for every case).
    - ``box_iou``: see ``box_iou``.

    Returns:
        ``{name: value}``.
    """
    unknown = [m for m in metrics if m not in LESION_METRICS]
    if unknown:
        raise ValueError(f"unknown lesion metrics {unknown}; expected names from {LESION_METRICS}.")
    p, r = _pair(pred, ref)
    if p.any() or r.any():  # counts and box IoU do not change when cropping to the box of pred | ref
        p, r = crop_to_union(p, r, 1, 1)
    out: dict[str, float] = {}
    if "lesion_sensitivity" in metrics or "lesion_fp" in metrics:
        counts = lesion_detection(p, r, connectivity)
        out["lesion_sensitivity"] = counts["n_detected"] / counts["n_ref"] if counts["n_ref"] else math.nan
        out["lesion_fp"] = float(counts["n_fp"])
    if "box_iou" in metrics:
        out["box_iou"] = box_iou(p, r)
    return {m: out[m] for m in metrics}
