"""Dense annotations derived from a full label map: the full mask itself, no annotation, class-partial masks and
sparse (few-plane) masks."""

from __future__ import annotations

import numpy as np

from everylabel.annotations.kinds import Annotations, Kind
from everylabel.annotations.simulate_common import RngLike, check_labels, make_generator, simulation_record

SLICE_PLACEMENTS = ("even", "random")
SLICE_EXTENTS = ("image", "foreground")


def simulate_mask(labels: np.ndarray, rng: RngLike = None) -> Annotations:
    """The full mask, unchanged (a protocol's "keep the ground truth" entry).

    Returns:
        Annotations with ``labels`` and ``dense_kind`` MASK.
    """
    labels = check_labels(labels)
    _, rng_record = make_generator(rng)
    return Annotations(labels=labels.copy(), dense_kind=Kind.MASK,
                       extra={"simulation": simulation_record("mask", rng_record, {})})


def simulate_unlabelled(labels: np.ndarray, rng: RngLike = None) -> Annotations:
    """No annotation at all (the case becomes unlabelled, e.g. for semi-supervised learning).

    Returns:
        Empty Annotations (``is_unlabelled`` is True).
    """
    check_labels(labels)
    _, rng_record = make_generator(rng)
    return Annotations(extra={"simulation": simulation_record("unlabelled", rng_record, {})})


def simulate_partial(labels: np.ndarray, rng: RngLike = None, *, drop: list[int] | None = None,
                     drop_count: int | None = None, drop_probability: float | None = None,
                     num_classes: int | None = None, keep_at_least_one: bool = True) -> Annotations:
    """A class-partial mask: some foreground classes are not annotated and are merged into background.

    This is the partially labelled setting of multi-organ datasets where each source annotates only some organs
    (Zhou et al., "Prior-aware neural network for partially-supervised multi-organ segmentation", ICCV 2019;
    Shi et al., "Marginal loss and exclusion loss for partially supervised multi-organ segmentation", MedIA
    2021): a voxel labelled 0 is "none of the kept classes", not necessarily true background.

    Exactly one of ``drop`` (explicit classes), ``drop_count`` (that many classes drawn uniformly from
    1..num_classes-1) or ``drop_probability`` (each foreground class dropped independently) must be given.

    Args:
        labels: integer label map ``S``.
        rng: Generator, seed or None (used by the random modes).
        drop: foreground classes to drop.
        drop_count: number of foreground classes to drop at random.
        drop_probability: probability of dropping each foreground class.
        num_classes: number of classes including background (default ``labels.max() + 1``).
        keep_at_least_one: with ``drop_probability``, keep one random class when every class was drawn.

    Returns:
        Annotations with ``labels`` (dropped classes set to 0), ``classes`` = kept classes including 0 and
        ``dense_kind`` PARTIAL (MASK, with ``classes`` None, when nothing was dropped, as the manifest loader does).
        ``extra["simulation"]["result"]["dropped"]`` lists the dropped classes.
    """
    labels = check_labels(labels)
    top = int(labels.max()) + 1 if labels.size else 1
    num_classes = top if num_classes is None else int(num_classes)
    if num_classes < top:
        raise ValueError(f"num_classes={num_classes} but the label map holds class {top - 1}")
    modes = [name for name, value in (("drop", drop), ("drop_count", drop_count),
                                      ("drop_probability", drop_probability)) if value is not None]
    if len(modes) != 1:
        raise ValueError(f"give exactly one of drop, drop_count, drop_probability; got {modes or 'none'}")
    gen, rng_record = make_generator(rng)
    foreground = np.arange(1, num_classes)
    if drop is not None:
        dropped = sorted({int(c) for c in drop})
        bad = [c for c in dropped if not 1 <= c < num_classes]
        if bad:
            raise ValueError(f"drop lists {bad}, which are not foreground classes 1..{num_classes - 1}")
    elif drop_count is not None:
        if not 0 <= drop_count <= len(foreground):
            raise ValueError(f"drop_count must be 0..{len(foreground)} (the foreground classes), got {drop_count}")
        dropped = sorted(gen.choice(foreground, size=int(drop_count), replace=False).tolist())
    else:
        if not 0 <= drop_probability <= 1:
            raise ValueError(f"drop_probability must be in [0, 1], got {drop_probability}")
        draws = gen.random(len(foreground)) < drop_probability
        if keep_at_least_one and len(foreground) and draws.all():
            draws[gen.integers(len(foreground))] = False
        dropped = foreground[draws].tolist()
    params = {"drop": drop, "drop_count": drop_count, "drop_probability": drop_probability,
              "num_classes": num_classes, "keep_at_least_one": keep_at_least_one}
    out = np.where(np.isin(labels, dropped), 0, labels)
    kept = tuple(c for c in range(num_classes) if c not in dropped)
    record = simulation_record("partial", rng_record, params, {"dropped": dropped, "kept": list(kept)})
    if not dropped:
        return Annotations(labels=out, dense_kind=Kind.MASK, extra={"simulation": record})
    return Annotations(labels=out, dense_kind=Kind.PARTIAL, classes=kept, extra={"simulation": record})


def _plane_positions(lo: int, hi: int, count: int, placement: str, gen: np.random.Generator) -> list[int]:
    """``count`` distinct indices in ``[lo, hi)``: centred at even intervals, or drawn at random."""
    size = hi - lo
    count = min(count, size)
    if placement == "even":
        return sorted({lo + int((i + 0.5) * size / count) for i in range(count)})
    return sorted((lo + gen.choice(size, size=count, replace=False)).tolist())


def simulate_sparse(labels: np.ndarray, rng: RngLike = None, *, axes: int | list[int] = 0, num_slices: int = 1,
                    placement: str = "even", extent: str = "image",
                    slices: dict[int, list[int]] | None = None) -> Annotations:
    """A mask annotated on a few planes only (rows/columns in 2D), everything else unannotated.

    Laprade, W. M., Perslev, M., Sporring, J., "How few annotations are needed for segmentation using a
    multi-planar U-Net?", DALI @ MICCAI 2021: volumes annotated on a handful of planes along one or more axes.

    Args:
        labels: integer label map ``S`` (2D or 3D).
        rng: Generator, seed or None (used by ``placement="random"``).
        axes: axis or axes whose planes are annotated (array axis indices).
        num_slices: planes per axis (capped at the number available).
        placement: ``"even"`` (centred at equal intervals) or ``"random"`` (distinct, uniform).
        extent: place planes over the whole ``"image"`` or over the ``"foreground"``'s extent along the axis (the
            image when there is no foreground).
        slices: explicit plane indices per axis (overrides ``num_slices``/``placement``/``extent``).

    Returns:
        Annotations with ``labels`` (0 off the planes), ``valid`` (the planes) and ``dense_kind`` MASK;
        ``extra["simulation"]["result"]["slices"]`` maps each axis to its plane indices.
    """
    labels = check_labels(labels)
    ndim = labels.ndim
    axes_list = [axes] if isinstance(axes, (int, np.integer)) else list(axes)
    if slices is not None:
        slices = {int(k): [int(i) for i in v] for k, v in dict(slices).items()}
        axes_list = sorted(slices)
    if not axes_list or any(not 0 <= a < ndim for a in axes_list) or len(set(axes_list)) != len(axes_list):
        given = axes if slices is None else axes_list
        raise ValueError(f"axes must be distinct axis indices 0..{ndim - 1}, got {given}")
    if placement not in SLICE_PLACEMENTS:
        raise ValueError(f"placement must be one of {SLICE_PLACEMENTS}, got {placement!r}")
    if extent not in SLICE_EXTENTS:
        raise ValueError(f"extent must be one of {SLICE_EXTENTS}, got {extent!r}")
    if int(num_slices) != num_slices or num_slices < 1:
        raise ValueError(f"num_slices must be an integer >= 1, got {num_slices}")
    gen, rng_record = make_generator(rng)
    chosen: dict[int, list[int]] = {}
    for axis in axes_list:
        if slices is not None:
            bad = [i for i in slices[axis] if not 0 <= i < labels.shape[axis]]
            if bad:
                raise ValueError(f"slices {bad} lie outside axis {axis} of size {labels.shape[axis]}")
            chosen[axis] = sorted(set(slices[axis]))
            continue
        lo, hi = 0, labels.shape[axis]
        if extent == "foreground" and labels.any():
            present = np.flatnonzero(labels.any(axis=tuple(a for a in range(ndim) if a != axis)))
            lo, hi = int(present[0]), int(present[-1]) + 1
        chosen[axis] = _plane_positions(lo, hi, int(num_slices), placement, gen)
    valid = np.zeros(labels.shape, dtype=bool)
    for axis, indices in chosen.items():
        index = [slice(None)] * ndim
        index[axis] = indices
        valid[tuple(index)] = True
    params = {"axes": axes_list, "num_slices": int(num_slices), "placement": placement, "extent": extent,
              "slices": slices}
    return Annotations(labels=np.where(valid, labels, 0), valid=valid, dense_kind=Kind.MASK,
                       extra={"simulation": simulation_record("sparse", rng_record, params, {"slices": chosen})})
