"""Simulated annotations from full label maps: one seeded function per kind, a name -> function dict, a dispatcher.

Every simulator has the signature ``f(labels, rng=None, **params) -> Annotations``: ``labels`` is an integer 2D or
3D label map ``S`` with classes 0..N-1 (0 = background), ``rng`` a :class:`numpy.random.Generator`, an integer
seed or None, and the result records ``extra["simulation"] = {"kind", "params", "rng", "result"}``: the kind,
every parameter including defaults, how the generator was seeded (seed or full bit-generator state) and what was
drawn. :func:`replay` rebuilds an annotation from that record alone.

=============== ======================================================== ==========================================
name            function                                                 output
=============== ======================================================== ==========================================
``mask``        :func:`~.simulate_masks.simulate_mask`                   MASK (the full mask, unchanged)
``unlabelled``  :func:`~.simulate_masks.simulate_unlabelled`             nothing
``boxes``       :func:`~.simulate_coords.simulate_boxes`                 BOXES, tight or loose
``slice_boxes`` :func:`~.simulate_coords.simulate_slice_boxes`           BOXES, per-slice from 3D boxes (3D only)
``points``      :func:`~.simulate_coords.simulate_points`                POINTS
``tags``        :func:`~.simulate_coords.simulate_tags`                  TAGS
``scribbles``   :func:`~.simulate_scribbles.simulate_scribbles`          SCRIBBLE (labels + valid)
``partial``     :func:`~.simulate_masks.simulate_partial`                PARTIAL (classes dropped to background)
``sparse``      :func:`~.simulate_masks.simulate_sparse`                 MASK on a few planes (labels + valid)
``elastic``     :func:`~.simulate_noise.simulate_elastic`                MASK, unbiased B-spline warp
``shift``       :func:`~.simulate_noise.simulate_shift`                  MASK, biased constant shift
``erode``       :func:`~.simulate_noise.simulate_erosion`                MASK, biased under-segmentation
``dilate``      :func:`~.simulate_noise.simulate_dilation`               MASK, biased over-segmentation
``crop``        :func:`~.simulate_noise.simulate_crop`                   MASK, biased one-sided crop
=============== ======================================================== ==========================================

Example::

    rng = np.random.default_rng(0)
    ann = simulate(labels, "scribbles", rng, fraction=0.5, brush_radius=1)
    again = replay(labels, ann.extra["simulation"])  # identical labels and valid
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence

import numpy as np

from everylabel.annotations.kinds import Annotations
from everylabel.annotations.simulate_common import RngLike, generator_from_record
from everylabel.annotations.simulate_coords import simulate_boxes, simulate_points, simulate_slice_boxes, simulate_tags
from everylabel.annotations.simulate_masks import simulate_mask, simulate_partial, simulate_sparse, simulate_unlabelled
from everylabel.annotations.simulate_noise import (
    simulate_crop,
    simulate_dilation,
    simulate_elastic,
    simulate_erosion,
    simulate_shift,
)
from everylabel.annotations.simulate_scribbles import simulate_scribbles

SIMULATORS: dict[str, Callable[..., Annotations]] = {
    "mask": simulate_mask,
    "unlabelled": simulate_unlabelled,
    "boxes": simulate_boxes,
    "slice_boxes": simulate_slice_boxes,
    "points": simulate_points,
    "tags": simulate_tags,
    "scribbles": simulate_scribbles,
    "partial": simulate_partial,
    "sparse": simulate_sparse,
    "elastic": simulate_elastic,
    "shift": simulate_shift,
    "erode": simulate_erosion,
    "dilate": simulate_dilation,
    "crop": simulate_crop,
}
"""Simulator name -> function ``f(labels, rng=None, **params) -> Annotations``."""


def get_simulator(kind: str) -> Callable[..., Annotations]:
    """The simulator called ``kind``; ValueError naming the valid ones (and the nearest) otherwise."""
    if kind not in SIMULATORS:
        close = difflib.get_close_matches(str(kind), SIMULATORS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown simulated annotation kind {kind!r}{hint}; valid kinds: {', '.join(SIMULATORS)}")
    return SIMULATORS[kind]


def check_params(kind: str, params: dict) -> None:
    """ValueError when ``params`` holds a name the simulator ``kind`` does not take (with the nearest one)."""
    accepted = [name for name, p in inspect.signature(get_simulator(kind)).parameters.items()
                if p.kind == inspect.Parameter.KEYWORD_ONLY]
    for name in params:
        if name not in accepted:
            close = difflib.get_close_matches(str(name), accepted, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid parameters: {', '.join(accepted) or 'none'}"
            raise ValueError(f"simulator {kind!r} has no parameter {name!r}; {hint}")


def simulate(labels: np.ndarray, kind: str, rng: RngLike = None, **params) -> Annotations:
    """Simulate one annotation kind from a full label map.

    Args:
        labels: integer label map ``S`` (2D or 3D), classes 0..N-1.
        kind: a key of :data:`SIMULATORS`.
        rng: Generator (advanced in place), integer seed, or None (fresh entropy; the state is still recorded).
        **params: parameters of the simulator (see its docstring).

    Returns:
        The simulated :class:`Annotations`, with ``extra["simulation"]`` recording kind, params and rng.

    Raises:
        ValueError: unknown kind or parameter, or a bad parameter value.
    """
    check_params(kind, params)
    return get_simulator(kind)(labels, rng, **params)


def replay(labels: np.ndarray, record: dict) -> Annotations:
    """Rebuild an annotation from its ``extra["simulation"]`` record (bit-for-bit the same on the same labels)."""
    missing = [k for k in ("kind", "params", "rng") if k not in record]
    if missing:
        raise ValueError(f"a simulation record needs 'kind', 'params' and 'rng'; missing {missing}")
    return simulate(labels, record["kind"], generator_from_record(record["rng"]), **record["params"])


def merge_annotations(parts: Sequence[Annotations]) -> Annotations:
    """Combine annotations of one case (e.g. boxes + tags); ``extra["simulation"]`` becomes the list of records.

    Raises:
        ValueError: two parts carry the same kind of annotation (two dense maps, two box sets, ...).
    """
    out = Annotations()
    records = []
    groups = {"dense": ("labels", "valid", "dense_kind", "classes"), "points": ("points", "point_labels"),
              "boxes": ("boxes", "box_labels"), "tags": ("tags",)}
    owner: dict[str, str] = {}
    for part in parts:
        kind = part.extra.get("simulation", {}).get("kind", "annotation")
        for group, fields in groups.items():
            if getattr(part, fields[0]) is None:
                continue
            if group in owner:
                raise ValueError(f"cannot combine {owner[group]!r} and {kind!r}: both give {group} annotations")
            owner[group] = kind
            for name in fields:
                setattr(out, name, getattr(part, name))
        if part.roi is not None:
            out.roi = part.roi
        if "simulation" in part.extra:
            records.append(part.extra["simulation"])
    out.extra["simulation"] = records
    return out


__all__ = ["SIMULATORS", "check_params", "get_simulator", "merge_annotations", "replay", "simulate"]
