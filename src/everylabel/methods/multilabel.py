"""Multi-label deep supervision: every annotation kind as per-class binary targets at every decoder scale.

Reiß, Seibold, Freytag, Rodner & Stiefelhagen, "Every Annotation Counts: Multi-label Deep Supervision for Medical
Image Segmentation", CVPR 2021, Eq. 9. A decoder scale whose cell covers several pixels gets a multi-label target:
the one-hot mask max-pooled to that scale (a cell is positive for every class occurring in it). Filled boxes are
max-pooled the same way and count at the coarser scales, where a box is a good approximation of the object; tags
supervise the coarsest output, globally max-pooled. Each scale gets a per-class sigmoid binary cross-entropy on the
entries the annotations determine, and the scales are averaged with equal weights:

    L = 1/|scales| * sum_s mean_{known (b, k, cell)} BCE(sigmoid(o^s_{b,k,cell}), y^s_{b,k,cell}).

The targets and their validity come from :func:`everylabel.losses.multilabel.multilabel_targets`; see its docstring
for how masks, class-partial masks, scribbles, boxes and tags combine. Points are rasterised like scribbles.

Deviations / choices:

* the tag term is an extra global scale (the coarsest output max-pooled to one cell), so a tag-present class asks
  that *some* cell of the patch holds it; with patches smaller than the image that can be wrong for a small object
  outside the patch (the same caveat as the MIL loss of the ``weak`` method). Tag-absent classes are exact;
* no Dice term: the loss is Eq. 9 alone. At inference the class with the largest logit is taken (argmax over the
  per-class sigmoids), as for softmax-trained networks.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from everylabel.annotations.kinds import Kind
from everylabel.losses.multilabel import adaptive_max_pool, multilabel_deep_supervision_loss, multilabel_targets
from everylabel.methods.base import Method, as_list, sample_view
from everylabel.methods.weak import rasterize_points

DENSE = (Kind.MASK, Kind.PARTIAL, Kind.SCRIBBLE, Kind.POINTS)


class MultilabelDeepSupervision(Method):
    """Eq. 9 of Reiß et al. (CVPR 2021) on masks, class-partial masks, scribbles, points, boxes and tags.

    Args:
        deep_supervision: use every decoder scale the network returns (False: the full-resolution output only).
        box_min_scale: index of the first scale (0 = full resolution) at which the inside of a box counts as a
            positive; outside every box of a class is a known negative at every scale.
        tags: supervise tags with a global (1, ..., 1) scale appended after the coarsest output.
        point_radius: points are rasterised as cubes of this radius.
    """

    uses = frozenset({Kind.MASK, Kind.PARTIAL, Kind.SCRIBBLE, Kind.POINTS, Kind.BOXES, Kind.TAGS})

    def __init__(self, deep_supervision: bool = True, box_min_scale: int = 1, tags: bool = True,
                 point_radius: int = 1):
        super().__init__()
        if box_min_scale < 0:
            raise ValueError(f"method.box_min_scale must be >= 0, got {box_min_scale}")
        self.deep_supervision, self.box_min_scale = deep_supervision, box_min_scale
        self.tags, self.point_radius = tags, point_radius

    @property
    def name(self) -> str:
        return "multilabel"

    def scales(self, outputs: list[torch.Tensor], batch) -> tuple[list[torch.Tensor], list[tuple[int, ...]]]:
        """The outputs that get a term and their target sizes: every scale (or the first), plus the coarsest output
        again against a global (1, ..., 1) size when a sample of the batch carries tags."""
        outs = outputs if self.deep_supervision else outputs[:1]
        sizes = [tuple(o.shape[2:]) for o in outs]
        if self.tags and (batch.tags >= 0).any():
            outs, sizes = outs + [outs[-1]], sizes + [(1,) * len(sizes[0])]
        return outs, sizes

    def targets(self, sizes: list[tuple[int, ...]], batch, num_classes: int
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-scale multi-label targets and "known" masks of a batch (Eq. 9's y^s and the entries it covers).

        Returns:
            ``(targets, known)``: float (B, N, *s) 0/1 and bool (B, N, *s) per size; entries of cells entirely
            outside ``roi`` are never known.
        """
        dev, ndim = batch.image.device, batch.image.ndim
        has = {k: v.to(dev) for k, v in batch.has.items()}
        dense = torch.zeros_like(has[Kind.MASK])
        for k in DENSE:
            dense = dense | has[k]
        labels, valid = batch.labels, batch.valid & sample_view(dense, ndim)
        classes = batch.classes.to(dev).clone()
        if has[Kind.POINTS].any():
            labels, valid = rasterize_points(labels, valid, batch.points, batch.point_labels, self.point_radius)
            classes[has[Kind.POINTS] & ~has[Kind.PARTIAL]] = True
        with_boxes = bool(has[Kind.BOXES].any())
        targets, known = multilabel_targets(
            labels, valid, boxes=batch.boxes if with_boxes else None,
            box_labels=batch.box_labels if with_boxes else None, num_classes=num_classes, sizes=sizes,
            tags=batch.tags.to(dev) if self.tags else None, classes=classes, box_min_scale=self.box_min_scale)
        roi = batch.roi.to(torch.float32)
        known = [m & (adaptive_max_pool(roi, m.shape[2:]) > 0) for m in known]
        return targets, known

    def forward(self, network: nn.Module, batch, step: int = 0, total_steps: int = 1) -> dict[str, torch.Tensor]:
        outputs = as_list(network(batch.image))
        outs, sizes = self.scales(outputs, batch)
        targets, known = self.targets(sizes, batch, outputs[0].shape[1])
        loss = multilabel_deep_supervision_loss(outs, targets, known)
        if not any(m.any() for m in known):  # nothing annotated in this batch: a zero loss, still a graph
            loss = loss + 0.0 * outputs[0].sum()
        return self.add_entropy({"loss": loss, "multilabel": loss.detach(), "output": outputs[0]}, outputs[0], batch)
