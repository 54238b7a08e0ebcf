"""Self-training with confident pseudo-labels and weak/strong consistency (FixMatch for segmentation).

Sohn et al., "FixMatch: Simplifying semi-supervised learning with consistency and confidence", NeurIPS 2020, Eq. 2-4:
for every sample without a mask, the prediction ``q = softmax(f(weak(x)))`` on the weakly augmented view gives a
hard pseudo-label ``argmax q``; the network is trained with cross-entropy to predict it on a strongly augmented view,
only where it is confident:

    L = L_s + lambda_u * L_u,   L_u = 1/|P| * sum_{p in P} 1[max_k q_{p,k} > tau] * CE(argmax q_p, f(strong(x))_p),

with ``L_s`` the supervised Dice + CE on masks (nnU-Net, deep supervision) and ``P`` every pixel of the pseudo-labelled
samples inside ``roi`` (FixMatch averages over all unlabelled samples, not only the confident ones, so the term grows
as the network becomes confident). Defaults tau = 0.9 and lambda_u = 2 follow Jiang et al. (DALI 2021, as cited in
issue 5); FixMatch itself uses tau = 0.95, lambda_u = 1.

Choices / deviations:

* the weak view is the batch as loaded (the training augmentation); the strong view adds photometric distortions
  and Cutout (:class:`~everylabel.methods.strong_augment.StrongAugment`) with the geometry unchanged, so pseudo-labels
  align without warping; Cutout-erased voxels get no loss;
* the threshold is strict (FixMatch writes ``>= tau``): a pixel with confidence exactly tau gets no loss;
* pseudo-labels come from the network itself under no_grad (the weak-view forward that also gives the supervised
  term, so no extra pass), or from an EMA teacher (``pseudo_labels_from="teacher"``, Tarvainen & Valpola 2017);
* weak labels restrict pseudo-labels: a class tagged absent, or a boxed class outside its boxes, is removed from
  ``q`` (renormalised) before the argmax, so boxed / tagged samples are pseudo-labelled consistently with them;
* ``L_u`` uses the full-resolution output only (deep supervision applies to ``L_s``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from everylabel.annotations.kinds import Kind
from everylabel.losses.dice import upcast
from everylabel.methods.base import as_list, sample_view
from everylabel.methods.mean_taught import allowed_classes
from everylabel.methods.mean_teacher import TeacherMethod, teacher_logits
from everylabel.methods.strong_augment import StrongAugment
from everylabel.methods.supervised import Supervised


def pseudo_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, threshold: float = 0.9,
                      mask: torch.Tensor | None = None, allowed: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the student against the teacher's confident hard pseudo-labels (FixMatch's ``L_u``).

    Args:
        student_logits: logits on the strong view.
        teacher_logits: logits on the weak view (detached here).
        threshold: tau; pixels whose maximum teacher probability is <= tau contribute neither value nor gradient.
        mask: optional (B, 1, *S) bool: the pixels ``P`` the loss is averaged over (default every pixel); pixels
            outside contribute nothing.
        allowed: optional (B, N, *S) 0/1: classes each pixel may take (the teacher's probabilities are multiplied
            by it and renormalised; a pixel with no allowed class gets no pseudo-label).

    Shapes:
        student_logits, teacher_logits: (B, N, *S).

    Returns:
        ``(loss, confident)``: the mean over ``mask`` of the masked CE (0 when ``mask`` is empty), and the (B, 1, *S)
        bool map of pixels that received a pseudo-label.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)}")
    if not 0 <= threshold < 1:
        raise ValueError(f"method.pseudo_threshold must be in [0, 1), got {threshold}")
    with torch.no_grad():
        q = torch.softmax(teacher_logits.detach().float(), 1)
        if allowed is not None:
            q = q * allowed.to(q)
            total = q.sum(1, keepdim=True)
            q = torch.where(total > 0, q / total.clamp_min(1e-12), torch.zeros_like(q))
        conf, label = q.max(1, keepdim=True)
        confident = conf > threshold
        if mask is not None:
            confident = confident & mask
    ce = F.cross_entropy(upcast(student_logits), label[:, 0], reduction="none")[:, None]  # (B, 1, *S)
    ce = ce * confident.to(ce.dtype)
    denom = mask.sum() if mask is not None else torch.tensor(float(ce.numel()), device=ce.device)
    return ce.sum() / denom.clamp_min(1.0), confident


class SelfTraining(TeacherMethod):
    """Supervised Dice + CE on masks plus confident pseudo-labels on a strong view of every sample without a mask.

    Args:
        supervised: the supervised term applied to samples with masks.
        threshold: tau in [0, 1).
        unlabelled_weight: lambda_u >= 0.
        pseudo_labels_from: "network" (the network itself, no_grad) or "teacher" (an EMA teacher).
        ema_decay: teacher decay alpha in [0, 1) (with ``pseudo_labels_from="teacher"``).
        infer_with: "teacher" or "student" for validation and prediction (with a teacher).
        strong: the strong augmentation (default :class:`StrongAugment` with its defaults).
    """

    uses = frozenset({Kind.MASK})
    uses_unlabelled = True

    def __init__(self, supervised: Supervised, threshold: float = 0.9, unlabelled_weight: float = 2.0,
                 pseudo_labels_from: str = "network", ema_decay: float = 0.99, infer_with: str = "teacher",
                 strong: StrongAugment | None = None):
        super().__init__()
        if not 0 <= threshold < 1:
            raise ValueError(f"method.pseudo_threshold must be in [0, 1), got {threshold}")
        if unlabelled_weight < 0:
            raise ValueError(f"method.unlabelled_weight must be >= 0, got {unlabelled_weight}")
        if pseudo_labels_from not in ("network", "teacher"):
            raise ValueError(f"method.pseudo_labels_from must be 'network' or 'teacher', got {pseudo_labels_from!r}")
        self.init_teacher(ema_decay, infer_with, use_teacher=pseudo_labels_from == "teacher")
        self.supervised = supervised
        self.threshold, self.unlabelled_weight = threshold, unlabelled_weight
        self.pseudo_labels_from = pseudo_labels_from
        self.strong = strong or StrongAugment()

    @property
    def name(self) -> str:
        return "self_training"

    def forward(self, network: nn.Module, batch, step: int = 0, total_steps: int = 1) -> dict[str, torch.Tensor]:
        if self.pseudo_labels_from == "teacher" and self.teacher is None:
            raise RuntimeError("SelfTraining.setup(network) must be called before training with a teacher")
        x = batch.image
        b = x.shape[0]
        has_mask = batch.has[Kind.MASK].to(x.device)
        idx = torch.nonzero(~has_mask).flatten()
        inputs = x
        if len(idx):
            strong, kept = self.strong(x[idx])
            inputs = torch.cat([x, strong])  # one forward for both views
        outputs = as_list(network(inputs))
        weak = [o[:b] for o in outputs]
        sup = self.supervised.supervised_terms(weak, batch.labels, batch.valid & sample_view(has_mask, x.ndim))
        terms: dict[str, torch.Tensor] = {"supervised": sup.detach()}
        loss = sup
        if len(idx):
            source = weak[0][idx].detach() if self.teacher is None else teacher_logits(self.teacher, x[idx])[0]
            ids = idx.tolist()
            allowed = None
            has_boxes = bool(batch.has[Kind.BOXES].to(x.device)[idx].any())
            tags = batch.tags[idx]
            if has_boxes or bool((tags >= 0).any()):
                allowed = allowed_classes([x.shape[2:]], x.shape[2:], source.shape[1],
                                          boxes=[batch.boxes[i] for i in ids] if has_boxes else None,
                                          box_labels=[batch.box_labels[i] for i in ids] if has_boxes else None,
                                          tags=tags, device=x.device)[0]
            unsup, confident = pseudo_label_loss(outputs[0][b:], source, threshold=self.threshold,
                                                 mask=batch.roi[idx] & kept, allowed=allowed)
            loss = loss + self.unlabelled_weight * unsup
            terms["pseudo"] = unsup.detach()
            terms["pseudo_confident"] = confident.float().mean().detach()
        return self.add_entropy({"loss": loss, **terms, "output": weak[0]}, weak[0], batch)
