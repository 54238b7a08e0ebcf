"""Mean teacher: a student trained on labels plus consistency with an EMA teacher on every sample.

Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017; for segmentation as in Reiß et al.,
"Every Annotation Counts", CVPR 2021, Eq. 10: the teacher's weights are the exponential moving average
``theta'_t = alpha * theta'_{t-1} + (1 - alpha) * theta_t`` of the student's, and the student is pulled towards the
teacher's predictions under different input noise, on labelled and unlabelled samples alike, with a weight ramped
up as ``exp(-5 (1 - t)^2)`` (Laine & Aila 2017) over the first part of the schedule.

Default decay: alpha = 0.99, with Tarvainen's warm-up ``min(1 - 1 / (step + 1), alpha)`` so the early teacher
follows the student. The teacher averages the last ~1 / (1 - alpha) students: 100 steps, 5 % of the default 2,000-step
schedule and an eighth of the 800-step consistency ramp-up, so it is smoother than the student yet never more than a
few percent of the schedule behind it. Reiß et al. found alpha = 0.5 best for their short schedule: a 2-step horizon
makes the teacher almost the student (a Pi-model with input noise), which only pays off when the run is too short for
any averaging; alpha = 0.999 (Tarvainen's late-training value) would average over half of our schedule and lag behind
the poly-decayed learning rate's large early moves. For runs of a few hundred steps, lower ``method.ema_decay`` to
0.9-0.95 (horizon 10-20 steps).

The teacher helpers (:func:`make_teacher`, :func:`ema_decay_at`, :func:`teacher_logits`) are shared with the other
teacher-based methods (``mean_taught``, ``self_training`` with ``pseudo_labels_from="teacher"``). The teacher is a
deep copy of the network made in :meth:`Method.setup`, on the network's device, and updated in place: no per-step
device copies.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from everylabel.annotations.kinds import Kind
from everylabel.methods.base import Method, as_list, sample_view
from everylabel.methods.supervised import Supervised


def sigmoid_rampup(progress: float) -> float:
    """``exp(-5 (1 - t)^2)`` for t = progress clipped to [0, 1] (Laine & Aila, ICLR 2017)."""
    t = min(max(progress, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher = decay * teacher + (1 - decay) * student`` for parameters; floating buffers likewise.

    Raises:
        ValueError: when ``decay`` is outside [0, 1].
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        if t.dtype.is_floating_point:
            t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
        else:
            t.copy_(s)


def check_ema_decay(decay: float) -> None:
    """Raise ValueError unless ``decay`` is in [0, 1) (1 would freeze the teacher at its initial weights)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"method.ema_decay must be in [0, 1), got {decay}")


def make_teacher(network: nn.Module) -> nn.Module:
    """A frozen deep copy of ``network`` (same device), in eval mode: no dropout, normalisation statistics fixed."""
    teacher = copy.deepcopy(network)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def ema_decay_at(step: int, decay: float) -> float:
    """Tarvainen & Valpola's warm-up: ``min(1 - 1 / (step + 1), decay)`` after ``step`` completed steps."""
    return min(1.0 - 1.0 / (step + 1), decay)


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: torch.Tensor, all_scales: bool = False) -> list[torch.Tensor]:
    """The teacher's logits for ``x``: full resolution only (``[logits]``), or every scale with ``all_scales``."""
    if not all_scales and hasattr(teacher, "predict_logits"):
        return [teacher.predict_logits(x)]
    out = as_list(teacher(x))
    return out if all_scales else out[:1]


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "mse",
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Consistency between softmax probabilities: mean squared error or KL(teacher || student).

    Shapes:
        student_logits, teacher_logits: (B, N, *S); mask: (B, 1, *S) bool or None.
    """
    p_s = torch.softmax(student_logits.float(), 1)
    p_t = torch.softmax(teacher_logits.float(), 1).detach()
    if kind == "mse":
        per_voxel = ((p_s - p_t) ** 2).sum(1, keepdim=True)
    elif kind == "kl":
        per_voxel = (p_t * (torch.log(p_t.clamp_min(1e-8)) - F.log_softmax(student_logits.float(), 1))).sum(
            1, keepdim=True)
    else:
        raise ValueError(f"consistency must be 'mse' or 'kl', got {kind!r}")
    if mask is None:
        return per_voxel.mean()
    m = mask.to(per_voxel.dtype)
    return (per_voxel * m).sum() / m.sum().clamp_min(1.0)


class TeacherMethod(Method):
    """Base of the methods with an EMA teacher (mean teacher, mean-taught deep supervision, self-training with a
    teacher): creates the teacher in :meth:`setup`, updates it after every step, answers inference with it or the
    student, and ramps the unsupervised weight up over the first ``rampup_fraction`` of the schedule."""

    def init_teacher(self, ema_decay: float, infer_with: str, consistency_weight: float = 1.0,
                     rampup_fraction: float = 0.0, noise_std: float = 0.0, use_teacher: bool = True) -> None:
        """Check and store the teacher settings (call from ``__init__``)."""
        check_ema_decay(ema_decay)
        if infer_with not in ("teacher", "student"):
            raise ValueError(f"method.infer_with must be 'teacher' or 'student', got {infer_with!r}")
        if consistency_weight < 0 or noise_std < 0 or not 0 <= rampup_fraction <= 1:
            raise ValueError("method.consistency_weight and noise_std must be >= 0 and rampup_fraction in [0, 1]")
        self.ema_decay, self.infer_with, self.use_teacher = ema_decay, infer_with, use_teacher
        self.consistency_weight, self.rampup_fraction, self.noise_std = consistency_weight, rampup_fraction, noise_std
        self.teacher: nn.Module | None = None

    def setup(self, network: nn.Module) -> None:
        if self.use_teacher:
            self.teacher = make_teacher(network)

    def after_step(self, network: nn.Module, step: int) -> None:
        if self.teacher is not None:
            ema_update(self.teacher, network, ema_decay_at(step, self.ema_decay))

    def inference_network(self, network: nn.Module) -> nn.Module:
        return self.teacher if self.infer_with == "teacher" and self.teacher is not None else network

    def weight(self, step: int, total_steps: int) -> float:
        """The unsupervised weight at ``step``: ``consistency_weight`` after a sigmoid ramp-up."""
        if self.rampup_fraction == 0:
            return self.consistency_weight
        return self.consistency_weight * sigmoid_rampup(step / max(1.0, self.rampup_fraction * total_steps))


class MeanTeacher(TeacherMethod):
    """Supervised Dice + CE on masks plus student-teacher consistency on all samples.

    Args:
        supervised: the supervised term applied to samples with masks.
        ema_decay: teacher decay alpha in [0, 1).
        consistency: "mse" or "kl" on probabilities.
        consistency_weight: maximum weight of the consistency term.
        rampup_fraction: fraction of the schedule over which the weight ramps up (0 = constant).
        noise_std: std of the Gaussian noise added independently to the student's and the teacher's input.
        infer_with: "teacher" or "student" for validation and prediction.
    """

    uses = frozenset({Kind.MASK})
    uses_unlabelled = True

    def __init__(self, supervised: Supervised, ema_decay: float = 0.99, consistency: str = "mse",
                 consistency_weight: float = 1.0, rampup_fraction: float = 0.4, noise_std: float = 0.1,
                 infer_with: str = "teacher"):
        super().__init__()
        if consistency not in ("mse", "kl"):
            raise ValueError(f"method.consistency must be 'mse' or 'kl', got {consistency!r}")
        self.init_teacher(ema_decay, infer_with, consistency_weight, rampup_fraction, noise_std)
        self.supervised, self.consistency = supervised, consistency

    @property
    def name(self) -> str:
        return "mean_teacher"

    def forward(self, network: nn.Module, batch, step: int = 0, total_steps: int = 1) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            raise RuntimeError("MeanTeacher.setup(network) must be called before training")
        x = batch.image
        student_in = x + self.noise_std * torch.randn_like(x) if self.noise_std else x
        teacher_in = x + self.noise_std * torch.randn_like(x) if self.noise_std else x
        outputs = as_list(network(student_in))
        has_mask = sample_view(batch.has[Kind.MASK].to(x.device), x.ndim)
        sup = self.supervised.supervised_terms(outputs, batch.labels, batch.valid & has_mask)
        t_out = teacher_logits(self.teacher, teacher_in)[0]
        cons = consistency_loss(outputs[0], t_out, self.consistency, mask=batch.roi)
        w = self.weight(step, total_steps)
        terms = {"loss": sup + w * cons, "supervised": sup.detach(), "consistency": cons.detach(),
                 "consistency_weight": torch.tensor(w), "output": outputs[0]}
        return self.add_entropy(terms, outputs[0], batch)
