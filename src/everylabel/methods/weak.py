"""One method for every annotation kind: each loss term applies only to the samples that carry its kind.

A batch may mix full masks, class-partial masks, scribbles, points, boxes, tags and unlabelled samples:

- MASK: Dice + CE with deep supervision (nnU-Net), inside ``valid``;
- PARTIAL: the marginal loss (classes the mask does not cover merged into background; Shi et al., MedIA 2021);
- SCRIBBLE / POINTS: partial cross-entropy on the annotated pixels (Tang et al., ECCV 2018, Eq. 1), optionally
  plus the dense-CRF (Potts) regulariser over the whole image (Tang et al., Eq. 4);
- BOXES: box priors, emptiness outside and tightness inside (Kervadec et al., MIDL 2020), with log-barriers;
- TAGS: multiple-instance loss on globally pooled logits (Pinheiro & Collobert, CVPR 2015) plus inclusion /
  suppression size constraints (Kervadec et al., MedIA 2019);
- any sample, optionally: entropy minimisation on unannotated pixels (Grandvalet & Bengio, NeurIPS 2005).

Weights are in the config (``method.*_weight``); a term whose kind no sample in the batch carries is skipped.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from everylabel.annotations.kinds import Kind
from everylabel.losses.box_prior import box_prior_loss
from everylabel.losses.constraints import tag_size_loss
from everylabel.losses.crf import crf_loss
from everylabel.losses.cross_entropy import masked_cross_entropy
from everylabel.losses.entropy import entropy_loss
from everylabel.losses.marginal import marginal_loss
from everylabel.losses.mil import mil_loss
from everylabel.methods.base import Method
from everylabel.methods.supervised import Supervised


def rasterize_points(labels: torch.Tensor, valid: torch.Tensor, points: list[torch.Tensor],
                     point_labels: list[torch.Tensor], radius: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Write clicked points (and a cube of ``radius`` around each) into copies of a label map and its valid mask.

    Shapes:
        labels, valid: (B, 1, *S); points[b]: (N_b, ndim) voxel coordinates; point_labels[b]: (N_b,).
    """
    labels, valid = labels.clone(), valid.clone()
    spatial = labels.shape[2:]
    for b, (pts, lab) in enumerate(zip(points, point_labels)):
        if len(pts) == 0:
            continue
        idx = pts.round().long()
        for off in _offsets(len(spatial), radius, pts.device):
            q = idx + off
            inside = ((q >= 0) & (q < torch.tensor(spatial, device=q.device))).all(1)
            q, lq = q[inside], lab[inside]
            index = (torch.full((len(q),), b, device=q.device), torch.zeros(len(q), dtype=torch.long,
                                                                            device=q.device)) + tuple(q.T)
            labels[index] = lq.to(labels.dtype)
            valid[index] = True
    return labels, valid


def _offsets(ndim: int, radius: int, device) -> list[torch.Tensor]:
    r = torch.arange(-radius, radius + 1, device=device)
    grids = torch.meshgrid(*([r] * ndim), indexing="ij")
    return list(torch.stack([g.flatten() for g in grids], 1))


class WeakSupervision(Method):
    """Mixed supervision from every kind a sample carries.

    Args:
        supervised: the full-mask term.
        partial_weight: weight of the marginal loss on PARTIAL samples.
        sparse_weight: weight of partial CE on SCRIBBLE / POINTS pixels.
        crf_weight: weight of the CRF regulariser on SCRIBBLE / POINTS samples (0 = off).
        crf_sigma_xy: spatial sigma of the CRF kernel, in voxels.
        crf_sigma_intensity: intensity sigma, in units of the normalised image.
        box_weight: weight of the box priors on BOXES samples. Boxes annotate every object of every class of
            their sample, so a class without a box in a sample (a slice no box crosses, a patch beside the boxes)
            is constrained to be absent there.
        box_size_bounds: (a, b) of the box-size constraint (Kervadec et al., MIDL 2020), or None.
        tag_weight: weight of the MIL + tag size terms on TAGS samples.
        tag_pool: "lse" or "max" global pooling for the MIL loss.
        entropy_weight: weight of entropy minimisation on unannotated pixels of every sample (0 = off).
        point_radius: points are rasterised as cubes of this radius for partial CE.
    """

    uses = frozenset({Kind.MASK, Kind.PARTIAL, Kind.SCRIBBLE, Kind.POINTS, Kind.BOXES, Kind.TAGS})

    def __init__(self, supervised: Supervised, partial_weight: float = 1.0, sparse_weight: float = 1.0,
                 crf_weight: float = 0.0, crf_sigma_xy: float = 5.0, crf_sigma_intensity: float = 0.15,
                 box_weight: float = 1.0, tag_weight: float = 1.0, tag_pool: str = "lse",
                 entropy_weight: float = 0.0, point_radius: int = 1,
                 box_size_bounds: tuple[float, float] | None = (0.5, 0.9)):
        super().__init__()
        weights = dict(partial_weight=partial_weight, sparse_weight=sparse_weight, crf_weight=crf_weight,
                       box_weight=box_weight, tag_weight=tag_weight, entropy_weight=entropy_weight)
        bad = [k for k, v in weights.items() if v < 0]
        if bad:
            raise ValueError(f"method weights must be >= 0: {', '.join(bad)}")
        if tag_pool not in ("lse", "max"):
            raise ValueError(f"method.tag_pool must be 'lse' or 'max', got {tag_pool!r}")
        self.supervised = supervised
        self.w = weights
        self.crf_sigma_xy, self.crf_sigma_intensity = crf_sigma_xy, crf_sigma_intensity
        self.tag_pool, self.point_radius = tag_pool, point_radius
        if box_size_bounds is not None and (len(box_size_bounds) != 2 or
                                            not 0.0 <= box_size_bounds[0] <= box_size_bounds[1]):
            raise ValueError(f"method.box_size_bounds must be (a, b) with 0 <= a <= b, or null; got {box_size_bounds}")
        self.box_size_bounds = None if box_size_bounds is None else tuple(float(v) for v in box_size_bounds)
        self.uses_unlabelled = entropy_weight > 0

    @property
    def name(self) -> str:
        return "weak"

    def forward(self, network: nn.Module, batch, step: int = 0, total_steps: int = 1) -> dict[str, torch.Tensor]:
        outputs = network(batch.image)
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        logits = outputs[0]
        dev = logits.device
        has = {k: v.to(dev) for k, v in batch.has.items()}
        view = (-1,) + (1,) * (logits.ndim - 1)
        total = logits.new_zeros((), dtype=torch.float32)
        terms: dict[str, torch.Tensor] = {}

        if has[Kind.MASK].any():
            t = self.supervised.supervised_terms(outputs, batch.labels, batch.valid & has[Kind.MASK].view(view))
            terms["mask"], total = t.detach(), total + t
        if self.w["partial_weight"] and has[Kind.PARTIAL].any():
            i = has[Kind.PARTIAL]
            t = marginal_loss(logits[i], batch.labels[i], classes=batch.classes[i].to(dev), mask=batch.valid[i],
                              include_background=False)
            terms["partial"], total = t.detach(), total + self.w["partial_weight"] * t
        sparse = has[Kind.SCRIBBLE] | has[Kind.POINTS]
        if sparse.any():
            labels, valid = batch.labels, batch.valid & has[Kind.SCRIBBLE].view(view)
            if has[Kind.POINTS].any():
                labels, valid = rasterize_points(labels, valid, batch.points, batch.point_labels, self.point_radius)
            i = sparse
            if self.w["sparse_weight"]:
                t = masked_cross_entropy(logits[i], labels[i], mask=valid[i])
                terms["sparse_ce"], total = t.detach(), total + self.w["sparse_weight"] * t
            if self.w["crf_weight"]:
                t = crf_loss(logits[i], batch.image[i], sigma_xy=self.crf_sigma_xy,
                             sigma_intensity=self.crf_sigma_intensity, mask=batch.roi[i])
                terms["crf"], total = t.detach(), total + self.w["crf_weight"] * t
        if self.w["box_weight"] and has[Kind.BOXES].any():
            idx = torch.nonzero(has[Kind.BOXES]).flatten().tolist()
            covered = torch.ones(len(idx), logits.shape[1], dtype=torch.bool, device=dev)
            covered[:, 0] = False
            t = box_prior_loss(logits[idx], boxes=[batch.boxes[j] for j in idx],
                               box_labels=[batch.box_labels[j] for j in idx], classes=covered,
                               size_bounds=self.box_size_bounds)
            terms["box"], total = t.detach(), total + self.w["box_weight"] * t
        if self.w["tag_weight"] and has[Kind.TAGS].any():
            i = has[Kind.TAGS]
            tags = batch.tags[i].to(dev)
            t = mil_loss(logits[i], tags=tags, pool=self.tag_pool, mask=batch.roi[i]) + \
                tag_size_loss(logits[i], tags=tags, mask=batch.roi[i], include_background=False)
            terms["tag"], total = t.detach(), total + self.w["tag_weight"] * t
        if self.w["entropy_weight"]:
            t = entropy_loss(logits, mask=batch.roi & ~batch.valid)
            terms["entropy"], total = t.detach(), total + self.w["entropy_weight"] * t
        if not terms:  # nothing in this batch carries a kind with a non-zero weight: a zero loss, still a graph
            total = total + 0.0 * logits.sum()
        return self.add_entropy({"loss": total, **terms, "output": logits}, logits, batch)
