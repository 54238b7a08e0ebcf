"""Annotation kinds and the typed per-case container.

Every case carries zero or more annotation kinds. Dense kinds (MASK, PARTIAL, SCRIBBLE, POINTS rasterised) are
label maps plus an explicit boolean ``valid`` map telling where a label was given; coordinate kinds (BOXES, POINTS)
are arrays of coordinates in voxel units moved by spatial transforms; TAGS are per-class presence flags that
ignore spatial transforms. "Not annotated here" is always ``valid == False``, never a magic label value.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

import numpy as np


class Kind(str, enum.Enum):
    """The annotation kinds everylabel understands."""

    MASK = "mask"
    """Dense label map over the whole image (or over ``valid``, e.g. a field of view)."""
    PARTIAL = "partial"
    """Dense label map that covers only some classes (``classes``); other classes are merged into background."""
    SCRIBBLE = "scribble"
    """Sparse label map: labelled strokes, every other pixel unannotated."""
    POINTS = "points"
    """Clicked points with a class each."""
    BOXES = "boxes"
    """Axis-aligned boxes with a class each."""
    TAGS = "tags"
    """Image-level presence (1) / absence (0) / unknown (-1) per class."""


DENSE_KINDS = (Kind.MASK, Kind.PARTIAL, Kind.SCRIBBLE)

TAG_UNKNOWN = -1


@dataclass
class Annotations:
    """All annotations of one case, in the case's voxel grid (spatial shape ``S``, no channel axis).

    Attributes:
        labels: integer label map ``S`` (int64) for MASK / PARTIAL / SCRIBBLE (and rasterised POINTS), else None.
        valid: boolean map ``S``: True where ``labels`` holds a given label. None means "everywhere" for
            MASK/PARTIAL and is not allowed for SCRIBBLE.
        roi: boolean map ``S`` of the region where the image is meaningful (e.g. DRIVE's field of view), or None.
        dense_kind: which dense kind ``labels`` is (MASK, PARTIAL or SCRIBBLE), or None.
        classes: for PARTIAL, the class indices the mask covers (background 0 always included).
        points: float array (N, ndim) of voxel coordinates, or None.
        point_labels: int array (N,) with the class of each point.
        boxes: float array (N, 2 * ndim): (min_0, ..., min_{d-1}, max_0, ..., max_{d-1}), inclusive-exclusive
            voxel bounds, or None.
        box_labels: int array (N,) with the class of each box.
        tags: int array (num_classes,) with 1 present, 0 absent, -1 unknown, or None.
        extra: free-form metadata (e.g. simulation parameters).
    """

    labels: np.ndarray | None = None
    valid: np.ndarray | None = None
    roi: np.ndarray | None = None
    dense_kind: Kind | None = None
    classes: tuple[int, ...] | None = None
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    box_labels: np.ndarray | None = None
    tags: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def kinds(self) -> frozenset[Kind]:
        """The kinds this case carries (empty for an unlabelled case)."""
        out = set()
        if self.labels is not None and self.dense_kind is not None:
            out.add(self.dense_kind)
        if self.points is not None and len(self.points):
            out.add(Kind.POINTS)
        if self.boxes is not None and len(self.boxes):
            out.add(Kind.BOXES)
        if self.tags is not None:
            out.add(Kind.TAGS)
        return frozenset(out)

    @property
    def is_unlabelled(self) -> bool:
        return not self.kinds

    def replace(self, **changes) -> Annotations:
        return replace(self, **changes)

    def validate(self, shape: tuple[int, ...], num_classes: int, where: str = "case") -> list[str]:
        """Return every problem found (empty list when the annotations are consistent).

        Args:
            shape: spatial shape of the image.
            num_classes: number of declared classes including background.
            where: a name (case id / file) to put in each message.
        """
        problems: list[str] = []
        ndim = len(shape)
        for name in ("labels", "valid", "roi"):
            arr = getattr(self, name)
            if arr is not None and tuple(arr.shape) != tuple(shape):
                problems.append(f"{where}: {name} shape {tuple(arr.shape)} does not match image shape {tuple(shape)}")
        if self.labels is not None and tuple(self.labels.shape) == tuple(shape):
            region = self.labels if self.valid is None or self.valid.shape != self.labels.shape else self.labels[
                self.valid]
            if region.size:
                lo, hi = int(region.min()), int(region.max())
                if lo < 0 or hi >= num_classes:
                    bad = sorted(int(v) for v in np.unique(region) if v < 0 or v >= num_classes)[:10]
                    problems.append(
                        f"{where}: label values {bad} outside the declared classes 0..{num_classes - 1}")
        if self.dense_kind == Kind.SCRIBBLE and self.valid is None:
            problems.append(f"{where}: scribble annotation without a valid (annotated-pixel) map")
        if self.classes is not None:
            bad = [c for c in self.classes if not 0 <= c < num_classes]
            if bad:
                problems.append(f"{where}: partial-mask classes {bad} not declared (0..{num_classes - 1})")
        if self.boxes is not None:
            b = np.asarray(self.boxes, dtype=float)
            if b.ndim != 2 or b.shape[1] != 2 * ndim:
                problems.append(f"{where}: boxes must have shape (N, {2 * ndim}), got {b.shape}")
            else:
                for i, box in enumerate(b):
                    lo, hi = box[:ndim], box[ndim:]
                    if np.any(lo >= hi):
                        problems.append(f"{where}: box {i} {box.tolist()} has min >= max")
                    elif np.any(lo < 0) or np.any(hi > np.asarray(shape)):
                        problems.append(f"{where}: box {i} {box.tolist()} lies outside the image of shape {shape}")
            if self.box_labels is None or len(self.box_labels) != len(b):
                problems.append(f"{where}: boxes need one label each")
            elif np.any((np.asarray(self.box_labels) < 1) | (np.asarray(self.box_labels) >= num_classes)):
                problems.append(f"{where}: box labels {np.asarray(self.box_labels).tolist()} must be foreground "
                                f"classes 1..{num_classes - 1}")
        if self.points is not None:
            p = np.asarray(self.points, dtype=float)
            if p.ndim != 2 or p.shape[1] != ndim:
                problems.append(f"{where}: points must have shape (N, {ndim}), got {p.shape}")
            elif len(p) and (np.any(p < 0) or np.any(p > np.asarray(shape) - 1)):
                problems.append(f"{where}: points outside the image of shape {shape}")
            if self.point_labels is None or len(self.point_labels) != len(p):
                problems.append(f"{where}: points need one label each")
            elif len(p) and np.any((np.asarray(self.point_labels) < 0) |
                                   (np.asarray(self.point_labels) >= num_classes)):
                problems.append(f"{where}: point labels outside the declared classes 0..{num_classes - 1}")
        if self.tags is not None:
            t = np.asarray(self.tags)
            if t.shape != (num_classes,):
                problems.append(f"{where}: tags must have one entry per class ({num_classes}), got {t.shape}")
            elif not np.isin(t, (-1, 0, 1)).all():
                problems.append(f"{where}: tags must be 1 (present), 0 (absent) or -1 (unknown)")
        return problems
