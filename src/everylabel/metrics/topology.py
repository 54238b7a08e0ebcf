"""Topology metrics: clDice on hard skeletons, Betti-number errors and the Euler-characteristic error.

Connectivity: ``connectivity`` is scikit-image's (number of orthogonal hops). The default, ``ndim``, makes the
foreground 8-connected in 2D and 26-connected in 3D; the background then uses the complementary 4- (2D) or
6-connectivity (3D), the only pairing for which the Betti numbers and the Euler characteristic agree
(``chi = b0 - b1`` in 2D, ``chi = b0 - b1 + b2`` in 3D). ``connectivity=1`` swaps the pair (foreground 4/6,
background 8/26). The outside of the image counts as background.

Betti numbers: ``b0`` counts foreground components, ``b1`` holes (2D) or tunnels/handles (3D), ``b2`` cavities
(3D, background components not connected to the outside). In 2D ``b1`` is the number of enclosed background
components; in 3D ``b2`` is that number and ``b1 = b0 + b2 - chi`` with ``chi`` from
``skimage.measure.euler_number``.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.measure import euler_number, label
from skimage.morphology import skeletonize

from everylabel.metrics._utils import Array, binary_numpy, crop_to_union

__all__ = ["TOPOLOGY_METRICS", "betti_numbers", "cldice", "euler_characteristic", "topology_metrics"]

TOPOLOGY_METRICS = ("cldice", "betti0_error", "betti1_error", "betti2_error", "euler_error")


def _check_connectivity(ndim: int, connectivity: int | None) -> int:
    if ndim not in (2, 3):
        raise ValueError(f"topology metrics need 2D or 3D masks, got {ndim}D.")
    connectivity = ndim if connectivity is None else connectivity
    if connectivity not in (1, ndim):
        raise ValueError(f"connectivity must be 1 or {ndim} (ndim) for {ndim}D masks, got {connectivity}.")
    return connectivity


def euler_characteristic(mask: Array, connectivity: int | None = None) -> int:
    """Euler characteristic of a binary 2D/3D mask (``skimage.measure.euler_number``), foreground connectivity
    as in the module docstring."""
    m = binary_numpy(mask, "mask")
    return int(euler_number(m, connectivity=_check_connectivity(m.ndim, connectivity)))


def betti_numbers(mask: Array, connectivity: int | None = None) -> tuple[int, ...]:
    """Betti numbers ``(b0, b1)`` of a 2D mask or ``(b0, b1, b2)`` of a 3D mask.

    Args:
        mask: binary 2D or 3D mask.
        connectivity: foreground connectivity, 1 or ``ndim`` (default); the background uses the complement.

    Returns:
        The Betti numbers; all 0 for an empty mask.
    """
    m = binary_numpy(mask, "mask")
    fg = _check_connectivity(m.ndim, connectivity)
    bg = m.ndim if fg == 1 else 1
    b0 = int(label(m, connectivity=fg).max())
    padded = np.pad(~m, 1, constant_values=True)  # the outside is one background component
    enclosed = int(label(padded, connectivity=bg).max()) - 1
    if m.ndim == 2:
        return b0, enclosed
    chi = int(euler_number(m, connectivity=fg))
    return b0, b0 + enclosed - chi, enclosed


def cldice(pred: Array, ref: Array) -> float:
    """Centreline Dice on hard skeletons (Shit et al. 2021, "clDice - a novel topology-preserving loss function
    for tubular structure segmentation", CVPR).

    ``Tprec = |S(pred) ∩ ref| / |S(pred)|``, ``Tsens = |S(ref) ∩ pred| / |S(ref)|``,
    ``clDice = 2 Tprec Tsens / (Tprec + Tsens)`` (0 when both are 0), with ``S`` = ``skimage.morphology.skeletonize``
    (Zhang's method in 2D, Lee's in 3D).

    Returns:
        clDice in [0, 1]; NaN when either skeleton is empty, i.e. when either mask is empty, and also for some
        blob-like masks whose 3D skeleton vanishes (Lee's method removes even-sized cubes entirely).
    """
    p = binary_numpy(pred, "pred")
    r = binary_numpy(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got {p.shape} and {r.shape}.")
    _check_connectivity(p.ndim, None)
    if p.any() or r.any():  # the box of pred | ref with a zero margin gives the same skeletons, faster
        p, r = crop_to_union(p, r, 1, 1)
    skel_p = skeletonize(p) if p.any() else p
    skel_r = skeletonize(r) if r.any() else r
    n_p, n_r = np.count_nonzero(skel_p), np.count_nonzero(skel_r)
    if n_p == 0 or n_r == 0:
        return math.nan
    tprec = np.count_nonzero(skel_p & r) / n_p
    tsens = np.count_nonzero(skel_r & p) / n_r
    return 0.0 if tprec + tsens == 0 else float(2 * tprec * tsens / (tprec + tsens))


def topology_metrics(
    pred: Array, ref: Array, metrics: tuple[str, ...] | list[str] = TOPOLOGY_METRICS, connectivity: int | None = None
) -> dict[str, float]:
    """Topology metrics of one binary pair.

    ``betti{k}_error = |b_k(pred) - b_k(ref)|`` and ``euler_error = |chi(pred) - chi(ref)|`` are defined for empty
    masks too (all Betti numbers of an empty mask are 0); ``betti2_error`` is NaN for 2D masks, where ``b2`` does
    not exist. ``cldice`` as in ``cldice``.

    Args:
        pred: binary 2D/3D prediction.
        ref: binary reference of the same shape.
        metrics: names from ``TOPOLOGY_METRICS``.
        connectivity: foreground connectivity, 1 or ``ndim`` (default).

    Returns:
        ``{name: value}``.
    """
    unknown = [m for m in metrics if m not in TOPOLOGY_METRICS]
    if unknown:
        raise ValueError(f"unknown topology metrics {unknown}; expected names from {TOPOLOGY_METRICS}.")
    p = binary_numpy(pred, "pred")
    r = binary_numpy(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got {p.shape} and {r.shape}.")
    _check_connectivity(p.ndim, connectivity)
    if p.any() or r.any():  # topology is unchanged by cropping to the box of pred | ref with a zero margin
        p, r = crop_to_union(p, r, 1, 1)
    out: dict[str, float] = {}
    if any(m.startswith("betti") for m in metrics):
        bp, br = betti_numbers(p, connectivity), betti_numbers(r, connectivity)
        for k in range(3):
            if f"betti{k}_error" in metrics:
                out[f"betti{k}_error"] = float(abs(bp[k] - br[k])) if k < len(bp) else math.nan
    if "euler_error" in metrics:
        out["euler_error"] = float(abs(euler_characteristic(p, connectivity) - euler_characteristic(r, connectivity)))
    if "cldice" in metrics:
        out["cldice"] = cldice(p, r)
    return {m: out[m] for m in metrics}
