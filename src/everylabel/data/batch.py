"""Sample (one patch of one case) and Batch (a mixed batch of samples with any annotation kinds).

A batch can mix fully labelled, weakly labelled and unlabelled samples: dense fields are always present with fixed
shapes (``valid`` is all-False where nothing is annotated), coordinate kinds are lists with one tensor per sample,
and ``has`` tells per kind which samples carry it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from everylabel.annotations.kinds import TAG_UNKNOWN, Kind


@dataclass
class Sample:
    """One (patch of a) case as tensors.

    Shapes:
        image: (C, *S) float32.
        labels: (1, *S) int64 (0 where not annotated).
        valid: (1, *S) bool, True where ``labels`` holds a given label.
        roi: (1, *S) bool, True inside the meaningful image region (all True without a field-of-view mask).
        points: (N, ndim) float32 voxel coordinates; point_labels (N,) int64.
        boxes: (M, 2 * ndim) float32 (mins then maxes, max exclusive); box_labels (M,) int64.
        tags: (num_classes,) int64 with 1 present, 0 absent, -1 unknown.
        classes: (num_classes,) bool, the classes the dense labels cover.
    """

    image: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor
    roi: torch.Tensor
    points: torch.Tensor
    point_labels: torch.Tensor
    boxes: torch.Tensor
    box_labels: torch.Tensor
    tags: torch.Tensor
    classes: torch.Tensor
    kinds: frozenset = frozenset()
    case_id: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])


@dataclass
class Batch:
    """A collated batch. Shapes as in :class:`Sample` with a leading batch axis B for dense fields.

    Attributes:
        has: kind -> (B,) bool tensor: which samples carry that kind.
    """

    image: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor
    roi: torch.Tensor
    points: list[torch.Tensor]
    point_labels: list[torch.Tensor]
    boxes: list[torch.Tensor]
    box_labels: list[torch.Tensor]
    tags: torch.Tensor
    classes: torch.Tensor
    has: dict[Kind, torch.Tensor]
    case_ids: list[str]

    def __len__(self) -> int:
        return self.image.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def mv(t):
            return t.to(device, non_blocking=non_blocking)

        return Batch(
            image=mv(self.image), labels=mv(self.labels), valid=mv(self.valid), roi=mv(self.roi),
            points=[mv(p) for p in self.points], point_labels=[mv(p) for p in self.point_labels],
            boxes=[mv(b) for b in self.boxes], box_labels=[mv(b) for b in self.box_labels],
            tags=mv(self.tags), classes=mv(self.classes), has={k: mv(v) for k, v in self.has.items()},
            case_ids=list(self.case_ids),
        )

    def select(self, index: torch.Tensor) -> Batch:
        """The sub-batch of the samples where the boolean (B,) ``index`` is True."""
        idx = torch.nonzero(index.cpu(), as_tuple=False).flatten().tolist()
        return Batch(
            image=self.image[idx], labels=self.labels[idx], valid=self.valid[idx], roi=self.roi[idx],
            points=[self.points[i] for i in idx], point_labels=[self.point_labels[i] for i in idx],
            boxes=[self.boxes[i] for i in idx], box_labels=[self.box_labels[i] for i in idx],
            tags=self.tags[idx], classes=self.classes[idx], has={k: v[idx] for k, v in self.has.items()},
            case_ids=[self.case_ids[i] for i in idx],
        )


def collate(samples: list[Sample]) -> Batch:
    """Stack samples of equal spatial shape into a :class:`Batch`.

    Raises:
        ValueError: on an empty list or samples whose image shapes differ.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    shapes = {tuple(s.image.shape) for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"cannot batch samples of different shapes {sorted(shapes)} "
                         f"(cases {[s.case_id for s in samples]}); crop to a common patch size first")
    has = {k: torch.tensor([k in s.kinds for s in samples], dtype=torch.bool) for k in Kind}
    return Batch(
        image=torch.stack([s.image for s in samples]),
        labels=torch.stack([s.labels for s in samples]),
        valid=torch.stack([s.valid for s in samples]),
        roi=torch.stack([s.roi for s in samples]),
        points=[s.points for s in samples], point_labels=[s.point_labels for s in samples],
        boxes=[s.boxes for s in samples], box_labels=[s.box_labels for s in samples],
        tags=torch.stack([s.tags for s in samples]),
        classes=torch.stack([s.classes for s in samples]),
        has=has,
        case_ids=[s.case_id for s in samples],
    )


def empty_tags(num_classes: int) -> torch.Tensor:
    return torch.full((num_classes,), TAG_UNKNOWN, dtype=torch.int64)
