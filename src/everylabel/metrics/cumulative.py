"""Cumulative metric classes in MONAI style: ``metric(y_pred, y)`` per batch, ``aggregate()``, ``reset()``.

Each call computes a ``(B, C)`` tensor (NaN where undefined) and appends it to a buffer; ``aggregate`` reduces
the buffer over the defined (non-NaN) values only. Unlike MONAI, a reduction with no defined value is NaN, not 0.
Overlap metrics come from confusion counts (``DiceMetric``, ``MeanIoU``, ``CumulativeOverlap``); every other
metric of ``compute_metrics`` is computed per case and class (``CaseMetric``, ``ClDiceMetric``,
``BettiErrorMetric``, ``LesionMetric``, ``CumulativeCaseMetrics``); the surface-distance classes live in
``distances.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from everylabel.metrics._utils import Array, as_tensor
from everylabel.metrics.compute import METRIC_NAMES, compute_case_metrics
from everylabel.metrics.lesion import LESION_METRICS
from everylabel.metrics.overlap import OVERLAP_METRICS, _confusion_tensors

__all__ = [
    "REDUCTIONS",
    "BettiErrorMetric",
    "CaseMetric",
    "ClDiceMetric",
    "CumulativeCaseMetrics",
    "CumulativeMetric",
    "CumulativeOverlap",
    "DiceMetric",
    "LesionMetric",
    "MeanIoU",
    "reduce_metric",
]

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


class _CaseMetrics:
    """Arguments shared by the per-case classes, passed on to ``compute_case_metrics``."""

    def _setup(
        self,
        names: Sequence[str],
        include_background: bool,
        num_classes: int | None,
        spacing: Sequence[float] | float | None,
        nsd_tolerance: float,
        convention: str,
        connectivity: int | None,
    ) -> None:
        unknown = [m for m in names if m not in METRIC_NAMES]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; expected names from {list(METRIC_NAMES)}.")
        self.names = tuple(names)
        self.options = {
            "num_classes": num_classes,
            "include_background": include_background,
            "spacing": spacing,
            "nsd_tolerance": nsd_tolerance,
            "convention": convention,
            "connectivity": connectivity,
        }

    def _values(self, y_pred: Array, y: Array, valid: Array | None) -> dict[str, torch.Tensor]:
        values = compute_case_metrics(y_pred, y, self.names, valid=valid, **self.options)
        return {m: torch.as_tensor(v) for m, v in values.items()}


class CaseMetric(_CaseMetrics, CumulativeMetric):
    """Cumulative version of any metric of ``compute_metrics``, computed per case and class by name.

    Useful for the metrics without a confusion-count form: topology (``"cldice"``, ``"betti1_error"``, ...),
    lesion (``"lesion_sensitivity"``, ``"lesion_fp"``, ``"box_iou"``) or surface metrics with one convention.
    Definitions and undefined (NaN) cases as in ``compute_metrics``.

    Args:
        metric_name: a name from ``METRIC_NAMES``.
        include_background: if False (default), channel 0 is dropped.
        reduction: default reduction of ``aggregate``.
        get_not_nans: if True, ``aggregate`` also returns the number of defined values.
        num_classes: number of classes for label-map inputs ``(B, 1, *S)``; None for one-hot inputs.
        spacing: voxel spacing for surface metrics (one for every batch).
        nsd_tolerance: NSD tolerance.
        convention: surface convention.
        connectivity: component connectivity for topology and lesion metrics.

    Example:
        >>> metric = CaseMetric("cldice", num_classes=2)
        >>> for pred, ref in batches:  # doctest: +SKIP
        ...     metric(pred, ref)
        >>> metric.aggregate()  # doctest: +SKIP
        tensor(0.81, dtype=torch.float64)
    """

    def __init__(
        self,
        metric_name: str,
        include_background: bool = False,
        reduction: str = "mean",
        get_not_nans: bool = False,
        num_classes: int | None = None,
        spacing: Sequence[float] | float | None = None,
        nsd_tolerance: float = 1.0,
        convention: str = "default",
        connectivity: int | None = None,
    ) -> None:
        CumulativeMetric.__init__(self, reduction, get_not_nans)
        self._setup((metric_name,), include_background, num_classes, spacing, nsd_tolerance, convention, connectivity)
        self.metric_name = metric_name

    def _compute(self, y_pred: Array, y: Array, valid: Array | None) -> torch.Tensor:
        return self._values(y_pred, y, valid)[self.metric_name]


class ClDiceMetric(CaseMetric):
    """Cumulative clDice on hard skeletons (Shit et al. 2021); see ``topology.cldice`` (NaN for empty skeletons).

    Arguments as ``CaseMetric`` without the surface options.
    """

    def __init__(
        self,
        include_background: bool = False,
        reduction: str = "mean",
        get_not_nans: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__("cldice", include_background, reduction, get_not_nans, num_classes)


class BettiErrorMetric(CaseMetric):
    """Cumulative Betti-number error ``|b_k(pred) - b_k(ref)|``; see ``topology.topology_metrics``.

    Args:
        betti: 0 (components), 1 (holes in 2D, tunnels in 3D) or 2 (cavities, 3D only; NaN in 2D).
        connectivity: foreground connectivity, 1 or ``ndim`` (default).
        Other arguments as ``CaseMetric``.
    """

    def __init__(
        self,
        betti: int = 0,
        include_background: bool = False,
        reduction: str = "mean",
        get_not_nans: bool = False,
        num_classes: int | None = None,
        connectivity: int | None = None,
    ) -> None:
        if betti not in (0, 1, 2):
            raise ValueError(f"betti must be 0, 1 or 2, got {betti}.")
        super().__init__(f"betti{betti}_error", include_background, reduction, get_not_nans, num_classes,
                         connectivity=connectivity)  # fmt: skip


class LesionMetric(CaseMetric):
    """Cumulative lesion-level metric: ``"lesion_sensitivity"``, ``"lesion_fp"`` or ``"box_iou"`` (``lesion.py``).

    ``reduction="sum"`` of ``"lesion_fp"`` gives the total number of false positives; ``"mean"`` the false
    positives per case.

    Args:
        metric_name: a name from ``LESION_METRICS``.
        connectivity: component connectivity (1..ndim); None for full connectivity.
        Other arguments as ``CaseMetric``.
    """

    def __init__(
        self,
        metric_name: str = "lesion_sensitivity",
        include_background: bool = False,
        reduction: str = "mean",
        get_not_nans: bool = False,
        num_classes: int | None = None,
        connectivity: int | None = None,
    ) -> None:
        if metric_name not in LESION_METRICS:
            raise ValueError(f"metric_name must be one of {LESION_METRICS}, got {metric_name!r}.")
        super().__init__(metric_name, include_background, reduction, get_not_nans, num_classes,
                         connectivity=connectivity)  # fmt: skip


class CumulativeCaseMetrics(_CaseMetrics):
    """Accumulates several metrics of ``compute_metrics`` per case and class, each group's pass shared.

    Args:
        metrics: names from ``METRIC_NAMES`` (e.g. ``TOPOLOGY_METRICS + LESION_METRICS``).
        include_background: if False (default), channel 0 is dropped.
        reduction: default reduction of ``aggregate``.
        num_classes, spacing, nsd_tolerance, convention, connectivity: as ``CaseMetric``.
    """

    def __init__(
        self,
        metrics: Sequence[str],
        include_background: bool = False,
        reduction: str = "mean",
        num_classes: int | None = None,
        spacing: Sequence[float] | float | None = None,
        nsd_tolerance: float = 1.0,
        convention: str = "default",
        connectivity: int | None = None,
    ) -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
        self._setup(metrics, include_background, num_classes, spacing, nsd_tolerance, convention, connectivity)
        self.reduction = reduction
        self._buffer: list[dict[str, torch.Tensor]] = []

    def __call__(self, y_pred: Array, y: Array, valid: Array | None = None) -> dict[str, torch.Tensor]:
        """Computes the ``(B, C)`` values of every metric for one batch, stores and returns them."""
        values = self._values(y_pred, y, valid)
        self._buffer.append({m: v.detach() for m, v in values.items()})
        return values

    def get_buffer(self) -> dict[str, torch.Tensor]:
        """All values accumulated since the last reset, ``{name: (N, C)}``."""
        if not self._buffer:
            raise ValueError("CumulativeCaseMetrics has no values: call it on a batch before aggregate().")
        return {m: torch.cat([b[m] for b in self._buffer], dim=0) for m in self.names}

    def aggregate(self, reduction: str | None = None) -> dict[str, torch.Tensor]:
        """Per-case values reduced over defined entries, one entry per metric."""
        return {m: reduce_metric(v, reduction or self.reduction)[0] for m, v in self.get_buffer().items()}

    def reset(self) -> None:
        """Clears the buffer."""
        self._buffer = []
