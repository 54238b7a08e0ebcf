"""Scribbles simulated from a full label map: strokes along the skeleton of every object and of the background.

Scribble benchmarks derive synthetic scribbles from full masks (e.g. Gotkowski et al., "Embarrassingly simple
scribble supervision for 3D medical segmentation", arXiv:2403.12834, 2024, which draws them slice by slice); here
strokes follow the medial axis (skeleton) of each region, so they stay inside it and away from its boundary.
Regions are skeletonised with :func:`skimage.morphology.skeletonize` (Zhang's thinning in 2D, Lee's in 3D).
Lee's 3D thinning can erase blob-like objects entirely (a region with an empty skeleton gets its deepest voxel),
so for 3D ``slice_axis`` (strokes drawn on every slice, as annotators do) is often the better model.
"""

from __future__ import annotations

import itertools

import numpy as np

from everylabel.annotations.kinds import Annotations, Kind
from everylabel.annotations.simulate_common import (
    RngLike,
    ball,
    check_connectivity,
    check_labels,
    components,
    deepest_voxel,
    make_generator,
    simulation_record,
)


def _skeleton(mask: np.ndarray, slice_axis: int | None) -> np.ndarray:
    """Skeleton of ``mask`` (per 2D slice along ``slice_axis`` when given); the deepest voxel if it is empty."""
    from skimage.morphology import skeletonize

    if slice_axis is None:
        skel = skeletonize(mask)
    else:
        skel = np.zeros_like(mask)
        for s in range(mask.shape[slice_axis]):
            index = (slice(None),) * slice_axis + (s,)
            if mask[index].any():
                skel[index] = skeletonize(mask[index])
    skel &= mask
    if not skel.any() and mask.any():
        skel[tuple(deepest_voxel(mask))] = True
    return skel


def _skeleton_graph(skel: np.ndarray, slice_axis: int | None):
    """Sparse adjacency of skeleton voxels (edge weight = Euclidean step), neighbours within a slice when
    ``slice_axis`` is given; returns ``(coords (K, ndim), graph (K, K))``."""
    from scipy.sparse import coo_matrix

    coords = np.argwhere(skel)
    index = np.full(skel.shape, -1, dtype=np.int64)
    index[tuple(coords.T)] = np.arange(len(coords))
    rows, cols, weights = [], [], []
    for offset in itertools.product((-1, 0, 1), repeat=skel.ndim):
        offset = np.asarray(offset)
        if not offset.any() or (slice_axis is not None and offset[slice_axis]):
            continue
        target = coords + offset
        inside = np.all((target >= 0) & (target < np.asarray(skel.shape)), axis=1)
        neighbour = np.full(len(coords), -1, dtype=np.int64)
        neighbour[inside] = index[tuple(target[inside].T)]
        hit = neighbour >= 0
        rows.append(np.flatnonzero(hit))
        cols.append(neighbour[hit])
        weights.append(np.full(int(hit.sum()), float(np.linalg.norm(offset))))
    graph = coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(len(coords), len(coords))).tocsr()
    return coords, graph


def _keep_pieces(skel: np.ndarray, fraction: float, pieces: int, gen: np.random.Generator,
                 slice_axis: int | None) -> np.ndarray:
    """Keep about ``fraction`` of the skeleton voxels as ``pieces`` random contiguous pieces.

    Each piece starts at a random not-yet-kept skeleton voxel and takes the voxels geodesically nearest to it
    along the skeleton (a contiguous stretch, growing both ways and across junctions), until its share of the
    budget is used or its skeleton branch is exhausted; new pieces start until the budget is spent.
    """
    if fraction >= 1.0:
        return skel
    from scipy.sparse.csgraph import dijkstra

    coords, graph = _skeleton_graph(skel, slice_axis)
    target = max(1, round(fraction * len(coords)))
    budget = int(np.ceil(target / pieces))
    taken = np.zeros(len(coords), dtype=bool)
    while taken.sum() < target:
        seed = int(gen.choice(np.flatnonzero(~taken)))
        dist = dijkstra(graph, directed=False, indices=seed)
        order = np.argsort(dist, kind="stable")
        order = order[np.isfinite(dist[order]) & ~taken[order]]
        taken[order[:min(budget, target - int(taken.sum()))]] = True
    out = np.zeros_like(skel)
    out[tuple(coords[taken].T)] = True
    return out


def _brush(stroke: np.ndarray, region: np.ndarray, radius: float) -> np.ndarray:
    """``stroke`` dilated by a Euclidean ball of ``radius`` voxels, kept inside ``region``."""
    if radius < 1:
        return stroke & region
    from scipy import ndimage

    return ndimage.binary_dilation(stroke, structure=ball(radius, stroke.ndim)) & region


def _crop(box: tuple[slice, ...], shape: tuple[int, ...], pad: int) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box, shape))


def simulate_scribbles(labels: np.ndarray, rng: RngLike = None, *, fraction: float = 1.0, pieces: int = 1,
                       brush_radius: float = 0.0, background: bool = True, background_margin: float = 2.0,
                       background_fraction: float | None = None,
                       slice_axis: int | None = None, connectivity: int | None = None, min_size: int = 1,
                       classes: list[int] | None = None) -> Annotations:
    """Scribbles along the skeleton of every object and of the background, as a sparse label map.

    Every connected component of every foreground class gets the skeleton of its mask; the background gets the
    skeleton of the background voxels farther than ``background_margin`` voxels from any foreground voxel (all
    background voxels when none is that far), so background strokes run between objects, away from their
    boundaries. Of each skeleton only ``fraction`` of the voxels is kept, as ``pieces`` random contiguous pieces.
    Strokes are then widened by a ball of ``brush_radius`` voxels and cut back to their object (or background
    region), so every annotated voxel carries its true class.

    Args:
        labels: integer label map ``S`` (2D or 3D).
        rng: Generator, seed or None (used when ``fraction < 1``).
        fraction: share of each skeleton's voxels kept, in (0, 1].
        pieces: number of contiguous pieces per skeleton (>= 1).
        brush_radius: stroke half-width in voxels (0: one-voxel strokes).
        background: also scribble the background (class 0).
        background_margin: minimum distance of the background skeleton from the foreground, in voxels.
        background_fraction: share of the background skeleton kept (default ``fraction``); the background
            skeleton is usually much longer than the objects' (in 3D it can be a medial surface).
        slice_axis: for 3D, skeletonise each slice along this axis (strokes drawn slice by slice) instead of the
            3D skeleton; pieces then stay within one slice.
        connectivity: skimage connectivity of objects (default ndim).
        min_size: components with fewer voxels are not scribbled.
        classes: foreground classes to scribble (default all present).

    Returns:
        Annotations with ``labels`` int64 ``S`` (0 where unannotated), ``valid`` (annotated voxels) and
        ``dense_kind`` SCRIBBLE.
    """
    labels = check_labels(labels)
    ndim = labels.ndim
    connectivity = check_connectivity(connectivity, ndim)
    background_fraction = fraction if background_fraction is None else background_fraction
    if not (0 < fraction <= 1 and 0 < background_fraction <= 1):
        raise ValueError(f"fraction and background_fraction must be in (0, 1], got {fraction}, {background_fraction}")
    if int(pieces) != pieces or pieces < 1:
        raise ValueError(f"pieces must be an integer >= 1, got {pieces}")
    if brush_radius < 0 or background_margin < 0:
        raise ValueError(f"brush_radius and background_margin must be >= 0, got {brush_radius}, "
                         f"{background_margin}")
    if slice_axis is not None and (ndim != 3 or slice_axis not in (0, 1, 2)):
        raise ValueError(f"slice_axis must be 0, 1 or 2 for a 3D label map (None for 2D), got {slice_axis} for "
                         f"shape {labels.shape}")
    gen, rng_record = make_generator(rng)
    params = {"fraction": fraction, "pieces": int(pieces), "brush_radius": brush_radius, "background": background,
              "background_margin": background_margin, "background_fraction": background_fraction,
              "slice_axis": slice_axis, "connectivity": connectivity,
              "min_size": min_size, "classes": classes}
    out = np.zeros(labels.shape, dtype=np.int64)
    valid = np.zeros(labels.shape, dtype=bool)
    pad = int(np.ceil(brush_radius)) + 1
    objects = 0
    for cls, mask, box in components(labels, connectivity, min_size, classes):
        crop = _crop(box, labels.shape, pad)
        region = np.zeros([c.stop - c.start for c in crop], dtype=bool)
        region[tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(box, crop))] = mask
        stroke = _brush(_keep_pieces(_skeleton(region, slice_axis), fraction, int(pieces), gen, slice_axis),
                        region, brush_radius)
        out[crop][stroke] = cls
        valid[crop] |= stroke
        objects += 1
    if background and (labels == 0).any():
        region = labels == 0
        if background_margin > 0 and not region.all():
            from scipy import ndimage

            far = ndimage.distance_transform_edt(region) > background_margin
            region = far if far.any() else region
        stroke = _brush(_keep_pieces(_skeleton(region, slice_axis), background_fraction, int(pieces), gen,
                                     slice_axis), region, brush_radius)
        out[stroke] = 0
        valid |= stroke
    return Annotations(labels=out, valid=valid, dense_kind=Kind.SCRIBBLE,
                       extra={"simulation": simulation_record("scribbles", rng_record, params,
                                                              {"objects": objects,
                                                               "annotated_voxels": int(valid.sum())})})
