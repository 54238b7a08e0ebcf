"""Lesion-level detection metrics and per-lesion bounding-box IoU.

Lesions are connected components (``skimage.measure.label``; default connectivity ``ndim``: 8 in 2D, 26 in 3D).
Following the ADAM challenge (Timmins et al. 2021, "Comparing methods of detecting and segmenting unruptured
intracranial aneurysms on TOF-MRA: the ADAM challenge", NeuroImage 238), a predicted component is a true positive
when its centre of mass, rounded to the nearest voxel (halves rounded up), lies inside a reference component,
which is then detected; otherwise it is a false positive.

Boxes are ``(min_0, ..., min_{d-1}, max_0, ..., max_{d-1})`` in voxels with exclusive maxima, the layout of
``everylabel.annotations.Annotations.boxes``, of scikit-image's ``regionprops(...).bbox`` and of MONAI's
``box_utils`` (``"xyxy"`` / ``"xyzxyz"``). Box matching pairs each reference lesion with at most one predicted
component and vice versa, greedily by decreasing box IoU (ties: lower reference, then lower predicted label first);
only pairs whose boxes overlap (IoU > 0) are matched.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.measure import label

from everylabel.metrics._utils import Array, as_numpy, binary_numpy, crop_to_union

__all__ = ["LESION_METRICS", "box_iou", "lesion_boxes", "lesion_detection", "lesion_metrics", "match_boxes"]

LESION_METRICS = ("lesion_sensitivity", "lesion_fp", "box_iou")


def _pair(pred: Array, ref: Array) -> tuple[np.ndarray, np.ndarray]:
    p = binary_numpy(pred, "pred")
    r = binary_numpy(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got {p.shape} and {r.shape}.")
    return p, r


def _components(mask: np.ndarray, connectivity: int | None) -> tuple[np.ndarray, int]:
    if connectivity is not None and not 1 <= connectivity <= mask.ndim:
        raise ValueError(f"connectivity must lie in [1, {mask.ndim}], got {connectivity}.")
    labels, n = label(mask, connectivity=connectivity, return_num=True)
    return labels, int(n)


def _counts(pred: np.ndarray, pred_labels: np.ndarray, n_pred: int, ref_labels: np.ndarray, n_ref: int) -> dict:
    hits = np.zeros(0, dtype=np.int64)
    if n_pred:
        centres = np.asarray(ndimage.center_of_mass(pred, pred_labels, range(1, n_pred + 1)))  # (n_pred, ndim)
        idx = np.floor(centres.reshape(n_pred, pred.ndim) + 0.5).astype(np.int64)
        hits = ref_labels[tuple(idx.T)]
    n_tp = int(np.count_nonzero(hits))
    return {
        "n_ref": n_ref,
        "n_pred": n_pred,
        "n_detected": int(np.unique(hits[hits > 0]).size),
        "n_tp": n_tp,
        "n_fp": n_pred - n_tp,
    }


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
    return _counts(p, *_components(p, connectivity), *_components(r, connectivity))


def _boxes(boxes: Array, name: str) -> np.ndarray:
    b = as_numpy(boxes, name)
    if b.ndim != 2 or b.shape[1] % 2 or b.shape[1] < 2:
        raise ValueError(f"{name} must have shape (N, 2 * ndim), got {tuple(b.shape)}.")
    b = b.astype(np.float64)
    ndim = b.shape[1] // 2
    if np.any(b[:, ndim:] < b[:, :ndim]):
        bad = int(np.flatnonzero(np.any(b[:, ndim:] < b[:, :ndim], axis=1))[0])
        raise ValueError(f"{name}[{bad}] has a maximum below its minimum: {b[bad].tolist()}.")
    return b


def box_iou(boxes1: Array, boxes2: Array) -> np.ndarray:
    """Pairwise intersection over union of two sets of axis-aligned boxes (as MONAI ``box_utils.box_iou``).

    Args:
        boxes1: ``(N, 2 * ndim)`` boxes, minima then exclusive maxima (module docstring), numpy or torch.
        boxes2: ``(M, 2 * ndim)`` boxes.

    Returns:
        ``(N, M)`` float64 IoU in [0, 1]; NaN for two empty (zero-volume) boxes, whose union is empty.
    """
    a, b = _boxes(boxes1, "boxes1"), _boxes(boxes2, "boxes2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"boxes1 and boxes2 must have the same number of axes, got {a.shape[1]} and {b.shape[1]}.")
    ndim = a.shape[1] // 2
    lo = np.maximum(a[:, None, :ndim], b[None, :, :ndim])
    hi = np.minimum(a[:, None, ndim:], b[None, :, ndim:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)  # (N, M)
    union = np.prod(a[:, ndim:] - a[:, :ndim], axis=1)[:, None] + np.prod(b[:, ndim:] - b[:, :ndim], axis=1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)


def _label_boxes(labels: np.ndarray) -> np.ndarray:
    slices = ndimage.find_objects(labels)
    out = np.zeros((len(slices), 2 * labels.ndim), dtype=np.int64)
    for i, box in enumerate(slices):
        out[i] = [s.start for s in box] + [s.stop for s in box]
    return out


def lesion_boxes(mask: Array, connectivity: int | None = None) -> np.ndarray:
    """Bounding boxes of the connected components of a binary mask, in label order (``regionprops`` order).

    Returns:
        ``(N, 2 * ndim)`` int64 boxes, minima then exclusive maxima.
    """
    m = binary_numpy(mask, "mask")
    return _label_boxes(_components(m, connectivity)[0])


def match_boxes(ref_boxes: Array, pred_boxes: Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one greedy matching of reference to predicted boxes by decreasing IoU (module docstring).

    Args:
        ref_boxes: ``(N, 2 * ndim)`` reference boxes.
        pred_boxes: ``(M, 2 * ndim)`` predicted boxes.

    Returns:
        ``(ref_index, pred_index, iou)`` of the matched pairs, by decreasing IoU.
    """
    ref, pred = _boxes(ref_boxes, "ref_boxes"), _boxes(pred_boxes, "pred_boxes")
    rows, cols, values = [], [], []
    step = max(1, (1 << 20) // max(1, pred.shape[0]))  # rows per (step, M) block of the IoU matrix
    for start in range(0, ref.shape[0], step):
        iou = box_iou(ref[start : start + step], pred)
        r, c = np.nonzero(iou > 0)
        rows.append(r + start)
        cols.append(c)
        values.append(iou[r, c])
    row, col, val = (np.concatenate(x) if x else np.zeros(0) for x in (rows, cols, values))
    order = np.lexsort((col, row, -val))
    row_list, col_list = row.tolist(), col.tolist()
    used_ref, used_pred, keep = set(), set(), []
    for i in order.tolist():
        if row_list[i] not in used_ref and col_list[i] not in used_pred:
            used_ref.add(row_list[i])
            used_pred.add(col_list[i])
            keep.append(i)
    k = np.asarray(keep, dtype=np.intp)
    return row[k].astype(np.int64), col[k].astype(np.int64), val[k].astype(np.float64)


def lesion_metrics(
    pred: Array, ref: Array, metrics: tuple[str, ...] | list[str] = LESION_METRICS, connectivity: int | None = None
) -> dict[str, float]:
    """Lesion-level metrics of one case.

    - ``lesion_sensitivity``: detected reference lesions / reference lesions; NaN when the reference is empty.
    - ``lesion_fp``: number of false-positive predicted components (defined, possibly 0, for every case).
    - ``box_iou``: mean bounding-box IoU of the reference lesions matched to a predicted component by
      ``match_boxes``; unmatched lesions are left out (``lesion_sensitivity`` counts misses). NaN when no lesion
      is matched: an empty prediction or reference, or no overlapping boxes (``summarize(...,
      undefined_value={"box_iou": 0.0})`` scores these as 0).

    Args:
        pred: binary prediction ``(*S)``.
        ref: binary reference ``(*S)``.
        metrics: names from ``LESION_METRICS``.
        connectivity: component connectivity in scikit-image's convention (1..ndim); None for ``ndim``.

    Returns:
        ``{name: value}``.
    """
    unknown = [m for m in metrics if m not in LESION_METRICS]
    if unknown:
        raise ValueError(f"unknown lesion metrics {unknown}; expected names from {LESION_METRICS}.")
    p, r = _pair(pred, ref)
    if p.any() or r.any():  # counts and box IoU do not change when cropping to the box of pred | ref
        p, r = crop_to_union(p, r, 1, 1)
    pred_labels, n_pred = _components(p, connectivity)
    ref_labels, n_ref = _components(r, connectivity)
    out: dict[str, float] = {}
    if "lesion_sensitivity" in metrics or "lesion_fp" in metrics:
        counts = _counts(p, pred_labels, n_pred, ref_labels, n_ref)
        out["lesion_sensitivity"] = counts["n_detected"] / n_ref if n_ref else math.nan
        out["lesion_fp"] = float(counts["n_fp"])
    if "box_iou" in metrics:
        _, _, iou = match_boxes(_label_boxes(ref_labels), _label_boxes(pred_labels))
        out["box_iou"] = float(np.mean(iou)) if iou.size else math.nan
    return {m: out[m] for m in metrics}
