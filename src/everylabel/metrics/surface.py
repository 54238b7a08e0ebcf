"""Surface-distance metrics from one shared pass: HD, HD95, ASSD, MASD, NSD and the average Hausdorff distance.

``compute_surface_distances`` finds the surface elements of prediction and reference once, on the bounding box of
``pred | ref`` with a one-voxel margin, and the exact Euclidean distance (in physical units via ``spacing``) from
each to the other surface; ``surface_metrics`` derives every metric from that result. Distances come from a
KD-tree of the surface coordinates (3-5x faster than two distance transforms on LA-heart volumes) or, when the
surfaces fill over a quarter of the box, and always for ``"deepmind"``, from ``scipy.ndimage.distance_transform_edt``
(as DeepMind does, so that ties at the NSD tolerance fall the same way).

Conventions (the references disagree; each is reproduced exactly in its mode):

``"default"`` (= ``"monai"`` up to rounding): surface elements are the *border voxels*, foreground voxels
    with a face-connected (4-connected in 2D, 6-connected in 3D) background neighbour, the outside of the image
    counting as background (``mask & ~binary_erosion(mask)``). Distances run between voxel centres, every border
    voxel weighs 1. HD95 is the larger of the two directed 95th percentiles (linear interpolation). Distances
    are float64 and computed from integer voxel offsets, ``sqrt(sum((k_i * s_i) ** 2))``, identical to
    ``scipy.ndimage.distance_transform_edt`` (and so to MedPy); an element exactly at the NSD tolerance counts
    as within it.
``"monai"``: the same surfaces and definitions, with distances rounded to float32 as ``monai.metrics`` does
    (so the NSD tolerance test ``d <= tau`` flips at exactly the same voxels). Reproduces
    ``compute_hausdorff_distance`` (``percentile=95``, not directed), ``compute_average_surface_distance``
    (``symmetric=True``) and ``compute_surface_dice`` (``use_subvoxels=False``).
``"medpy"``: the default surfaces and metrics (MedPy's ``hd`` and ``assd`` equal MONAI's), but HD95 is MedPy's
    ``hd95``: the 95th percentile of the *concatenation* of both directed distance sets, usually smaller than
    the default's larger directed percentile (a small surface far off weighs less when pooled).
``"deepmind"``: DeepMind surface-distance: surface elements live on the grid of voxel *corners*; each corner whose
    2x2(x2) neighbourhood is mixed is a surfel weighted by its marching-squares contour length (2D) or
    marching-cubes area (3D) for the given spacing. Means, percentiles and NSD are weighted by surfel size;
    the percentile is the smallest distance whose cumulative weight reaches 95% (no interpolation).

Metric definitions given the directed distance sets ``D_pr`` (prediction surface to reference surface) and
``D_rp`` with weights ``w``:

- ``hd``: ``max(max D_pr, max D_rp)``.
- ``hd95``: per convention above.
- ``assd``: weighted mean of the union ``D_pr ∪ D_rp`` (MONAI ``symmetric=True``, MedPy ``assd``).
- ``masd``: mean of the two directed means, ``(mean D_pr + mean D_rp) / 2``.
- ``avg_hausdorff``: max of the two directed means (the "average Hausdorff distance").
- ``nsd``: (weight of elements within ``nsd_tolerance`` of the other surface, both directions) / (total weight)
  (Nikolov et al. 2021, "Clinically applicable segmentation of head and neck anatomy for radiotherapy").

Undefined: if the prediction or the reference (or both) is empty, every surface metric is NaN (MONAI returns
inf for one empty mask and NaN for two; DeepMind returns inf or NaN; MedPy raises).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy.spatial import KDTree

from everylabel.metrics._surfel_tables import NEIGHBOUR_CODE_TO_NORMALS
from everylabel.metrics._utils import Array, binary_numpy, check_spacing, crop_to_union

__all__ = [
    "CONVENTIONS",
    "SURFACE_METRICS",
    "SurfaceDistances",
    "compute_surface_distances",
    "surface_metrics",
]

CONVENTIONS = ("default", "monai", "medpy", "deepmind")
SURFACE_METRICS = ("hd", "hd95", "assd", "masd", "nsd", "avg_hausdorff")


@dataclass(frozen=True)
class SurfaceDistances:
    """Directed surface distances and surface-element weights of one prediction/reference pair.

    Attributes:
        pred_to_ref: distance from each prediction surface element to the reference surface, ``(Np,)``.
        ref_to_pred: distance from each reference surface element to the prediction surface, ``(Nr,)``.
        pred_weights: size of each prediction surface element (1 for voxel conventions), ``(Np,)``.
        ref_weights: size of each reference surface element, ``(Nr,)``.
        convention: the surface convention used.
    """

    pred_to_ref: np.ndarray
    ref_to_pred: np.ndarray
    pred_weights: np.ndarray
    ref_weights: np.ndarray
    convention: str

    @property
    def defined(self) -> bool:
        """False when either surface is empty (every surface metric is then NaN)."""
        return self.pred_to_ref.size > 0 and self.ref_to_pred.size > 0


def _nearest_distances(
    from_border: np.ndarray, to_border: np.ndarray, spacing: tuple[float, ...], method: str
) -> np.ndarray:
    """Distance from every ``from_border`` element to the nearest ``to_border`` element, in physical units.

    All methods are exact up to rounding. ``"edt"`` reads a Euclidean distance transform of the box;
    ``"kdtree"`` finds the nearest element with a KD-tree and then evaluates ``sqrt(sum((k_i * s_i) ** 2))``
    from the integer voxel offsets ``k`` exactly as the distance transform does, so both give identical numbers
    and a surface ``k`` voxels away along axis ``i`` is at distance ``k * s_i`` exactly; ``"monai"`` returns the
    KD-tree distance between scaled coordinates (MONAI's CPU path), which can differ from that in the last bit.
    """
    if method == "edt":
        return ndimage.distance_transform_edt(~to_border, sampling=spacing)[from_border]
    scale = np.asarray(spacing, dtype=np.float64)
    to_idx = np.argwhere(to_border)
    from_idx = np.argwhere(from_border)
    tree = KDTree(to_idx * scale, leafsize=32)
    distances, nearest = tree.query(from_idx * scale, k=1)
    if method == "monai":
        return distances
    offsets = (to_idx[nearest] - from_idx).astype(np.float64) * scale  # (N, ndim)
    return np.sqrt(np.add.reduce(offsets * offsets, axis=1))


def _voxel_surfaces(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], method: str | None
) -> tuple[np.ndarray, ...]:
    p, r = crop_to_union(pred, ref, 1, 1)
    border_p = p & ~ndimage.binary_erosion(p)
    border_r = r & ~ndimage.binary_erosion(r)
    if method is None:  # a distance transform pays off only when surfaces fill much of the box
        dense = np.count_nonzero(border_p) + np.count_nonzero(border_r) > p.size // 4
        method = "edt" if dense else "kdtree"
    d_pr = _nearest_distances(border_p, border_r, spacing, method)
    d_rp = _nearest_distances(border_r, border_p, spacing, method)
    return d_pr, d_rp, np.ones_like(d_pr), np.ones_like(d_rp)


@lru_cache(maxsize=32)
def _surfel_sizes(spacing: tuple[float, ...]) -> np.ndarray:
    """DeepMind's table: neighbourhood code -> contour length (2D, 16 codes) or surfel area (3D, 256 codes)."""
    if len(spacing) == 2:
        vertical, horizontal = spacing
        diag = 0.5 * math.sqrt(vertical**2 + horizontal**2)
        sizes = np.zeros(16)
        for code, value in {
            0b0001: diag, 0b0010: diag, 0b0011: horizontal, 0b0100: diag, 0b0101: vertical, 0b0110: 2 * diag,
            0b0111: diag, 0b1000: diag, 0b1001: 2 * diag, 0b1010: vertical, 0b1011: diag, 0b1100: horizontal,
            0b1101: diag, 0b1110: diag,
        }.items():  # fmt: skip
            sizes[code] = value
        return sizes
    scale = np.array([spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1]])
    sizes = np.zeros(256)
    for code, normals in enumerate(NEIGHBOUR_CODE_TO_NORMALS):
        sizes[code] = sum(float(np.linalg.norm(np.asarray(n) * scale)) for n in normals)
    return sizes


def _corner_codes(mask: np.ndarray) -> np.ndarray:
    """Neighbourhood code of every voxel corner: bit ``2**(2**d - 1 - i)`` set if the i-th voxel is foreground.

    ``mask`` carries one zero layer at the start and the end of every axis; corner ``j`` sits between voxels
    ``j`` and ``j + 1`` of ``mask``, so the output has one entry fewer per axis.
    """
    ndim = mask.ndim
    out_shape = tuple(s - 1 for s in mask.shape)
    code = np.zeros(out_shape, dtype=np.int32)
    n_bits = 2**ndim
    for i, offset in enumerate(np.ndindex(*([2] * ndim))):
        window = tuple(slice(o, o + s) for o, s in zip(offset, out_shape))
        code |= mask[window].astype(np.int32) << (n_bits - 1 - i)
    return code


def _corner_surfaces(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    full = 2 ** (2**pred.ndim) - 1
    sizes = _surfel_sizes(spacing)
    p, r = crop_to_union(pred, ref, 1, 1)
    code_p, code_r = _corner_codes(p), _corner_codes(r)
    border_p = (code_p != 0) & (code_p != full)
    border_r = (code_r != 0) & (code_r != full)
    d_pr = _nearest_distances(border_p, border_r, spacing, "edt")
    d_rp = _nearest_distances(border_r, border_p, spacing, "edt")
    return d_pr, d_rp, sizes[code_p[border_p]], sizes[code_r[border_r]]


def compute_surface_distances(
    pred: Array,
    ref: Array,
    spacing: float | Sequence[float] | None = None,
    convention: str = "default",
) -> SurfaceDistances:
    """Finds both surfaces and the directed distances between them (the shared pass behind every surface metric).

    Args:
        pred: binary prediction ``(H, W)`` or ``(H, W, D)``, numpy or torch.
        ref: binary reference of the same shape.
        spacing: voxel size per axis in physical units (a number for isotropic); None for unit spacing.
        convention: one of ``CONVENTIONS`` (see the module docstring).

    Returns:
        ``SurfaceDistances``; its arrays are empty for an empty mask (``defined`` is then False).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}.")
    p = binary_numpy(pred, "pred")
    r = binary_numpy(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got {p.shape} and {r.shape}.")
    if p.ndim not in (2, 3):
        raise ValueError(f"surface distances need 2D or 3D masks, got {p.ndim}D with shape {p.shape}.")
    sp = check_spacing(spacing, p.ndim)
    if not p.any() or not r.any():
        empty = np.zeros(0)
        return SurfaceDistances(empty, empty, empty, empty, convention)
    if convention == "deepmind":
        d_pr, d_rp, w_p, w_r = _corner_surfaces(p, r, sp)
    else:
        d_pr, d_rp, w_p, w_r = _voxel_surfaces(p, r, sp, "monai" if convention == "monai" else None)
        if convention == "monai":
            d_pr = d_pr.astype(np.float32).astype(np.float64)
            d_rp = d_rp.astype(np.float32).astype(np.float64)
    return SurfaceDistances(d_pr, d_rp, w_p, w_r, convention)


def _weighted_percentile(distances: np.ndarray, weights: np.ndarray, q: float) -> float:
    """DeepMind's robust percentile: smallest distance whose cumulative normalised weight reaches ``q`` percent."""
    order = np.lexsort((weights, distances))
    d, w = distances[order], weights[order]
    cumulative = np.cumsum(w) / np.sum(w)
    idx = int(np.searchsorted(cumulative, q / 100.0))
    return float(d[min(idx, len(d) - 1)])


def _mean(d: np.ndarray, w: np.ndarray) -> float:
    return float(np.sum(d * w) / np.sum(w))


def _percentile(sd: SurfaceDistances, q: float) -> float:
    if sd.convention == "deepmind":
        return max(
            _weighted_percentile(sd.pred_to_ref, sd.pred_weights, q),
            _weighted_percentile(sd.ref_to_pred, sd.ref_weights, q),
        )
    if sd.convention == "medpy":
        return float(np.percentile(np.concatenate([sd.pred_to_ref, sd.ref_to_pred]), q))
    return max(float(np.percentile(sd.pred_to_ref, q)), float(np.percentile(sd.ref_to_pred, q)))


def _nsd(sd: SurfaceDistances, tolerance: float) -> float:
    d_pr, d_rp = sd.pred_to_ref, sd.ref_to_pred
    if sd.convention == "monai":  # MONAI compares float32 distances with a float32 tolerance
        d_pr, d_rp, tolerance = d_pr.astype(np.float32), d_rp.astype(np.float32), np.float32(tolerance)
    within = np.sum(sd.pred_weights[d_pr <= tolerance]) + np.sum(sd.ref_weights[d_rp <= tolerance])
    return float(within / (np.sum(sd.pred_weights) + np.sum(sd.ref_weights)))


def surface_metrics(
    sd: SurfaceDistances,
    metrics: Sequence[str] = SURFACE_METRICS,
    nsd_tolerance: float = 1.0,
    percentile: float = 95.0,
) -> dict[str, float]:
    """Derives surface metrics from one ``compute_surface_distances`` result (definitions in the module docstring).

    Args:
        sd: the shared surface pass.
        metrics: names from ``SURFACE_METRICS``.
        nsd_tolerance: NSD tolerance in physical units (same units as the spacing), ``>= 0``.
        percentile: the percentile of ``hd95`` (kept under that name).

    Returns:
        ``{name: value}``; every value is NaN when either mask is empty.
    """
    unknown = [m for m in metrics if m not in SURFACE_METRICS]
    if unknown:
        raise ValueError(f"unknown surface metrics {unknown}; expected names from {SURFACE_METRICS}.")
    if not (math.isfinite(nsd_tolerance) and nsd_tolerance >= 0):
        raise ValueError(f"nsd_tolerance must be finite and >= 0, got {nsd_tolerance}.")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}.")
    if not sd.defined:
        return {m: math.nan for m in metrics}
    out: dict[str, float] = {}
    for m in metrics:
        if m == "hd":
            out[m] = float(max(sd.pred_to_ref.max(), sd.ref_to_pred.max()))
        elif m == "hd95":
            out[m] = _percentile(sd, percentile)
        elif m == "assd":
            total = np.sum(sd.pred_to_ref * sd.pred_weights) + np.sum(sd.ref_to_pred * sd.ref_weights)
            out[m] = float(total / (np.sum(sd.pred_weights) + np.sum(sd.ref_weights)))
        elif m == "masd":
            out[m] = 0.5 * (_mean(sd.pred_to_ref, sd.pred_weights) + _mean(sd.ref_to_pred, sd.ref_weights))
        elif m == "avg_hausdorff":
            out[m] = max(_mean(sd.pred_to_ref, sd.pred_weights), _mean(sd.ref_to_pred, sd.ref_weights))
        else:
            out[m] = _nsd(sd, nsd_tolerance)
    return out
