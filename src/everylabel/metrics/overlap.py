"""Overlap metrics from per-case, per-class confusion counts.

Every ``compute_*`` function takes a prediction and a reference as label maps ``(B, 1, *S)`` (with
``num_classes``) or one-hot / multi-channel binary maps ``(B, C, *S)``, as numpy arrays or torch tensors, and
returns a ``(B, C)`` float64 array of the same library as ``pred``. Values are NaN where the metric is undefined
(a zero denominator, e.g. Dice when both prediction and reference are empty); NaN is never replaced by 0 or 1,
so that summaries can count undefined cases instead of hiding them.

An optional ``valid`` map ``(B, 1, *S)`` restricts counting to a region (e.g. the DRIVE field of view or the
annotated part of a partially labelled scan): voxels where ``valid`` is false are ignored entirely.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from everylabel.metrics._utils import Array, as_tensor, binary_tensor

__all__ = [
    "OVERLAP_METRICS",
    "Confusion",
    "compute_accuracy",
    "compute_confusion",
    "compute_dice",
    "compute_iou",
    "compute_kappa",
    "compute_overlap_metric",
    "compute_precision",
    "compute_recall",
    "compute_specificity",
    "compute_volume_similarity",
    "to_one_hot_mask",
]


class Confusion(NamedTuple):
    """Per-case, per-class confusion counts, each of shape ``(B, C)`` (float64)."""

    tp: Array
    fp: Array
    fn: Array
    tn: Array


def to_one_hot_mask(x: Array, num_classes: int | None, name: str = "input") -> torch.Tensor:
    """Converts a label map or a one-hot map to a bool tensor ``(B, C, *S)``.

    Args:
        x: label map ``(B, 1, *S)`` with integer values in ``[0, num_classes)``, or a binary map ``(B, C, *S)``.
        num_classes: number of classes C. None means ``x`` is already one-hot / multi-channel binary.
            When ``x.shape[1] == num_classes`` it is read as one-hot (so ``num_classes=1`` means one binary
            foreground channel); when ``x.shape[1] == 1`` it is read as a label map.
        name: the argument name used in error messages.

    Returns:
        Bool tensor ``(B, C, *S)`` on the device of ``x``.
    """
    t = as_tensor(x, name)
    if t.ndim < 3:
        raise ValueError(
            f"{name} must have shape (B, C, *spatial) with at least one spatial axis, got {tuple(t.shape)}."
        )
    if num_classes is None or t.shape[1] == num_classes:
        return binary_tensor(t, name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    if t.shape[1] != 1:
        raise ValueError(
            f"{name} must be a label map (B, 1, *S) or one-hot (B, {num_classes}, *S) for num_classes={num_classes}, "
            f"got shape {tuple(t.shape)}."
        )
    if t.dtype == torch.bool:
        t = t.long()
    if t.is_floating_point() and not torch.equal(t, torch.round(t)):
        raise ValueError(f"{name} is a label map and must hold integer class indices, got non-integer values.")
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(
            f"{name} label values must lie in [0, {num_classes}), got range [{t.min().item()}, {t.max().item()}]."
        )
    classes = torch.arange(num_classes, device=t.device).view(1, num_classes, *([1] * (t.ndim - 2)))
    return t == classes  # (B, C, *S)


def _count(x: torch.Tensor) -> torch.Tensor:
    """Number of true voxels per case and class of a bool ``(B, C, *S)`` tensor, as float64 ``(B, C)``."""
    if x.device.type != "cpu":
        return x.sum(dim=tuple(range(2, x.ndim))).double()
    rows = x.reshape(x.shape[0] * x.shape[1], int(np.prod(x.shape[2:]))).numpy()  # (B * C, N); numpy is faster
    return torch.tensor([np.count_nonzero(row) for row in rows], dtype=torch.float64).reshape(x.shape[:2])


def _confusion_tensors(
    pred: Array,
    ref: Array,
    num_classes: int | None,
    valid: Array | None,
    include_background: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    p = to_one_hot_mask(pred, num_classes, "pred")
    r = to_one_hot_mask(ref, num_classes, "ref")
    if p.shape != r.shape:
        raise ValueError(
            f"pred and ref must have the same shape after one-hot, got {tuple(p.shape)} and {tuple(r.shape)}."
        )
    r = r.to(p.device)
    dims = tuple(range(2, p.ndim))
    if valid is not None:
        v = binary_tensor(as_tensor(valid, "valid"), "valid").to(p.device)
        if (
            v.ndim != p.ndim
            or v.shape[0] != p.shape[0]
            or v.shape[2:] != p.shape[2:]
            or v.shape[1] not in (1, p.shape[1])
        ):
            raise ValueError(
                f"valid must have shape (B, 1, *S) = {(p.shape[0], 1, *p.shape[2:])}, got {tuple(v.shape)}."
            )
        p = p & v
        r = r & v
        n = v.sum(dim=dims).expand(p.shape[0], p.shape[1])
    else:
        n = torch.full(p.shape[:2], int(np.prod(p.shape[2:])), dtype=torch.long, device=p.device)
    if not include_background:
        if p.shape[1] < 2:
            raise ValueError("include_background=False needs at least 2 classes, got 1 channel.")
        p, r, n = p[:, 1:], r[:, 1:], n[:, 1:]
    tp = _count(p & r)
    n_pred = _count(p)
    n_ref = _count(r)
    fp = n_pred - tp
    fn = n_ref - tp
    tn = n.double() - tp - fp - fn
    return tp, fp, fn, tn


def _output(x: torch.Tensor, like: Array) -> Array:
    return x if isinstance(like, torch.Tensor) else x.cpu().numpy()


def _one_hot_pair(
    y_pred: Array, y: Array, include_background: bool, num_classes: int | None
) -> tuple[np.ndarray, np.ndarray]:
    p = to_one_hot_mask(y_pred, num_classes, "y_pred").cpu().numpy()
    r = to_one_hot_mask(y, num_classes, "y").cpu().numpy()
    if p.shape != r.shape:
        raise ValueError(f"y_pred and y must have the same shape after one-hot, got {p.shape} and {r.shape}.")
    if not include_background:
        if p.shape[1] < 2:
            raise ValueError("include_background=False needs at least 2 classes, got 1 channel.")
        p, r = p[:, 1:], r[:, 1:]
    return p, r


def _typed(values: np.ndarray, like: Array) -> Array:
    return torch.from_numpy(values).to(like.device) if isinstance(like, torch.Tensor) else values


def compute_confusion(
    pred: Array,
    ref: Array,
    num_classes: int | None = None,
    valid: Array | None = None,
    include_background: bool = True,
) -> Confusion:
    """Counts true/false positives/negatives per case and class.

    Args:
        pred: binarised prediction, label map ``(B, 1, *S)`` (needs ``num_classes``) or one-hot ``(B, C, *S)``.
        ref: reference, in either of the same two forms.
        num_classes: number of classes when a label map is given; None if both inputs are one-hot.
        valid: optional bool map ``(B, 1, *S)``; only voxels where it is true are counted.
        include_background: if False, channel 0 is dropped (MONAI semantics).

    Shapes:
        pred, ref: ``(B, 1, *S)`` or ``(B, C, *S)``; valid: ``(B, 1, *S)``; each output: ``(B, C)``
        (``(B, C - 1)`` without background).

    Returns:
        ``Confusion(tp, fp, fn, tn)`` of float64 arrays, torch tensors if ``pred`` is a tensor, else numpy.
    """
    counts = _confusion_tensors(pred, ref, num_classes, valid, include_background)
    return Confusion(*(_output(c, pred) for c in counts))


def _div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    nan = torch.full_like(num, float("nan"))
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), nan)


def _dice(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return _div(2 * tp, 2 * tp + fp + fn)


def _iou(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return _div(tp, tp + fp + fn)


def _precision(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return _div(tp, tp + fp)


def _recall(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return _div(tp, tp + fn)


def _specificity(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return _div(tn, tn + fp)


def _accuracy(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return _div(tp + tn, tp + fp + fn + tn)


def _volume_similarity(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return 1.0 - _div((fn - fp).abs(), 2 * tp + fp + fn)


def _kappa(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    # Binary Cohen's kappa in a form free of n**2 terms: 2(tp*tn - fn*fp) / ((tp+fp)(fp+tn) + (tp+fn)(fn+tn)).
    return _div(2 * (tp * tn - fn * fp), (tp + fp) * (fp + tn) + (tp + fn) * (fn + tn))


OVERLAP_METRICS: dict[str, Callable[..., torch.Tensor]] = {
    "dice": _dice,
    "iou": _iou,
    "precision": _precision,
    "recall": _recall,
    "specificity": _specificity,
    "accuracy": _accuracy,
    "volume_similarity": _volume_similarity,
    "kappa": _kappa,
}
"""Overlap metric name -> function of the four confusion tensors (tp, fp, fn, tn) returning NaN where undefined."""


def compute_overlap_metric(
    name: str,
    pred: Array,
    ref: Array,
    num_classes: int | None = None,
    valid: Array | None = None,
    include_background: bool = True,
    ignore_empty: bool = False,
) -> Array:
    """Computes one overlap metric by name (a key of ``OVERLAP_METRICS``); see ``compute_confusion`` for inputs.

    Args:
        name: metric name, one of ``OVERLAP_METRICS``.
        pred: binarised prediction, label map ``(B, 1, *S)`` or one-hot ``(B, C, *S)``.
        ref: reference, label map or one-hot.
        num_classes: number of classes for label-map inputs.
        valid: optional bool region ``(B, 1, *S)`` to restrict counting to.
        include_background: if False, channel 0 is dropped.
        ignore_empty: if True, the value is NaN wherever the reference is empty, even when the metric is
            defined (MONAI ``DiceMetric(ignore_empty=True)``, its default). If False (default), NaN only
            where the metric is undefined (0/0).

    Returns:
        ``(B, C)`` float64 values, NaN where undefined.
    """
    if name not in OVERLAP_METRICS:
        raise ValueError(f"unknown overlap metric {name!r}; expected one of {sorted(OVERLAP_METRICS)}.")
    tp, fp, fn, tn = _confusion_tensors(pred, ref, num_classes, valid, include_background)
    value = OVERLAP_METRICS[name](tp, fp, fn, tn)
    if ignore_empty:
        value = torch.where(tp + fn > 0, value, torch.full_like(value, float("nan")))
    return _output(value, pred)


def compute_dice(
    pred: Array,
    ref: Array,
    num_classes: int | None = None,
    valid: Array | None = None,
    include_background: bool = True,
    ignore_empty: bool = False,
) -> Array:
    """Dice coefficient ``2 TP / (2 TP + FP + FN)`` (Dice 1945; Sørensen 1948).

    Empty masks: NaN when both prediction and reference are empty (0/0, undefined); 0 when exactly one is
    empty. MONAI's ``DiceMetric`` instead returns NaN whenever the reference is empty (``ignore_empty=True``,
    reproduced here by ``ignore_empty=True``) or 1.0 for two empty masks (``ignore_empty=False``).

    Args:
        pred: binarised prediction, label map ``(B, 1, *S)`` (needs ``num_classes``) or one-hot ``(B, C, *S)``.
        ref: reference, label map or one-hot.
        num_classes: number of classes for label-map inputs.
        valid: optional bool region ``(B, 1, *S)`` to restrict counting to.
        include_background: if False, channel 0 is dropped.
        ignore_empty: if True, NaN wherever the reference is empty (MONAI's default).

    Returns:
        ``(B, C)`` float64 array (torch if ``pred`` is a tensor), NaN where undefined.
    """
    return compute_overlap_metric("dice", pred, ref, num_classes, valid, include_background, ignore_empty)


def compute_iou(
    pred: Array,
    ref: Array,
    num_classes: int | None = None,
    valid: Array | None = None,
    include_background: bool = True,
    ignore_empty: bool = False,
) -> Array:
    """Intersection over union (Jaccard 1912) ``TP / (TP + FP + FN)``.

    Empty masks: NaN when both are empty, 0 when exactly one is; ``ignore_empty=True`` gives NaN whenever the
    reference is empty (MONAI ``MeanIoU`` default). Arguments as in ``compute_dice``.

    Returns:
        ``(B, C)`` float64 array, NaN where undefined.
    """
    return compute_overlap_metric("iou", pred, ref, num_classes, valid, include_background, ignore_empty)


def compute_precision(
    pred: Array, ref: Array, num_classes: int | None = None, valid: Array | None = None, include_background: bool = True
) -> Array:
    """Precision (positive predictive value) ``TP / (TP + FP)``; NaN when the prediction is empty.

    Arguments as in ``compute_confusion``. Returns ``(B, C)`` float64, NaN where undefined.
    """
    return compute_overlap_metric("precision", pred, ref, num_classes, valid, include_background)


def compute_recall(
    pred: Array, ref: Array, num_classes: int | None = None, valid: Array | None = None, include_background: bool = True
) -> Array:
    """Recall (sensitivity) ``TP / (TP + FN)``; NaN when the reference is empty.

    Arguments as in ``compute_confusion``. Returns ``(B, C)`` float64, NaN where undefined.
    """
    return compute_overlap_metric("recall", pred, ref, num_classes, valid, include_background)


def compute_specificity(
    pred: Array, ref: Array, num_classes: int | None = None, valid: Array | None = None, include_background: bool = True
) -> Array:
    """Specificity ``TN / (TN + FP)``; NaN when the reference covers the whole (valid) image.

    Arguments as in ``compute_confusion``. Returns ``(B, C)`` float64, NaN where undefined.
    """
    return compute_overlap_metric("specificity", pred, ref, num_classes, valid, include_background)


def compute_accuracy(
    pred: Array, ref: Array, num_classes: int | None = None, valid: Array | None = None, include_background: bool = True
) -> Array:
    """Voxel accuracy ``(TP + TN) / N``; NaN only when the valid region is empty.

    Arguments as in ``compute_confusion``. Returns ``(B, C)`` float64, NaN where undefined.
    """
    return compute_overlap_metric("accuracy", pred, ref, num_classes, valid, include_background)


def compute_volume_similarity(
    pred: Array, ref: Array, num_classes: int | None = None, valid: Array | None = None, include_background: bool = True
) -> Array:
    """Volume similarity ``1 - |FN - FP| / (2 TP + FP + FN)`` (Taha & Hanbury 2015).

    NaN when both masks are empty; 0 when exactly one is. Arguments as in ``compute_confusion``.

    Returns:
        ``(B, C)`` float64, NaN where undefined.
    """
    return compute_overlap_metric("volume_similarity", pred, ref, num_classes, valid, include_background)


def compute_kappa(
    pred: Array, ref: Array, num_classes: int | None = None, valid: Array | None = None, include_background: bool = True
) -> Array:
    """Cohen's kappa (Cohen 1960) of the binary foreground/background agreement, per class.

    ``kappa = (p_o - p_e) / (1 - p_e)``, computed as ``2 (TP TN - FN FP) / ((TP+FP)(FP+TN) + (TP+FN)(FN+TN))``.
    NaN when chance agreement is 1, i.e. prediction and reference are the same constant image (both empty or
    both full), or the valid region is empty. Arguments as in ``compute_confusion``.

    Returns:
        ``(B, C)`` float64, NaN where undefined.
    """
    return compute_overlap_metric("kappa", pred, ref, num_classes, valid, include_background)
