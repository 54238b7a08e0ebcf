"""Noisy masks: unbiased elastic errors and biased (systematic) errors, after Vorontsov & Kadoury (2021).

Vorontsov, E., Kadoury, S., "Label noise in segmentation networks: mitigation must deal with bias", DALI @ MICCAI
2021 (arXiv:2107.02189). Unbiased noise warps the label map with a smooth random B-spline deformation (3x3 control
grid, 3x3x3 in 3D); biased noise changes every annotation the same way: a constant shift, erosion or dilation
by a fixed number of voxels, or a one-sided crop. Their finding, which these simulators let one reproduce: networks
tolerate unbiased errors far better than biased ones.
"""

from __future__ import annotations

import numpy as np

from everylabel.annotations.kinds import Annotations, Kind
from everylabel.annotations.simulate_common import (
    RngLike,
    check_connectivity,
    check_labels,
    components,
    foreground_classes,
    make_generator,
    simulation_record,
)

CROP_SIDES = ("min", "max", "random")
DILATION_TARGETS = ("background", "any")


def elastic_control_points(ndim: int, sigma: float, rng: RngLike = None, grid: int = 3) -> np.ndarray:
    """Random control-point displacements ``(ndim, grid, ..., grid)``, each ~ N(0, sigma^2) voxels."""
    gen, _ = make_generator(rng)
    return gen.normal(0.0, sigma, size=(ndim,) + (grid,) * ndim)


def _axis_weights(size: int, grid: int) -> np.ndarray:
    """``(size, grid)`` cubic-spline interpolation weights from ``grid`` control points spanning ``size`` voxels.

    Column ``j`` is the order-3 spline interpolation (mirror boundary) of the unit vector ``e_j``, sampled at
    ``linspace(0, grid - 1, size)``: control points sit on the first voxel, the last voxel and evenly between,
    exactly as ``scipy.ndimage.zoom(control, size / grid, order=3, mode="mirror", grid_mode=False)`` places them.
    """
    from scipy import ndimage

    if size == 1:
        return np.eye(grid)[:1]
    t = np.linspace(0.0, grid - 1.0, size)
    return np.stack([ndimage.map_coordinates(np.eye(grid)[j], [t], order=3, mode="mirror")
                     for j in range(grid)], axis=1)


def _field(control: np.ndarray, weights: list[np.ndarray], rows: slice) -> np.ndarray:
    """Displacement ``(ndim, rows, *S[1:])`` of the tensor-product spline on a slab of the first axis."""
    w0 = weights[0][rows]
    if len(weights) == 2:
        return np.einsum("cij,yi,xj->cyx", control, w0, weights[1])
    partial = np.einsum("cijk,yi->cyjk", control, w0)
    partial = np.einsum("cyjk,xj->cyxk", partial, weights[1])
    return np.einsum("cyxk,zk->cyxz", partial, weights[2])


def elastic_displacement(shape: tuple[int, ...], control: np.ndarray) -> np.ndarray:
    """Dense displacement field ``(ndim, *shape)`` (voxels) interpolated from control points with cubic splines.

    Args:
        shape: spatial shape ``S``.
        control: ``(ndim, g, ..., g)`` control-point displacements (see :func:`elastic_control_points`).
    """
    ndim, grid = control.shape[0], control.shape[1]
    if control.shape != (len(shape),) + (grid,) * len(shape) or ndim not in (2, 3):
        raise ValueError(f"control must have shape (ndim, g, ..., g) with ndim = len(shape) = 2 or 3, got "
                         f"{control.shape} for shape {tuple(shape)}")
    weights = [_axis_weights(n, grid) for n in shape]
    return _field(control, weights, slice(None))


def warp_labels(labels: np.ndarray, control: np.ndarray, slab: int = 32) -> np.ndarray:
    """Nearest-neighbour backward warp: ``out[p] = labels[round(p + u(p))]`` (clamped to the image), with ``u``
    the spline field of ``control``; computed in slabs of the first axis to bound memory."""
    shape = labels.shape
    grid = control.shape[1]
    weights = [_axis_weights(n, grid) for n in shape]
    out = np.empty_like(labels)
    rest = np.indices(shape[1:])
    for start in range(0, shape[0], slab):
        rows = slice(start, min(start + slab, shape[0]))
        u = _field(control, weights, rows)
        grids = [np.arange(rows.start, rows.stop).reshape((-1,) + (1,) * (len(shape) - 1))]
        grids += [r[None] for r in rest]
        source = tuple(np.clip(np.rint(g + u[a]), 0, shape[a] - 1).astype(np.intp) for a, g in enumerate(grids))
        out[rows] = labels[source]
    return out


def simulate_elastic(labels: np.ndarray, rng: RngLike = None, *, sigma: float = 5.0, grid: int = 3) -> Annotations:
    """Unbiased noise: warp the label map with a smooth random B-spline deformation (Vorontsov & Kadoury, 2021).

    A ``grid^ndim`` lattice of control points spans the image (corners, centre, ...); each gets a displacement
    drawn per axis from N(0, sigma^2) voxels; the dense field is their cubic-spline interpolation
    (:func:`elastic_displacement`) and the label map is resampled with nearest neighbour (:func:`warp_labels`).
    The per-axis displacement equals the N(0, sigma^2) draw at the control points and is smaller in between: with
    the default 3-point grid its root-mean-square over the image is 0.80 sigma in 2D and 0.72 sigma in 3D (each
    axis contributes a factor 0.89), so the mean displacement length is about 0.80 * sqrt(pi / 2) * sigma = sigma
    in 2D.

    Args:
        labels: integer label map ``S`` (2D or 3D).
        rng: Generator, seed or None.
        sigma: standard deviation of control-point displacements, in voxels (>= 0).
        grid: control points per axis (>= 2; 3 as in the paper).

    Returns:
        Annotations with the warped ``labels`` and ``dense_kind`` MASK.
    """
    labels = check_labels(labels)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 voxels, got {sigma}")
    if int(grid) != grid or grid < 2:
        raise ValueError(f"grid must be an integer >= 2 (control points per axis), got {grid}")
    gen, rng_record = make_generator(rng)
    control = elastic_control_points(labels.ndim, sigma, gen, int(grid))
    return Annotations(labels=warp_labels(labels, control), dense_kind=Kind.MASK,
                       extra={"simulation": simulation_record("elastic", rng_record,
                                                              {"sigma": sigma, "grid": int(grid)})})


def simulate_shift(labels: np.ndarray, rng: RngLike = None, *, distance: int = 2, axis: int | None = 0,
                   random_sign: bool = False) -> Annotations:
    """Biased noise: the whole label map moved by ``distance`` voxels along ``axis`` (vacated voxels -> 0).

    Args:
        labels: integer label map ``S``.
        rng: Generator, seed or None (used when ``axis`` is None or ``random_sign``).
        distance: signed shift in voxels: content moves towards higher indices when positive.
        axis: array axis of the shift; None draws one uniformly.
        random_sign: flip the direction with probability 1/2.

    Returns:
        Annotations with the shifted ``labels``, ``dense_kind`` MASK; the axis and signed distance used are in
        ``extra["simulation"]["result"]``.
    """
    labels = check_labels(labels)
    if int(distance) != distance:
        raise ValueError(f"distance must be an integer number of voxels, got {distance}")
    if axis is not None and not 0 <= axis < labels.ndim:
        raise ValueError(f"axis must be 0..{labels.ndim - 1} or None (random), got {axis}")
    gen, rng_record = make_generator(rng)
    used_axis = int(gen.integers(labels.ndim)) if axis is None else int(axis)
    used = int(distance) * (-1 if random_sign and gen.random() < 0.5 else 1)
    out = np.zeros_like(labels)
    n = labels.shape[used_axis]
    if abs(used) < n:
        src = [slice(None)] * labels.ndim
        dst = [slice(None)] * labels.ndim
        src[used_axis] = slice(max(-used, 0), n - max(used, 0))
        dst[used_axis] = slice(max(used, 0), n - max(-used, 0))
        out[tuple(dst)] = labels[tuple(src)]
    params = {"distance": int(distance), "axis": axis, "random_sign": random_sign}
    return Annotations(labels=out, dense_kind=Kind.MASK,
                       extra={"simulation": simulation_record("shift", rng_record, params,
                                                              {"axis": used_axis, "distance": used})})


def _check_radius(radius: float) -> None:
    if radius < 0:
        raise ValueError(f"radius must be >= 0 voxels, got {radius}")


def simulate_erosion(labels: np.ndarray, rng: RngLike = None, *, radius: float = 1.0,
                     classes: list[int] | None = None) -> Annotations:
    """Biased noise (under-segmentation): every foreground class eroded by a Euclidean ball of ``radius`` voxels.

    A voxel of class ``c`` is kept when its distance to the nearest voxel of another class exceeds ``radius``
    (the image border does not erode: objects may continue beyond it); removed voxels become background.

    Args:
        labels: integer label map ``S``.
        rng: unused (same signature as every simulator).
        radius: erosion radius in voxels.
        classes: classes to erode (default every foreground class present).

    Returns:
        Annotations with the eroded ``labels`` and ``dense_kind`` MASK.
    """
    from scipy import ndimage

    labels = check_labels(labels)
    _check_radius(radius)
    _, rng_record = make_generator(rng)
    out = labels.copy()
    for cls in foreground_classes(labels, classes):
        mask = labels == cls
        if not mask.all():
            out[mask & (ndimage.distance_transform_edt(mask) <= radius)] = 0
    return Annotations(labels=out, dense_kind=Kind.MASK,
                       extra={"simulation": simulation_record("erode", rng_record,
                                                              {"radius": radius, "classes": classes})})


def simulate_dilation(labels: np.ndarray, rng: RngLike = None, *, radius: float = 1.0,
                      classes: list[int] | None = None, into: str = "background") -> Annotations:
    """Biased noise (over-segmentation): every foreground class dilated by a Euclidean ball of ``radius`` voxels.

    Each class grows from its original extent, in class order; it claims background voxels within ``radius``
    (``into="background"``) or any voxel of another class (``into="any"``, later classes win overlaps).

    Args:
        labels: integer label map ``S``.
        rng: unused (same signature as every simulator).
        radius: dilation radius in voxels.
        classes: classes to dilate (default every foreground class present).
        into: ``"background"`` or ``"any"``.

    Returns:
        Annotations with the dilated ``labels`` and ``dense_kind`` MASK.
    """
    from scipy import ndimage

    labels = check_labels(labels)
    _check_radius(radius)
    if into not in DILATION_TARGETS:
        raise ValueError(f"into must be one of {DILATION_TARGETS}, got {into!r}")
    _, rng_record = make_generator(rng)
    out = labels.copy()
    for cls in foreground_classes(labels, classes):
        mask = labels == cls
        grown = ~mask & (ndimage.distance_transform_edt(~mask) <= radius)
        out[grown & (labels == 0) if into == "background" else grown] = cls
    return Annotations(labels=out, dense_kind=Kind.MASK,
                       extra={"simulation": simulation_record("dilate", rng_record,
                                                              {"radius": radius, "classes": classes,
                                                               "into": into})})


def simulate_crop(labels: np.ndarray, rng: RngLike = None, *, fraction: float = 0.25, axis: int = 0,
                  side: str = "max", connectivity: int | None = None, min_size: int = 1,
                  classes: list[int] | None = None) -> Annotations:
    """Biased noise: every object loses the part beyond a plane perpendicular to ``axis``.

    For each connected component with extent ``[lo, hi)`` along ``axis``, the last (``side="max"``) or first
    (``"min"``) ``round(fraction * (hi - lo))`` planes of the object become background; ``"random"`` picks the
    side per object.

    Args:
        labels: integer label map ``S``.
        rng: Generator, seed or None (used by ``side="random"``).
        fraction: share of each object's extent removed, in [0, 1).
        axis: array axis perpendicular to the cutting plane.
        side: ``"min"``, ``"max"`` or ``"random"``.
        connectivity: skimage connectivity of objects (default ndim).
        min_size: smaller components are left untouched.
        classes: classes to crop (default every foreground class present).

    Returns:
        Annotations with the cropped ``labels`` and ``dense_kind`` MASK; the side used per object is in
        ``extra["simulation"]["result"]["sides"]``.
    """
    labels = check_labels(labels)
    connectivity = check_connectivity(connectivity, labels.ndim)
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if not 0 <= axis < labels.ndim:
        raise ValueError(f"axis must be 0..{labels.ndim - 1}, got {axis}")
    if side not in CROP_SIDES:
        raise ValueError(f"side must be one of {CROP_SIDES}, got {side!r}")
    gen, rng_record = make_generator(rng)
    out = labels.copy()
    sides = []
    for _, mask, box in components(labels, connectivity, min_size, classes):
        cut = round(fraction * mask.shape[axis])
        used = side if side != "random" else ("min", "max")[int(gen.integers(2))]
        sides.append(used)
        index = [slice(None)] * labels.ndim
        index[axis] = slice(mask.shape[axis] - cut, None) if used == "max" else slice(0, cut)
        beyond = np.zeros_like(mask)
        beyond[tuple(index)] = True
        out[box][mask & beyond] = 0
    params = {"fraction": fraction, "axis": axis, "side": side, "connectivity": connectivity, "min_size": min_size,
              "classes": classes}
    return Annotations(labels=out, dense_kind=Kind.MASK,
                       extra={"simulation": simulation_record("crop", rng_record, params, {"sides": sides})})
