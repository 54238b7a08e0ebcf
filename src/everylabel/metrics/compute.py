"""``compute_metrics``: every metric of one binary prediction/reference pair, by name, in one call;
``compute_case_metrics``: the same over a batch, ``(B, C)`` per name.

Metrics are grouped so that each group's expensive part runs once: one confusion count for all overlap metrics,
one surface-distance pass (``surface.py``) for all surface metrics, one skeleton / labelling pass for topology
(``topology.py``) and lesion metrics (``lesion.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from everylabel.metrics._utils import Array, binary_numpy, per_case_spacing
from everylabel.metrics.lesion import LESION_METRICS, lesion_metrics
from everylabel.metrics.overlap import OVERLAP_METRICS, _one_hot_pair, _typed, to_one_hot_mask
from everylabel.metrics.surface import CONVENTIONS, SURFACE_METRICS, compute_surface_distances, surface_metrics
from everylabel.metrics.topology import TOPOLOGY_METRICS, topology_metrics

__all__ = ["DEFAULT_METRICS", "METRIC_NAMES", "compute_case_metrics", "compute_metrics", "empty_status"]

DEFAULT_METRICS: tuple[str, ...] = (*OVERLAP_METRICS, *SURFACE_METRICS)
"""Metrics computed when ``metrics=None`` (topology and lesion metrics are opt-in: skeletons cost more)."""

METRIC_NAMES: tuple[str, ...] = (*OVERLAP_METRICS, *SURFACE_METRICS, *TOPOLOGY_METRICS, *LESION_METRICS)
"""Every name ``compute_metrics`` accepts."""


def empty_status(pred: np.ndarray, ref: np.ndarray) -> str:
    """Which masks are empty: ``"none"``, ``"pred"``, ``"ref"`` or ``"both"`` (the usual reason for NaN)."""
    p, r = bool(pred.any()), bool(ref.any())
    return {(True, True): "none", (False, True): "pred", (True, False): "ref", (False, False): "both"}[(p, r)]


def _check_pair(pred: Array, ref: Array, valid: Array | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    p = binary_numpy(pred, "pred")
    r = binary_numpy(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got {p.shape} and {r.shape}.")
    if p.ndim < 1:
        raise ValueError("pred and ref must have at least one spatial axis, got scalars.")
    v = None
    if valid is not None:
        v = binary_numpy(valid, "valid")
        if v.shape != p.shape:
            raise ValueError(f"valid must have the shape of pred {p.shape}, got {v.shape}.")
    return p, r, v


def _overlap(p: np.ndarray, r: np.ndarray, v: np.ndarray | None, names: list[str]) -> dict[str, float]:
    if v is not None:
        p, r = p & v, r & v
        n = int(v.sum())
    else:
        n = p.size
    tp = float(np.count_nonzero(p & r))
    fp = float(np.count_nonzero(p)) - tp
    fn = float(np.count_nonzero(r)) - tp
    counts = [torch.tensor([x], dtype=torch.float64) for x in (tp, fp, fn, n - tp - fp - fn)]
    return {m: float(OVERLAP_METRICS[m](*counts)[0]) for m in names}


def compute_metrics(
    pred: Array,
    ref: Array,
    *,
    spacing: float | Sequence[float] | None = None,
    metrics: Sequence[str] | None = None,
    nsd_tolerance: float = 1.0,
    convention: str = "default",
    valid: Array | None = None,
    connectivity: int | None = None,
) -> dict[str, float]:
    """Computes named metrics of one binary prediction against one binary reference.

    Undefined values are NaN, never 0 or 1. Definitions and empty-mask semantics: overlap metrics in
    ``overlap.py`` (e.g. Dice is NaN only when both masks are empty); surface metrics (``hd``, ``hd95``,
    ``assd``, ``masd``, ``nsd``, ``avg_hausdorff``) and their conventions in ``surface.py`` (NaN when either
    mask is empty); topology metrics (``cldice``, ``betti0_error``, ``betti1_error``, ``betti2_error``,
    ``euler_error``) in ``topology.py``; lesion metrics (``lesion_sensitivity``, ``lesion_fp``, ``box_iou``)
    in ``lesion.py``. ``empty_status(pred, ref)`` tells which mask was empty.

    Args:
        pred: binary prediction ``(*S)``, numpy or torch, values 0/1 or bool.
        ref: binary reference ``(*S)``.
        spacing: voxel spacing per axis (physical units), a single number for isotropic; None for unit spacing.
        metrics: names from ``METRIC_NAMES``; None for ``DEFAULT_METRICS``.
        nsd_tolerance: tolerance of the normalised surface distance, in the units of ``spacing``.
        convention: surface definition, one of ``"default"``, ``"monai"``, ``"medpy"``, ``"deepmind"``
            (see ``surface.py``); overlap metrics do not depend on it.
        valid: optional binary region ``(*S)``; voxels outside it are ignored (set to background for surface,
            topology and lesion metrics).
        connectivity: foreground connectivity (scikit-image convention) for topology and lesion metrics; None
            for full connectivity (8 in 2D, 26 in 3D).

    Returns:
        ``{name: value}`` in the order of ``metrics``.
    """
    names = list(DEFAULT_METRICS if metrics is None else metrics)
    unknown = [m for m in names if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; expected names from {list(METRIC_NAMES)}.")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}.")
    p, r, v = _check_pair(pred, ref, valid)
    out: dict[str, float] = {}
    overlap = [m for m in names if m in OVERLAP_METRICS]
    if overlap:
        out.update(_overlap(p, r, v, overlap))
    ps, rs = (p, r) if v is None else (p & v, r & v)
    surface = [m for m in names if m in SURFACE_METRICS]
    if surface:
        sd = compute_surface_distances(ps, rs, spacing=spacing, convention=convention)
        out.update(surface_metrics(sd, surface, nsd_tolerance=nsd_tolerance))
    topology = [m for m in names if m in TOPOLOGY_METRICS]
    if topology:
        out.update(topology_metrics(ps, rs, topology, connectivity=connectivity))
    lesion = [m for m in names if m in LESION_METRICS]
    if lesion:
        out.update(lesion_metrics(ps, rs, lesion, connectivity=connectivity))
    return {m: out[m] for m in names}


def compute_case_metrics(
    y_pred: Array,
    y: Array,
    metrics: Sequence[str],
    num_classes: int | None = None,
    include_background: bool = False,
    valid: Array | None = None,
    spacing: float | Sequence[float] | Sequence[Sequence[float]] | None = None,
    nsd_tolerance: float = 1.0,
    convention: str = "default",
    connectivity: int | None = None,
) -> dict[str, Array]:
    """``compute_metrics`` for every case and class of a batch, e.g. topology or lesion metrics per class.

    Args:
        y_pred: binarised prediction, label map ``(B, 1, *S)`` (needs ``num_classes``) or one-hot ``(B, C, *S)``.
        y: reference, label map or one-hot.
        metrics: names from ``METRIC_NAMES``.
        num_classes: number of classes for label-map inputs.
        include_background: if False (default), channel 0 is dropped.
        valid: optional binary region ``(B, 1, *S)``; voxels outside it are ignored.
        spacing: one spacing for the batch (a number or one value per axis) or one per case.
        nsd_tolerance: NSD tolerance for every class.
        convention: surface convention, see ``compute_metrics``.
        connectivity: component connectivity for topology and lesion metrics, see ``compute_metrics``.

    Returns:
        ``{name: (B, C) float64}``, torch if ``y_pred`` is a tensor, else numpy; NaN where undefined.
    """
    names = list(metrics)
    unknown = [m for m in names if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; expected names from {list(METRIC_NAMES)}.")
    p, r = _one_hot_pair(y_pred, y, include_background, num_classes)
    v = None
    if valid is not None:
        v = to_one_hot_mask(valid, None, "valid").cpu().numpy()
        if v.shape[1] != 1 or v.shape[0] != p.shape[0] or v.shape[2:] != p.shape[2:]:
            raise ValueError(f"valid must have shape {(p.shape[0], 1, *p.shape[2:])}, got {v.shape}.")
    spacings = per_case_spacing(spacing, p.shape[0])
    out = {m: np.full(p.shape[:2], np.nan) for m in names}
    for b, c in np.ndindex(*p.shape[:2]):
        values = compute_metrics(
            p[b, c],
            r[b, c],
            spacing=spacings[b],
            metrics=names,
            nsd_tolerance=nsd_tolerance,
            convention=convention,
            valid=None if v is None else v[b, 0],
            connectivity=connectivity,
        )
        for m, value in values.items():
            out[m][b, c] = value
    return {m: _typed(value, y_pred) for m, value in out.items()}
