"""Mean-taught deep supervision: an EMA teacher fills in multi-label targets where the annotations say nothing.

Reiß, Seibold, Freytag, Rodner & Stiefelhagen, "Every Annotation Counts: Multi-label Deep Supervision for Medical
Image Segmentation", CVPR 2021, Eq. 10: the student learns from the annotations with multi-label deep supervision
(Eq. 9, :mod:`everylabel.methods.multilabel`) and, on images with only tags, boxes or nothing, from the predictions
of a mean teacher (Tarvainen & Valpola, NeurIPS 2017; weights ``theta'_t = alpha theta'_{t-1} + (1 - alpha)
theta_t``), used as multi-label targets at every decoder scale. The teacher's predictions are restricted by the weak
labels where present (:func:`mean_taught_targets`): zero outside the boxes of a boxed class, zero for a class tagged
absent.

    L = L_ML(student, annotations) + w(t) * L_ML(student, restricted sigmoid(teacher)),

with ``w(t)`` ramped up as ``exp(-5 (1 - t)^2)`` (as in :class:`~everylabel.methods.mean_teacher.MeanTeacher`) and
independent Gaussian input noise for student and teacher.

Choices / deviations (our reading of Eq. 10):

* annotations win: the teacher term covers exactly the (sample, class, cell) entries the annotations leave open,
  inside ``roi``. For images with only tags, boxes or nothing that is the paper's setting; on full masks nothing is
  left open; on scribbles, points and class-partial masks the teacher fills the unannotated pixels and the uncovered
  classes (an extension);
* the teacher's targets are soft (its sigmoid probabilities), as in the mean teacher; the restriction multiplies
  them by 0/1 masks;
* the global tag scale (the coarsest output max-pooled to one cell) is treated like the other scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from everylabel.annotations.kinds import Kind
from everylabel.losses.box_prior import box_masks
from everylabel.losses.multilabel import adaptive_max_pool, multilabel_deep_supervision_loss
from everylabel.methods.base import as_list
from everylabel.methods.mean_teacher import (
    TeacherMethod,
    teacher_logits,
)
from everylabel.methods.multilabel import MultilabelDeepSupervision


def allowed_classes(sizes: Sequence[Sequence[int]], spatial_shape: Sequence[int], num_classes: int, *,
                    boxes: Sequence[torch.Tensor] | None = None, box_labels: Sequence[torch.Tensor] | None = None,
                    tags: torch.Tensor | None = None, device=None) -> list[torch.Tensor]:
    """Where each class may be predicted according to boxes and tags, at every size.

    A class tagged absent (0) is allowed nowhere; a boxed class only in the cells that overlap one of its boxes
    (the filled boxes max-pooled to the size); every other class everywhere.

    Args:
        sizes: spatial size of every scale.
        spatial_shape: full-resolution S, in which the boxes are given.
        num_classes: N.
        boxes, box_labels: per sample, as in :class:`~everylabel.data.batch.Batch`, or None.
        tags: (B, N) with 1 present, 0 absent, -1 unknown, or None.

    Returns:
        One float (B, N, *s) 0/1 tensor per size.
    """
    if boxes is None and tags is None:
        raise ValueError("allowed_classes needs boxes or tags")
    b = len(boxes) if boxes is not None else tags.shape[0]
    nd = len(spatial_shape)
    allowed = torch.ones((b, num_classes) + (1,) * nd, dtype=torch.float32, device=device)
    if tags is not None:
        allowed = allowed * (tags.to(device) != 0).view(b, num_classes, *([1] * nd)).to(torch.float32)
    inside = boxed = None
    if boxes is not None:
        inside, boxed = box_masks(boxes, box_labels, num_classes, spatial_shape, device)
    out = []
    for size in sizes:
        a = allowed.expand(b, num_classes, *size)
        if inside is not None:
            pooled = (adaptive_max_pool(inside, size) > 0).to(torch.float32)
            a = torch.where(boxed.view(b, num_classes, *([1] * nd)), a * pooled, a)
        out.append(a)
    return out


def mean_taught_targets(teacher_outputs: Sequence[torch.Tensor], spatial_shape: Sequence[int], *,
                        boxes: Sequence[torch.Tensor] | None = None, box_labels: Sequence[torch.Tensor] | None = None,
                        tags: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The teacher's sigmoid probabilities at every scale, zero where boxes or tags rule a class out.

    Args:
        teacher_outputs: teacher logits per scale (B, N, *s).
        spatial_shape: full-resolution S (the grid of the boxes).
        boxes, box_labels, tags: as for :func:`allowed_classes`; without either the targets are unrestricted.

    Returns:
        One float32 (B, N, *s) target in [0, 1] per scale.
    """
    probs = [torch.sigmoid(t.detach().float()) for t in teacher_outputs]
    if boxes is None and tags is None:
        return probs
    n = probs[0].shape[1]
    masks = allowed_classes([p.shape[2:] for p in probs], spatial_shape, n, boxes=boxes, box_labels=box_labels,
                            tags=tags, device=probs[0].device)
    return [p * m for p, m in zip(probs, masks)]


class MeanTaughtDeepSupervision(TeacherMethod):
    """Multi-label deep supervision (Eq. 9) plus a mean teacher's restricted multi-label targets (Eq. 10).

    Args:
        multilabel: the annotation term (also decides the scales and the tag term).
        ema_decay: teacher decay alpha in [0, 1).
        consistency_weight: maximum weight of the teacher term.
        rampup_fraction: fraction of the schedule over which the weight ramps up (0 = constant).
        noise_std: std of the Gaussian noise added independently to the student's and the teacher's input.
        infer_with: "teacher" or "student" for validation and prediction.
    """

    uses = MultilabelDeepSupervision.uses
    uses_unlabelled = True

    def __init__(self, multilabel: MultilabelDeepSupervision, ema_decay: float = 0.99,
                 consistency_weight: float = 1.0, rampup_fraction: float = 0.4, noise_std: float = 0.1,
                 infer_with: str = "teacher"):
        super().__init__()
        self.init_teacher(ema_decay, infer_with, consistency_weight, rampup_fraction, noise_std)
        self.multilabel = multilabel

    @property
    def name(self) -> str:
        return "mean_taught"


    def forward(self, network: nn.Module, batch, step: int = 0, total_steps: int = 1) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            raise RuntimeError("MeanTaughtDeepSupervision.setup(network) must be called before training")
        x = batch.image
        student_in = x + self.noise_std * torch.randn_like(x) if self.noise_std else x
        teacher_in = x + self.noise_std * torch.randn_like(x) if self.noise_std else x
        outputs = as_list(network(student_in))
        outs, sizes = self.multilabel.scales(outputs, batch)
        n = outputs[0].shape[1]
        targets, known = self.multilabel.targets(sizes, batch, n)
        sup = multilabel_deep_supervision_loss(outs, targets, known)

        t_outs, _ = self.multilabel.scales(teacher_logits(self.teacher, teacher_in, all_scales=True), batch)
        t_outs = [adaptive_max_pool(t.float(), s) for t, s in zip(t_outs, sizes)]
        has_boxes, has_tags = bool(batch.has[Kind.BOXES].any()), bool((batch.tags >= 0).any())
        t_targets = mean_taught_targets(t_outs, x.shape[2:], boxes=batch.boxes if has_boxes else None,
                                        box_labels=batch.box_labels if has_boxes else None,
                                        tags=batch.tags if has_tags else None)
        roi = batch.roi.to(torch.float32)
        open_ = [~m & (adaptive_max_pool(roi, m.shape[2:]) > 0) for m in known]
        cons = multilabel_deep_supervision_loss(outs, t_targets, open_)
        w = self.weight(step, total_steps)
        loss = sup + w * cons
        if not any(m.any() for m in known + open_):
            loss = loss + 0.0 * outputs[0].sum()
        terms = {"loss": loss, "multilabel": sup.detach(), "teacher": cons.detach(),
                 "consistency_weight": torch.tensor(w), "output": outputs[0]}
        return self.add_entropy(terms, outputs[0], batch)
