"""Annotation cost: what each kind of label costs in annotator-seconds, so experiments report what a label bought.

A :class:`CostModel` prices each kind per *unit of work*, counted on the annotation itself:

============== ======================================================================= ==================
kind           unit counted                                                             default (s)
============== ======================================================================= ==================
mask           one object (2D connected component of a class) on one image or slice      78 per object
partial        as mask, for the classes the mask covers                                  78 per object
sparse         as mask, on the annotated planes only                                     78 per object
noisy masks    as mask (elastic, shift, erode, dilate, crop) x ``noisy_mask_factor``     78 x 1.0
scribbles      one stroke: a 2D connected piece of one class (background too) per slice  10 per stroke
boxes          one box (a 3D box x ``box_3d_factor``; a per-slice box is a 2D box)       10 per box
points         one click                                                                 2.4 per point
tags           one present/absent answer for one foreground class                        1 per class
unlabelled     nothing                                                                   0
============== ======================================================================= ==================

Sources of the defaults (all overridable, e.g. ``cost: {mask: 120}`` in a sweep file):

- mask 78 s per object: Bearman et al., "What's the point: semantic segmentation with point supervision",
  ECCV 2016, who quote 54-79 s to outline one object; COCO's polygons took 79.2 s per instance. Counting per
  slice makes a dense 3D organ mask cost hours (an organ on 150 slices: 150 x 78 s = 3.3 h), the order of magnitude
  the weakly-supervised segmentation literature gives for dense 3D medical masks.
- box 10 s and tag 1 s: the ratios Redekop et al. (DALI @ MICCAI 2021) take from Bearman et al.: a mask costs about
  8 boxes and about 78 image-level tags (1 s per class and image). Papadopoulos et al. (ICCV 2017) measured 7 s
  per box with extreme clicking and about 35 s with the ILSVRC crowd-sourcing protocol.
- point 2.4 s per click: Bearman et al. (2016), point-level supervision.
- scribble 10 s per stroke: an assumption (a stroke along an object's skeleton is slower than a click and faster
  than an outline; Bearman et al. found squiggles between points and full masks per image). Set it from your own
  annotators' timings.
- ``box_3d_factor`` 2: a 3D box is drawn as two 2D boxes in orthogonal views (an assumption).

:func:`annotation_cost` prices one case's :class:`~everylabel.annotations.kinds.Annotations`;
:func:`price_manifest` prices cases of a dataset; :func:`price_simulation` prices the output of
:func:`~everylabel.annotations.protocol.simulate_manifest` together with the full masks of the same cases, so
``cost_fraction`` (cost / full-mask cost) can be reported.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from everylabel.annotations.kinds import Annotations, Kind

NOISY_MASK_KINDS = ("elastic", "shift", "erode", "dilate", "crop")
"""Simulators that produce a (worse) full mask: priced as a mask x ``noisy_mask_factor``."""


@dataclass(frozen=True)
class CostModel:
    """Annotator-seconds per unit of annotation work (see the module docstring for the units and sources)."""

    mask: float = 78.0
    """Outline of one object on one image or slice."""
    box: float = 10.0
    """One 2D box."""
    box_3d_factor: float = 2.0
    """A 3D box costs ``box * box_3d_factor``."""
    point: float = 2.4
    """One click."""
    tag: float = 1.0
    """Presence/absence of one foreground class in one case."""
    scribble: float = 10.0
    """One stroke (a connected piece of one class on one slice)."""
    noisy_mask_factor: float = 1.0
    """Price of a noisy mask (elastic, shift, erode, dilate, crop) relative to a mask."""
    case: float = 0.0
    """Overhead per annotated case (opening and scrolling the scan)."""
    slice_axis: int | None = None
    """3D: the axis masks and scribbles are drawn slice by slice along; None = the axis of largest spacing (the last
    axis on ties or without spacing)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def cost_model_from_dict(data: dict | None, where: str = "cost") -> CostModel:
    """A :class:`CostModel` with some prices changed; unknown keys raise ValueError naming the nearest valid one."""
    data = dict(data or {})
    names = [f.name for f in dataclasses.fields(CostModel)]
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            raise ValueError(f"unknown key {key!r} in {where}{hint}")
        if key == "slice_axis":
            if value is not None and (isinstance(value, bool) or value not in (0, 1, 2)):
                raise ValueError(f"{where}.slice_axis must be 0, 1, 2 or null, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{where}.{key} must be a number of seconds >= 0, got {value!r}")
    return CostModel(**{k: (v if k == "slice_axis" else float(v)) for k, v in data.items()})


# ------------------------------------------------------------------------------------------------------ counting


def pick_slice_axis(ndim: int, spacing: Sequence[float] | None, model: CostModel) -> int | None:
    """The slice axis of a 3D case (None in 2D)."""
    if ndim != 3:
        return None
    if model.slice_axis is not None:
        return int(model.slice_axis)
    if spacing is None or len(spacing) != 3:
        return 2
    sp = np.asarray(spacing, dtype=np.float64)
    return int(np.flatnonzero(sp == sp.max())[-1])


def count_pieces(labels: np.ndarray, region: np.ndarray | None = None, slice_axis: int | None = None,
                 include_background: bool = False) -> int:
    """Objects x slices: the number of 2D connected pieces (8-connected) of each class on each slice.

    Args:
        labels: integer label map ``S`` (2D or 3D).
        region: where ``labels`` counts (e.g. scribbled voxels or a field of view); None = everywhere.
        slice_axis: 3D only, the axis along which slices are drawn.
        include_background: count class 0 pieces too (background scribbles).
    """
    from scipy import ndimage

    if labels.ndim == 3:
        axis = 2 if slice_axis is None else slice_axis
        lab = np.moveaxis(labels, axis, 0)
        reg = None if region is None else np.moveaxis(region, axis, 0)
        return sum(count_pieces(lab[i], None if reg is None else reg[i], None, include_background)
                   for i in range(lab.shape[0]))
    inside = np.ones(labels.shape, bool) if region is None else region.astype(bool)
    classes = np.unique(labels[inside])
    structure = np.ones((3,) * labels.ndim, bool)
    total = 0
    for c in classes:
        if c == 0 and not include_background:
            continue
        total += int(ndimage.label((labels == c) & inside, structure=structure)[1])
    return total


def _plane_pieces(labels: np.ndarray, annotated: np.ndarray) -> int:
    """Objects on the fully annotated planes (rows/columns in 2D, slices in 3D) along every axis."""
    total = 0
    for axis in range(labels.ndim):
        others = tuple(a for a in range(labels.ndim) if a != axis)
        for i in np.flatnonzero(annotated.all(axis=others)):
            total += count_pieces(np.take(labels, i, axis=axis)) if labels.ndim == 3 else _line_pieces(
                np.take(labels, i, axis=axis))
    return total


def _line_pieces(line: np.ndarray) -> int:
    """Foreground runs of each class along a 1D line (a row or column of a 2D sparse mask)."""
    fg = line[line != 0]
    if not fg.size:
        return 0
    changes = np.flatnonzero(np.diff(line) != 0)
    starts = np.concatenate([[0], changes + 1])
    return int(np.count_nonzero(line[starts] != 0))


# ------------------------------------------------------------------------------------------------------- pricing


def _dense_kind_name(ann: Annotations, kinds: Sequence[str] | None) -> str | None:
    if ann.labels is None or ann.dense_kind is None:
        return None
    for name in kinds or ():
        if name in ("mask", "partial", "sparse", "scribbles", *NOISY_MASK_KINDS):
            return name
    return {Kind.MASK: "mask", Kind.PARTIAL: "partial", Kind.SCRIBBLE: "scribbles"}[Kind(ann.dense_kind)]


def annotation_cost(ann: Annotations, model: CostModel | None = None, *, kinds: Sequence[str] | None = None,
                    spacing: Sequence[float] | None = None) -> dict[str, float]:
    """Annotator-seconds of one case's annotations, by kind.

    Args:
        ann: the case's annotations (as :func:`everylabel.data.manifest.load_case` returns them).
        model: prices (default :class:`CostModel`).
        kinds: the simulator names that made ``ann`` (e.g. ``["sparse"]``), to tell a sparse mask from scribbles
            and a noisy mask from a mask; None infers the kinds from ``ann`` (a scribble file is priced as
            scribbles).
        spacing: voxel spacing, to pick the slice axis of a 3D case.

    Returns:
        ``{kind: seconds}`` for every kind the case carries (empty for an unlabelled case); ``"case"`` holds the
        per-case overhead when it is not 0.
    """
    model = model or CostModel()
    out: dict[str, float] = {}
    dense = _dense_kind_name(ann, kinds)
    if dense is not None:
        axis = pick_slice_axis(ann.labels.ndim, spacing, model)
        region = ann.valid
        if dense == "scribbles":
            out[dense] = model.scribble * count_pieces(ann.labels, region, axis, include_background=True)
        elif dense == "sparse":
            annotated = np.ones(ann.labels.shape, bool) if region is None else region.copy()
            labels = ann.labels if region is None else np.where(region, ann.labels, 0)
            if ann.roi is not None:
                annotated |= ~ann.roi
            out[dense] = model.mask * _plane_pieces(labels, annotated)
        else:
            factor = model.noisy_mask_factor if dense in NOISY_MASK_KINDS else 1.0
            out[dense] = model.mask * factor * count_pieces(ann.labels, region, axis)
    if ann.boxes is not None and len(ann.boxes):
        boxes = np.asarray(ann.boxes, dtype=np.float64)
        d = boxes.shape[1] // 2
        extent = boxes[:, d:] - boxes[:, :d]
        is_3d = (extent > 1).all(axis=1) if d == 3 else np.zeros(len(boxes), bool)
        name = "slice_boxes" if "slice_boxes" in (kinds or ()) else "boxes"
        out[name] = model.box * float(np.where(is_3d, model.box_3d_factor, 1.0).sum())
    if ann.points is not None and len(ann.points):
        out["points"] = model.point * len(ann.points)
    if ann.tags is not None:
        out["tags"] = model.tag * int(np.count_nonzero(np.asarray(ann.tags)[1:] >= 0))
    if out and model.case:
        out["case"] = model.case
    return out


def _load(manifest):
    from everylabel.data.manifest import Manifest, load_dataset

    return manifest if isinstance(manifest, Manifest) else load_dataset(manifest)


def price_manifest(manifest, model: CostModel | None = None, *, case_ids: Sequence[str] | None = None,
                   split: str | None = "train", kinds: dict[str, list[str]] | None = None) -> dict:
    """Annotator-seconds of the annotations of some cases of a dataset.

    Args:
        manifest: a manifest path, nnU-Net raw folder or loaded :class:`~everylabel.data.manifest.Manifest`.
        model: prices.
        case_ids: the cases to price (default: every case of ``split``).
        split: used when ``case_ids`` is None (None = every case).
        kinds: case id -> simulator names that made its annotation (see :func:`annotation_cost`).

    Returns:
        ``{"seconds", "by_kind": {kind: seconds}, "cases": {case_id: {"seconds", "by_kind"}}}``.
    """
    from everylabel.data.manifest import load_case

    m = _load(manifest)
    by_id = {c.id: c for c in m.cases}
    if case_ids is None:
        case_ids = [c.id for c in m.cases if split is None or c.split == split]
    missing = [cid for cid in case_ids if cid not in by_id]
    if missing:
        raise ValueError(f"cases {missing} are not in {m.source}")
    model = model or CostModel()
    cases, by_kind = {}, {}
    for cid in case_ids:
        _, ann, meta = load_case(m, by_id[cid])
        spacing = by_id[cid].spacing or m.spacing or meta.spacing
        parts = annotation_cost(ann, model, kinds=(kinds or {}).get(cid), spacing=spacing)
        cases[cid] = {"seconds": float(sum(parts.values())), "by_kind": parts}
        for k, v in parts.items():
            by_kind[k] = by_kind.get(k, 0.0) + v
    return {"seconds": float(sum(c["seconds"] for c in cases.values())), "by_kind": by_kind, "cases": cases}


def _record_kinds(record: dict) -> list[str] | None:
    steps = record.get("steps")
    if not steps:
        return None
    return [s if isinstance(s, str) else s.get("kind", "") for s in steps]


def price_simulation(sim_dir: str | Path, model: CostModel | None = None) -> dict:
    """Price a simulated dataset (``simulate_manifest``'s output) and the full masks of the same cases.

    Priced cases are those the protocol targeted (every case with ``steps`` in ``simulation.json``); validation and
    test cases are the same in every protocol and are not priced. The full-mask cost prices the same cases of the
    source manifest as they are there (full masks).

    Returns:
        ``{"seconds", "full_mask_seconds", "cost_fraction", "by_kind", "n_cases", "n_masks", "kinds": {kind: number
        of cases}, "cases": {case_id: {"kinds", "seconds", "full_mask_seconds"}}, "model": {...}}``; ``n_masks``
        counts the cases that kept their full mask.

    Raises:
        ValueError: ``sim_dir`` holds no ``simulation.json`` / ``manifest.yaml``.
    """
    sim_dir = Path(sim_dir)
    info_path, manifest_path = sim_dir / "simulation.json", sim_dir / "manifest.yaml"
    if not info_path.is_file() or not manifest_path.is_file():
        raise ValueError(f"{sim_dir} is not a simulated dataset (needs simulation.json and manifest.yaml)")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    model = model or CostModel()
    kinds = {cid: k for cid, rec in info["cases"].items() if (k := _record_kinds(rec)) is not None}
    ids = list(kinds)
    priced = price_manifest(manifest_path, model, case_ids=ids, kinds=kinds)
    full = price_manifest(info["source_manifest"], model, case_ids=ids)
    counts: dict[str, int] = {}
    for k in kinds.values():
        name = "+".join(k)
        counts[name] = counts.get(name, 0) + 1
    total, full_total = priced["seconds"], full["seconds"]
    return {
        "seconds": total,
        "full_mask_seconds": full_total,
        "cost_fraction": total / full_total if full_total > 0 else float("nan"),
        "by_kind": priced["by_kind"],
        "n_cases": len(ids),
        "n_masks": counts.get("mask", 0),
        "kinds": counts,
        "cases": {cid: {"kinds": kinds[cid], "seconds": priced["cases"][cid]["seconds"],
                        "full_mask_seconds": full["cases"][cid]["seconds"]} for cid in ids},
        "model": model.to_dict(),
    }


__all__ = ["NOISY_MASK_KINDS", "CostModel", "annotation_cost", "cost_model_from_dict", "count_pieces",
           "pick_slice_axis", "price_manifest", "price_simulation"]
