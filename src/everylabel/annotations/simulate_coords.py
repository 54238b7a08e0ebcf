"""Coordinate and image-level annotations simulated from a full label map: boxes, per-slice boxes, points, tags.

Boxes follow :class:`~everylabel.annotations.kinds.Annotations`: ``(N, 2 * ndim)`` rows ``(min..., max...)`` in
voxel indices of the array axes, max exclusive, so a tight box of a component equals its ``regionprops`` bbox.
Objects are connected components of each foreground class found with :func:`skimage.measure.label`; the
``connectivity`` argument is skimage's (1: faces only, i.e. 4-/6-neighbours; ``ndim`` (default): faces, edges and
corners, i.e. 8-/26-neighbours).
"""

from __future__ import annotations

import numpy as np

from everylabel.annotations.kinds import Annotations
from everylabel.annotations.simulate_common import (
    RngLike,
    check_connectivity,
    check_labels,
    components,
    deepest_voxel,
    make_generator,
    simulation_record,
)

PLACEMENTS = ("centroid", "interior", "random")


def _check_nonnegative(**values) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _loosen(lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator, margin: float,
            margin_fraction: float, jitter: float, jitter_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Grow a tight box by a margin, move each side by a random integer jitter, clip to the image."""
    extent = hi - lo
    grow = margin + margin_fraction * extent
    lo = np.floor(lo - grow)
    hi = np.ceil(hi + grow)
    amount = np.round(jitter + jitter_fraction * extent).astype(np.int64)
    if np.any(amount > 0):
        lo = lo + rng.integers(-amount, amount + 1)
        hi = hi + rng.integers(-amount, amount + 1)
    size = np.asarray(shape)
    lo = np.clip(lo, 0, size - 1)
    hi = np.clip(np.maximum(hi, lo + 1), 1, size)
    return lo, hi


def simulate_boxes(labels: np.ndarray, rng: RngLike = None, *, connectivity: int | None = None,
                   per_component: bool = True, min_size: int = 1, margin: float = 0, margin_fraction: float = 0.0,
                   jitter: float = 0, jitter_fraction: float = 0.0, classes: list[int] | None = None,
                   slice_axis: int | None = None) -> Annotations:
    """Bounding boxes of every object: tight by default, loose with a margin and/or a random jitter of each side.

    With ``slice_axis`` (3D labels) the objects are the connected components of every 2D slice along that axis and
    each gets its own tight 2D box, stored as a 3D box one voxel thick along the axis: an annotator drawing a box
    on every slice (the "tight 2D boxes" of Redekop & Chernyavskiy, DALI 2021; compare
    :func:`simulate_slice_boxes`, where every slice gets the in-plane extent of one 3D box).

    A loose box grows each side by ``margin + margin_fraction * extent`` voxels (``extent`` = tight box size
    along that axis; rounded outward), then moves each side independently by an integer drawn uniformly from
    ``[-j, j]`` with ``j = round(jitter + jitter_fraction * extent)``, then is clipped to the image (keeping at
    least one voxel). With ``jitter <= margin`` the box still contains the object; larger jitter can cut it.

    Args:
        labels: integer label map ``S`` (2D or 3D), classes 0..N-1, 0 = background.
        rng: Generator, seed or None (only used for jitter).
        connectivity: skimage connectivity of objects (1..ndim; default ndim = 8-/26-neighbours).
        per_component: one box per connected component; False gives one box per class around all its voxels.
        min_size: components with fewer voxels are ignored.
        margin: voxels added on every side.
        margin_fraction: fraction of the box extent added on every side.
        jitter: maximum random displacement of each side, in voxels.
        jitter_fraction: maximum random displacement of each side, as a fraction of the extent.
        classes: foreground classes to box (default every class present).
        slice_axis: box every 2D slice along this axis separately (3D labels only); connectivity is then 2D.

    Returns:
        Annotations with ``boxes`` float64 ``(N, 2 * ndim)`` and ``box_labels`` ``(N,)``.
    """
    labels = check_labels(labels)
    ndim = labels.ndim
    if slice_axis is not None:
        if ndim != 3 or slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis={slice_axis} needs a 3D label map and an axis in 0..2, got shape "
                             f"{labels.shape}")
        gen, rng_record = make_generator(rng)
        rows, box_labels = [], []
        for k in range(labels.shape[slice_axis]):
            plane = np.take(labels, k, axis=slice_axis)
            if not plane.any():
                continue
            a = simulate_boxes(plane, gen, connectivity=connectivity, per_component=per_component, min_size=min_size,
                               margin=margin, margin_fraction=margin_fraction, jitter=jitter,
                               jitter_fraction=jitter_fraction, classes=classes)
            for b, cls in zip(a.boxes, a.box_labels):
                lo, hi = list(b[:2]), list(b[2:])
                lo.insert(slice_axis, float(k))
                hi.insert(slice_axis, float(k + 1))
                rows.append(lo + hi)
                box_labels.append(int(cls))
        params = {"connectivity": connectivity, "per_component": per_component, "min_size": min_size,
                  "margin": margin, "margin_fraction": margin_fraction, "jitter": jitter,
                  "jitter_fraction": jitter_fraction, "classes": classes, "slice_axis": slice_axis}
        return Annotations(boxes=np.asarray(rows, dtype=np.float64).reshape(-1, 6),
                           box_labels=np.asarray(box_labels, dtype=np.int64),
                           extra={"simulation": simulation_record("boxes", rng_record, params)})
    connectivity = check_connectivity(connectivity, ndim)
    _check_nonnegative(margin=margin, margin_fraction=margin_fraction, jitter=jitter, jitter_fraction=jitter_fraction)
    gen, rng_record = make_generator(rng)
    params = {"connectivity": connectivity, "per_component": per_component, "min_size": min_size, "margin": margin,
              "margin_fraction": margin_fraction, "jitter": jitter, "jitter_fraction": jitter_fraction,
              "classes": classes}
    if per_component:
        tight = [(cls, box) for cls, _, box in components(labels, connectivity, min_size, classes)]
    else:
        from scipy import ndimage

        tight = []
        for cls in sorted(set(np.unique(labels).tolist()) - {0}):
            if (classes is None or cls in classes) and int((labels == cls).sum()) >= min_size:
                tight.append((cls, ndimage.find_objects((labels == cls).astype(np.int32))[0]))
    rows, box_labels = [], []
    for cls, box in tight:
        lo = np.asarray([s.start for s in box], dtype=np.float64)
        hi = np.asarray([s.stop for s in box], dtype=np.float64)
        lo, hi = _loosen(lo, hi, labels.shape, gen, margin, margin_fraction, jitter, jitter_fraction)
        rows.append(np.concatenate([lo, hi]))
        box_labels.append(cls)
    boxes = np.asarray(rows, dtype=np.float64).reshape(-1, 2 * ndim)
    return Annotations(boxes=boxes, box_labels=np.asarray(box_labels, dtype=np.int64),
                       extra={"simulation": simulation_record("boxes", rng_record, params)})


def simulate_slice_boxes(labels: np.ndarray, rng: RngLike = None, *, axis: int = 0, connectivity: int | None = None,
                         min_size: int = 1, margin: float = 0, margin_fraction: float = 0.0, jitter: float = 0,
                         jitter_fraction: float = 0.0, classes: list[int] | None = None) -> Annotations:
    """Per-slice 2D boxes made from each object's 3D box, as in Redekop & Chernyavskiy (2021).

    Redekop, E., Chernyavskiy, A., "Medical image segmentation with imperfect 3D bounding boxes", DALI @ MICCAI
    2021: an annotator draws one 3D box per object; every slice the object crosses then gets the 3D box's in-plane
    extent as its 2D box, so the 2D boxes are not tight on most slices. Each 3D box may be loosened first exactly
    as in :func:`simulate_boxes` (in-plane sides only). One 2D box is emitted per slice along ``axis`` within the
    object's extent along ``axis``, stored as a 3D box one voxel thick along ``axis``.

    Args:
        labels: integer 3D label map ``S``.
        rng: Generator, seed or None (only used for jitter).
        axis: slice axis (array axis index, 0..2).
        connectivity, min_size, margin, margin_fraction, jitter, jitter_fraction, classes: see
            :func:`simulate_boxes`.

    Returns:
        Annotations with ``boxes`` ``(N, 6)`` (thickness 1 along ``axis``) and ``box_labels``.
    """
    labels = check_labels(labels)
    if labels.ndim != 3:
        raise ValueError(f"slice boxes need a 3D label map, got shape {labels.shape}")
    if axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"axis must be 0, 1 or 2 for a 3D label map, got {axis}")
    axis = axis % 3
    connectivity = check_connectivity(connectivity, 3)
    _check_nonnegative(margin=margin, margin_fraction=margin_fraction, jitter=jitter, jitter_fraction=jitter_fraction)
    gen, rng_record = make_generator(rng)
    params = {"axis": axis, "connectivity": connectivity, "min_size": min_size, "margin": margin,
              "margin_fraction": margin_fraction, "jitter": jitter, "jitter_fraction": jitter_fraction,
              "classes": classes}
    rows, box_labels, objects = [], [], 0
    for cls, _, box in components(labels, connectivity, min_size, classes):
        tight_lo = np.asarray([s.start for s in box], dtype=np.float64)
        tight_hi = np.asarray([s.stop for s in box], dtype=np.float64)
        lo, hi = _loosen(tight_lo, tight_hi, labels.shape, gen, margin, margin_fraction, jitter, jitter_fraction)
        objects += 1
        for s in range(int(tight_lo[axis]), int(tight_hi[axis])):
            lo[axis], hi[axis] = s, s + 1
            rows.append(np.concatenate([lo, hi]))
            box_labels.append(cls)
    boxes = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    return Annotations(boxes=boxes, box_labels=np.asarray(box_labels, dtype=np.int64),
                       extra={"simulation": simulation_record("slice_boxes", rng_record, params,
                                                              {"objects": objects})})


def simulate_tags(labels: np.ndarray, rng: RngLike = None, *, num_classes: int | None = None) -> Annotations:
    """Image-level tags: 1 for every class with at least one voxel (background included), 0 for the others.

    Args:
        labels: integer label map ``S``.
        rng: unused (accepted so every simulator has the same signature).
        num_classes: number of classes including background (default ``labels.max() + 1``).

    Returns:
        Annotations with ``tags`` int64 ``(num_classes,)``.
    """
    labels = check_labels(labels)
    top = int(labels.max()) + 1 if labels.size else 1
    num_classes = top if num_classes is None else int(num_classes)
    if num_classes < top:
        raise ValueError(f"num_classes={num_classes} but the label map holds class {top - 1}")
    _, rng_record = make_generator(rng)
    tags = (np.bincount(labels.ravel(), minlength=num_classes) > 0).astype(np.int64)
    return Annotations(tags=tags, extra={"simulation": simulation_record("tags", rng_record,
                                                                         {"num_classes": num_classes})})


def _choose(candidates: np.ndarray, count: int, gen: np.random.Generator) -> np.ndarray:
    """``count`` rows of ``candidates`` (K, ndim) drawn without replacement (all of them when K <= count)."""
    if count <= 0 or len(candidates) == 0:
        return candidates[:0]
    if len(candidates) <= count:
        return candidates
    return candidates[np.sort(gen.choice(len(candidates), size=count, replace=False))]


def _deep_candidates(mask: np.ndarray, min_distance: float) -> np.ndarray:
    """Voxels of ``mask`` at distance >= ``min_distance`` from its boundary (else its deepest voxels), (K, ndim)."""
    if min_distance <= 0:
        return np.argwhere(mask)
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim]
    keep = dist >= min_distance
    return np.argwhere(keep if keep.any() else (dist == dist.max()) & mask)


def simulate_points(labels: np.ndarray, rng: RngLike = None, *, points_per_object: int = 1,
                    background_points: int = 0, placement: str = "centroid", connectivity: int | None = None,
                    min_size: int = 1, boundary_distance: float = 0.0, background_distance: float = 0.0,
                    classes: list[int] | None = None) -> Annotations:
    """Clicks: ``points_per_object`` points in every object plus ``background_points`` background points.

    The first point of an object is placed by ``placement``: ``"centroid"`` (the rounded centroid, snapped to the
    object voxel nearest to it when the centroid lies outside a non-convex object), ``"interior"`` (the voxel
    farthest from the object's boundary) or ``"random"``; further points are random object voxels. Random points
    keep at least ``boundary_distance`` voxels from the object boundary (Euclidean; the deepest voxels when no voxel
    is that deep). Background points are random background voxels at least ``background_distance`` voxels from
    any foreground voxel (the farthest ones when none is that far). Points never repeat.

    Args:
        labels: integer label map ``S`` (2D or 3D).
        rng: Generator, seed or None.
        points_per_object: points per connected component (>= 0).
        background_points: points in the background (class 0).
        placement: ``"centroid"``, ``"interior"`` or ``"random"``.
        connectivity: skimage connectivity of objects (default ndim).
        min_size: components with fewer voxels get no point.
        boundary_distance: minimum distance of random object points from the object boundary.
        background_distance: minimum distance of background points from the foreground.
        classes: foreground classes to click (default all present).

    Returns:
        Annotations with ``points`` float64 ``(N, ndim)`` (integer voxel coordinates) and ``point_labels``.
    """
    labels = check_labels(labels)
    ndim = labels.ndim
    connectivity = check_connectivity(connectivity, ndim)
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    _check_nonnegative(points_per_object=points_per_object, background_points=background_points,
                       boundary_distance=boundary_distance, background_distance=background_distance)
    gen, rng_record = make_generator(rng)
    params = {"points_per_object": points_per_object, "background_points": background_points,
              "placement": placement, "connectivity": connectivity, "min_size": min_size,
              "boundary_distance": boundary_distance, "background_distance": background_distance,
              "classes": classes}
    points, point_labels = [], []
    for cls, mask, box in components(labels, connectivity, min_size, classes):
        if points_per_object == 0:
            continue
        offset = np.asarray([s.start for s in box])
        chosen = np.zeros((0, ndim), dtype=np.int64)
        if placement == "centroid":
            voxels = np.argwhere(mask)
            centre = np.round(voxels.mean(0)).astype(np.int64)
            if not mask[tuple(centre)]:
                centre = voxels[np.argmin(((voxels - voxels.mean(0)) ** 2).sum(1))]
            chosen = centre[None]
        elif placement == "interior":
            chosen = deepest_voxel(mask)[None]
        candidates = _deep_candidates(mask, boundary_distance)
        if len(chosen):
            candidates = candidates[np.any(candidates != chosen[0], axis=1)]
        chosen = np.concatenate([chosen, _choose(candidates, points_per_object - len(chosen), gen)])
        points.append(chosen + offset)
        point_labels += [cls] * len(chosen)
    if background_points:
        background = labels == 0
        if background.any():
            if background_distance > 0 and not background.all():
                from scipy import ndimage

                dist = ndimage.distance_transform_edt(background)
                keep = dist >= background_distance
                candidates = np.argwhere(keep if keep.any() else dist == dist.max())
            else:
                candidates = np.argwhere(background)
            chosen = _choose(candidates, background_points, gen)
            points.append(chosen)
            point_labels += [0] * len(chosen)
    coords = np.concatenate(points).astype(np.float64) if points else np.zeros((0, ndim), dtype=np.float64)
    return Annotations(points=coords, point_labels=np.asarray(point_labels, dtype=np.int64),
                       extra={"simulation": simulation_record("points", rng_record, params)})
