"""Surface-distance metrics over batches: ``(B, C)`` functions with MONAI names and cumulative classes.

Each (case, class) pair runs the shared surface pass of ``surface.py`` once; every requested metric is derived
from it. Definitions, conventions and empty-mask semantics (NaN when either mask is empty) are documented in
``everylabel.metrics.surface``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from everylabel.metrics._utils import Array, per_case_spacing
from everylabel.metrics.cumulative import CumulativeMetric
from everylabel.metrics.overlap import _one_hot_pair, _typed, to_one_hot_mask
from everylabel.metrics.surface import SURFACE_METRICS, compute_surface_distances, surface_metrics

__all__ = [
    "HausdorffDistanceMetric",
    "SurfaceDiceMetric",
    "SurfaceDistanceMetric",
    "compute_average_surface_distance",
    "compute_hausdorff_distance",
    "compute_surface_dice",
    "compute_surface_metrics",
]

Spacing = float | Sequence[float] | Sequence[Sequence[float]] | None


def compute_surface_metrics(
    y_pred: Array,
    y: Array,
    metrics: Sequence[str] = SURFACE_METRICS,
    spacing: Spacing = None,
    nsd_tolerance: float | Sequence[float] = 1.0,
    convention: str = "default",
    include_background: bool = False,
    num_classes: int | None = None,
    percentile: float = 95.0,
) -> dict[str, Array]:
    """Computes several surface metrics per case and class from one surface pass each.

    Args:
        y_pred: binarised prediction, label map ``(B, 1, *S)`` (needs ``num_classes``) or one-hot ``(B, C, *S)``;
            2D or 3D.
        y: reference, label map or one-hot.
        metrics: names from ``SURFACE_METRICS``.
        spacing: one spacing for the batch (a number or one value per axis) or one per case.
        nsd_tolerance: NSD tolerance in physical units, one for all classes or one per (kept) class.
        convention: ``"default"``, ``"monai"``, ``"medpy"`` or ``"deepmind"``.
        include_background: if False (MONAI's default for distances), channel 0 is dropped.
        num_classes: number of classes for label-map inputs.
        percentile: percentile reported as ``hd95``.

    Returns:
        ``{name: (B, C) float64}``, torch if ``y_pred`` is a tensor, else numpy; NaN where either mask is empty.
    """
    p, r = _one_hot_pair(y_pred, y, include_background, num_classes)
    batch, channels = p.shape[:2]
    if np.isscalar(nsd_tolerance):
        tolerances = [float(nsd_tolerance)] * channels  # type: ignore[arg-type]
    else:
        tolerances = [float(t) for t in nsd_tolerance]  # type: ignore[union-attr]
    if len(tolerances) != channels:
        raise ValueError(f"nsd_tolerance must have one value per class ({channels}), got {len(tolerances)}.")
    spacings = per_case_spacing(spacing, batch)
    out = {m: np.full((batch, channels), np.nan) for m in metrics}
    for b, c in np.ndindex(batch, channels):
        sd = compute_surface_distances(p[b, c], r[b, c], spacings[b], convention)
        values = surface_metrics(sd, metrics, nsd_tolerance=tolerances[c], percentile=percentile)
        for m, v in values.items():
            out[m][b, c] = v
    return {m: _typed(v, y_pred) for m, v in out.items()}


def _directed(
    y_pred: Array,
    y: Array,
    include_background: bool,
    num_classes: int | None,
    spacing: Spacing,
    convention: str,
    percentile: float | None,
) -> Array:
    """Prediction-to-reference distances reduced by max (``percentile=None``), a percentile, or the mean (-1)."""
    p, r = _one_hot_pair(y_pred, y, include_background, num_classes)
    spacings = per_case_spacing(spacing, p.shape[0])
    out = np.full(p.shape[:2], np.nan)
    for b, c in np.ndindex(*p.shape[:2]):
        sd = compute_surface_distances(p[b, c], r[b, c], spacings[b], convention)
        if not sd.defined:
            continue
        d, w = sd.pred_to_ref, sd.pred_weights
        if percentile is None:
            out[b, c] = d.max()
        elif percentile < 0:
            out[b, c] = np.sum(d * w) / np.sum(w)
        else:
            out[b, c] = np.percentile(d, percentile)
    return _typed(out, y_pred)


def compute_hausdorff_distance(
    y_pred: Array,
    y: Array,
    include_background: bool = False,
    percentile: float | None = None,
    directed: bool = False,
    spacing: Spacing = None,
    convention: str = "default",
    num_classes: int | None = None,
) -> Array:
    """Hausdorff distance per case and class (Huttenlocher et al. 1993), MONAI-compatible signature.

    Args:
        y_pred: binarised prediction, label map or one-hot ``(B, C, *S)``.
        y: reference.
        include_background: if False, channel 0 is dropped.
        percentile: e.g. 95 for HD95; None for the maximum.
        directed: if True, only distances from the prediction surface to the reference surface (percentiles
            then interpolate linearly in every convention).
        spacing: voxel spacing (see ``compute_surface_metrics``).
        convention: surface convention (see ``surface.py``).
        num_classes: number of classes for label-map inputs.

    Returns:
        ``(B, C)`` float64, NaN where either mask is empty.
    """
    if percentile is not None and not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}.")
    if directed:
        return _directed(y_pred, y, include_background, num_classes, spacing, convention, percentile)
    name = "hd" if percentile is None else "hd95"
    return compute_surface_metrics(
        y_pred, y, (name,), spacing, 1.0, convention, include_background, num_classes, percentile or 0.0
    )[name]


def compute_average_surface_distance(
    y_pred: Array,
    y: Array,
    include_background: bool = False,
    symmetric: bool = True,
    spacing: Spacing = None,
    convention: str = "default",
    num_classes: int | None = None,
) -> Array:
    """Average surface distance per case and class.

    ``symmetric=True`` gives ASSD, the mean over the union of both directed distance sets (MONAI
    ``symmetric=True``, MedPy ``assd``); ``symmetric=False`` the directed mean from prediction to reference.
    Note MONAI's default is ``symmetric=False``. Other arguments as ``compute_hausdorff_distance``.

    Returns:
        ``(B, C)`` float64, NaN where either mask is empty.
    """
    if not symmetric:
        return _directed(y_pred, y, include_background, num_classes, spacing, convention, -1.0)
    return compute_surface_metrics(y_pred, y, ("assd",), spacing, 1.0, convention, include_background, num_classes)[
        "assd"
    ]


def compute_surface_dice(
    y_pred: Array,
    y: Array,
    class_thresholds: float | Sequence[float],
    include_background: bool = False,
    spacing: Spacing = None,
    convention: str = "default",
    num_classes: int | None = None,
) -> Array:
    """Normalised surface distance / surface Dice at a tolerance (Nikolov et al. 2021), MONAI-compatible.

    MONAI returns 0 when exactly one mask is empty; this returns NaN there (and when both are empty).
    Other arguments as ``compute_hausdorff_distance``.

    Returns:
        ``(B, C)`` float64 in [0, 1], NaN where either mask is empty.
    """
    return compute_surface_metrics(
        y_pred, y, ("nsd",), spacing, class_thresholds, convention, include_background, num_classes
    )["nsd"]


class _SurfaceMetric(CumulativeMetric):
    def __init__(
        self,
        include_background: bool = False,
        spacing: Spacing = None,
        convention: str = "default",
        num_classes: int | None = None,
        reduction: str = "mean",
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction, get_not_nans)
        self.include_background = include_background
        self.spacing = spacing
        self.convention = convention
        self.num_classes = num_classes


class HausdorffDistanceMetric(_SurfaceMetric):
    """Cumulative Hausdorff distance (``percentile=95`` for HD95); see ``compute_hausdorff_distance``.

    Args:
        include_background: if False, channel 0 is dropped.
        percentile: None for the maximum, e.g. 95 for HD95.
        directed: only prediction-to-reference distances.
        spacing: voxel spacing for every batch.
        convention: surface convention.
        num_classes: number of classes for label-map inputs.
        reduction: default reduction of ``aggregate``.
        get_not_nans: if True, ``aggregate`` also returns the number of defined values.
    """

    def __init__(
        self,
        include_background: bool = False,
        percentile: float | None = None,
        directed: bool = False,
        spacing: Spacing = None,
        convention: str = "default",
        num_classes: int | None = None,
        reduction: str = "mean",
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(include_background, spacing, convention, num_classes, reduction, get_not_nans)
        self.percentile = percentile
        self.directed = directed

    def _compute(self, y_pred: Array, y: Array, valid: Array | None) -> torch.Tensor:
        return torch.as_tensor(
            compute_hausdorff_distance(
                *_masked(y_pred, y, valid, self.num_classes),
                self.include_background,
                self.percentile,
                self.directed,
                self.spacing,
                self.convention,
            )
        )


class SurfaceDistanceMetric(_SurfaceMetric):
    """Cumulative average surface distance (``symmetric=True``: ASSD); see ``compute_average_surface_distance``."""

    def __init__(
        self,
        include_background: bool = False,
        symmetric: bool = True,
        spacing: Spacing = None,
        convention: str = "default",
        num_classes: int | None = None,
        reduction: str = "mean",
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(include_background, spacing, convention, num_classes, reduction, get_not_nans)
        self.symmetric = symmetric

    def _compute(self, y_pred: Array, y: Array, valid: Array | None) -> torch.Tensor:
        return torch.as_tensor(
            compute_average_surface_distance(
                *_masked(y_pred, y, valid, self.num_classes),
                self.include_background,
                self.symmetric,
                self.spacing,
                self.convention,
            )
        )


class SurfaceDiceMetric(_SurfaceMetric):
    """Cumulative normalised surface distance at ``class_thresholds``; see ``compute_surface_dice``."""

    def __init__(
        self,
        class_thresholds: float | Sequence[float],
        include_background: bool = False,
        spacing: Spacing = None,
        convention: str = "default",
        num_classes: int | None = None,
        reduction: str = "mean",
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(include_background, spacing, convention, num_classes, reduction, get_not_nans)
        self.class_thresholds = class_thresholds

    def _compute(self, y_pred: Array, y: Array, valid: Array | None) -> torch.Tensor:
        return torch.as_tensor(
            compute_surface_dice(
                *_masked(y_pred, y, valid, self.num_classes),
                self.class_thresholds,
                self.include_background,
                self.spacing,
                self.convention,
            )
        )


def _masked(y_pred: Array, y: Array, valid: Array | None, num_classes: int | None) -> tuple[torch.Tensor, ...]:
    """One-hot bool tensors with voxels outside ``valid`` set to background in every channel."""
    p = to_one_hot_mask(y_pred, num_classes, "y_pred")
    r = to_one_hot_mask(y, num_classes, "y").to(p.device)
    if valid is not None:
        v = to_one_hot_mask(valid, None, "valid").to(p.device)
        if v.shape[0] != p.shape[0] or v.shape[2:] != p.shape[2:] or v.shape[1] != 1:
            raise ValueError(f"valid must have shape {(p.shape[0], 1, *p.shape[2:])}, got {tuple(v.shape)}.")
        p, r = p & v, r & v
    return p, r
