"""Cumulative metric classes in MONAI style: ``metric(y_pred, y)`` per batch, ``aggregate()``, ``reset()``.

Each call computes a ``(B, C)`` tensor (NaN where undefined) and appends it to a buffer; ``aggregate`` reduces
the buffer over the defined (non-NaN) values only. Unlike MONAI, a reduction with no defined value is NaN, not 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from everylabel.metrics._utils import Array, as_tensor
from everylabel.metrics.overlap import OVERLAP_METRICS, _confusion_tensors

__all__ = ["REDUCTIONS", "CumulativeMetric", "CumulativeOverlap", "DiceMetric", "MeanIoU", "reduce_metric"]

REDUCTIONS = ("none", "mean", "sum", "mean_batch", "sum_batch", "mean_channel", "sum_channel")


def reduce_metric(f: torch.Tensor, reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Reduces ``(N, C)`` metric values over their defined (non-NaN) entries, as MONAI's ``do_metric_reduction``.

    ``"mean"`` averages over classes within each case first, then over cases having at least one defined value.
    Where nothing is defined, a mean is NaN (MONAI returns 0 there).

    Args:
        f: ``(N, C)`` values, NaN where undefined.
        reduction: one of ``REDUCTIONS``.

    Returns:
        ``(reduced, not_nans)``: the reduced values and the number of defined values behind each.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    defined = ~torch.isnan(f)
    if reduction == "none":
        return f, defined.double()
    zeroed = torch.where(defined, f, torch.zeros_like(f))
    nan = torch.tensor(float("nan"), dtype=f.dtype, device=f.device)

    def mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        return torch.where(count > 0, total / count.clamp_min(1), nan)

    if reduction == "mean":
        per_case_count = defined.sum(dim=1)
        per_case = mean(zeroed.sum(dim=1), per_case_count)
        case_defined = per_case_count > 0
        count = case_defined.sum()
        return mean(torch.where(case_defined, per_case, torch.zeros_like(per_case)).sum(), count), count.double()
    if reduction == "sum":
        return zeroed.sum(), defined.sum().double()
    dim = 0 if reduction.endswith("batch") else 1
    count = defined.sum(dim=dim)
    if reduction.startswith("mean"):
        return mean(zeroed.sum(dim=dim), count), count.double()
    return zeroed.sum(dim=dim), count.double()


class CumulativeMetric:
    """Base class: subclasses implement ``_compute(y_pred, y, valid) -> (B, C) tensor``.

    Args:
        reduction: default reduction of ``aggregate`` (see ``reduce_metric``).
        get_not_nans: if True, ``aggregate`` returns ``(value, not_nans)``.
    """

    def __init__(self, reduction: str = "mean", get_not_nans: bool = False) -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
        self.reduction = reduction
        self.get_not_nans = get_not_nans
        self._buffer: list[torch.Tensor] = []

    def _compute(self, y_pred: Array, y: Array, valid: Array | None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, y_pred: Array, y: Array, valid: Array | None = None) -> torch.Tensor:
        """Computes the ``(B, C)`` values of one batch, stores them and returns them."""
        value = as_tensor(self._compute(y_pred, y, valid), "metric value")
        self._buffer.append(value.detach())
        return value

    def get_buffer(self) -> torch.Tensor:
        """All values accumulated since the last reset, ``(N, C)``."""
        if not self._buffer:
            raise ValueError(f"{type(self).__name__} has no values: call it on a batch before aggregate().")
        return torch.cat([b.to(self._buffer[0].device) for b in self._buffer], dim=0)

    def aggregate(self, reduction: str | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduces the accumulated values over defined entries; NaN where no value is defined."""
        value, not_nans = reduce_metric(self.get_buffer(), reduction or self.reduction)
        return (value, not_nans) if self.get_not_nans else value

    def reset(self) -> None:
        """Clears the buffer."""
        self._buffer = []


class _OverlapMetric(CumulativeMetric):
    name = "dice"

    def __init__(
        self,
        include_background: bool = True,
        reduction: str = "mean",
        get_not_nans: bool = False,
        ignore_empty: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(reduction, get_not_nans)
        self.include_background = include_background
        self.ignore_empty = ignore_empty
        self.num_classes = num_classes

    def _compute(self, y_pred: Array, y: Array, valid: Array | None) -> torch.Tensor:
        tp, fp, fn, tn = _confusion_tensors(y_pred, y, self.num_classes, valid, self.include_background)
        value = OVERLAP_METRICS[self.name](tp, fp, fn, tn)
        if self.ignore_empty:
            value = torch.where(tp + fn > 0, value, torch.full_like(value, float("nan")))
        return value


class DiceMetric(_OverlapMetric):
    """Cumulative Dice, MONAI ``DiceMetric`` style; see ``compute_dice`` for empty-mask semantics.

    Args:
        include_background: if False, channel 0 is dropped.
        reduction: default reduction of ``aggregate``.
        get_not_nans: if True, ``aggregate`` also returns the number of defined values.
        ignore_empty: if True, NaN wherever the reference is empty (MONAI's default); if False (default),
            NaN only when both masks are empty.
        num_classes: number of classes for label-map inputs ``(B, 1, *S)``; None for one-hot inputs.
    """

    name = "dice"


class MeanIoU(_OverlapMetric):
    """Cumulative IoU, MONAI ``MeanIoU`` style; arguments as ``DiceMetric``, semantics as ``compute_iou``."""

    name = "iou"


class CumulativeOverlap:
    """Accumulates several overlap metrics from one confusion pass per batch.

    Args:
        metrics: names from ``OVERLAP_METRICS``.
        num_classes: number of classes for label-map inputs; None for one-hot inputs.
        include_background: if False, channel 0 is dropped.
        reduction: default reduction of ``aggregate``.

    Example:
        >>> metric = CumulativeOverlap(("dice", "recall"), num_classes=3)
        >>> for pred, ref in batches:  # doctest: +SKIP
        ...     metric(pred, ref)
        >>> metric.aggregate()  # doctest: +SKIP
        {'dice': tensor(0.8), 'recall': tensor(0.7)}
    """

    def __init__(
        self,
        metrics: Sequence[str] = tuple(OVERLAP_METRICS),
        num_classes: int | None = None,
        include_background: bool = True,
        reduction: str = "mean",
    ) -> None:
        unknown = [m for m in metrics if m not in OVERLAP_METRICS]
        if unknown:
            raise ValueError(f"unknown overlap metrics {unknown}; expected names from {sorted(OVERLAP_METRICS)}.")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
        self.metrics = tuple(metrics)
        self.num_classes = num_classes
        self.include_background = include_background
        self.reduction = reduction
        self._buffer: list[torch.Tensor] = []

    def __call__(self, y_pred: Array, y: Array, valid: Array | None = None) -> dict[str, torch.Tensor]:
        """Computes the ``(B, C)`` values of every metric for one batch, stores and returns them."""
        counts = _confusion_tensors(y_pred, y, self.num_classes, valid, self.include_background)
        self._buffer.append(torch.stack(counts, dim=0))  # (4, B, C)
        return {m: OVERLAP_METRICS[m](*counts) for m in self.metrics}

    def confusion(self) -> torch.Tensor:
        """The accumulated counts ``(4, N, C)`` in the order tp, fp, fn, tn."""
        if not self._buffer:
            raise ValueError("CumulativeOverlap has no values: call it on a batch before aggregate().")
        return torch.cat(self._buffer, dim=1)

    def aggregate(self, reduction: str | None = None) -> dict[str, torch.Tensor]:
        """Per-case values reduced over defined entries, one entry per metric."""
        counts = self.confusion()
        return {m: reduce_metric(OVERLAP_METRICS[m](*counts), reduction or self.reduction)[0] for m in self.metrics}

    def reset(self) -> None:
        """Clears the buffer."""
        self._buffer = []
