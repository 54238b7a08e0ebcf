"""Inequality constraints on the soft size of each class: quadratic penalty or extended log-barrier.

The soft size of class k is ``V_k = sum_p s_{p,k}``, the sum of its softmax probabilities over the image (or over
``mask``). A constraint ``a_k <= V_k <= b_k`` is enforced with

* the quadratic penalty of Kervadec et al., "Constrained-CNN losses for weakly supervised segmentation", MedIA 54,
  2019: ``relu(a - V)^2 + relu(V - b)^2``;
* the extended log-barrier of Kervadec et al., "Constrained deep networks: Lagrangian optimization via log-barrier
  extensions", EUSIPCO 2022 (arXiv:1904.04205), applied to ``z = a - V`` and ``z = V - b``::

      psi_t(z) = -log(-z) / t                          if z <= -1/t^2
                 t z - log(1/t^2) / t + 1/t            otherwise

  ``t`` is a schedule parameter: the authors start at ``t = 5`` and multiply it by 1.1 after every epoch (set the
  module's ``t`` attribute). ``psi_t`` is continuous with a continuous derivative at ``-1/t^2``; it is negative for
  constraints satisfied with a margin larger than 1, so the loss value is not 0 at feasibility.

As in the authors' code (``LIVIAETS/SizeLoss_WSS``, ``LIVIAETS/extended_logbarrier``) every penalty is divided by
the number of voxels ``|Omega|`` of the image (the full spatial size, also when ``mask`` restricts the sum).
Image-level tags give inclusion and suppression constraints (:func:`tag_size_loss`): a class tagged present must
have ``V_k >= min_size``, a class tagged absent ``V_k <= 0``, an unknown tag (-1) constrains nothing.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from everylabel.losses.dice import REDUCTIONS, upcast

PENALTIES = ("quadratic", "log_barrier")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_penalty(penalty: str, t: float) -> None:
    if penalty not in PENALTIES:
        raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")
    if not t > 0:
        raise ValueError(f"t (the log-barrier parameter) must be > 0, got {t}")


def check_mask(mask: torch.Tensor | None, input: torch.Tensor) -> torch.Tensor | None:
    """(B, 1, *S) mask as a float tensor of the input's dtype, or None."""
    if mask is None:
        return None
    if mask.ndim != input.ndim or mask.shape[0] != input.shape[0] or mask.shape[1] != 1 \
            or mask.shape[2:] != input.shape[2:]:
        raise ValueError(f"mask shape {tuple(mask.shape)} must be (B, 1, *S) for input {tuple(input.shape)}")
    return mask.to(input.dtype)


def reduce_entries(loss: torch.Tensor, weight: torch.Tensor | None, reduction: str, ndim: int) -> torch.Tensor:
    """Reduce (G,) or (G, N) entries; ``weight`` (same shape, 0/1) marks the entries that are defined.

    "mean" averages over defined entries (0 when there are none), "sum" sums them, "none" returns the entries
    (undefined ones 0) reshaped with trailing singleton axes to ``ndim`` dimensions, broadcastable like MONAI's.
    """
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss.reshape(loss.shape + (1,) * (ndim - loss.ndim))
    if reduction == "sum":
        return loss.sum()
    count = loss.new_tensor(float(loss.numel())) if weight is None else weight.sum()
    return loss.sum() / count.clamp_min(1.0)


def extended_log_barrier(z: torch.Tensor, t: float) -> torch.Tensor:
    """Elementwise extended log-barrier ``psi_t(z)`` for the constraint ``z <= 0`` (Kervadec et al. 2022).

    Args:
        z: constraint values, feasible where ``z <= 0``.
        t: barrier parameter (> 0); larger ``t`` approaches the hard barrier.

    Returns:
        ``psi_t(z)`` with the shape of ``z``; finite everywhere, with finite gradients.
    """
    if not t > 0:
        raise ValueError(f"t (the log-barrier parameter) must be > 0, got {t}")
    threshold = -1.0 / t**2
    inside = z <= threshold
    safe = torch.where(inside, z, torch.full_like(z, threshold))
    barrier = -torch.log(-safe) / t
    linear = t * z + (2.0 * math.log(t) + 1.0) / t  # -log(1/t^2)/t + 1/t
    return torch.where(inside, barrier, linear)


def quadratic_penalty(z: torch.Tensor) -> torch.Tensor:
    """``relu(z)^2``, the quadratic penalty for the constraint ``z <= 0`` (Kervadec et al. 2019)."""
    return torch.relu(z) ** 2


def constraint_penalty(z: torch.Tensor, penalty: str, t: float) -> torch.Tensor:
    """Quadratic penalty or extended log-barrier of the constraint ``z <= 0``."""
    return quadratic_penalty(z) if penalty == "quadratic" else extended_log_barrier(z, t)


def _bounds(bound, shape: tuple[int, int], like: torch.Tensor, name: str) -> torch.Tensor:
    if bound is None:
        return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)
    b = torch.as_tensor(bound, dtype=like.dtype, device=like.device)
    try:
        return b.broadcast_to(shape)
    except RuntimeError:
        raise ValueError(f"{name} must broadcast to (B, N) = {shape}, got shape {tuple(b.shape)}") from None


def soft_size(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N) sum of ``probs`` (B, N, *S) over the spatial axes, restricted to ``mask`` (B, 1, *S) if given."""
    if mask is not None:
        probs = probs * mask
    return probs.sum(tuple(range(2, probs.ndim)))


def size_constraint_loss(input: torch.Tensor, *, lower: torch.Tensor | float | None = None,
                         upper: torch.Tensor | float | None = None, mask: torch.Tensor | None = None,
                         penalty: str = "quadratic", t: float = 5.0, include_background: bool = True,
                         reduction: str = "mean") -> torch.Tensor:
    """Penalty of ``lower <= V_k <= upper`` on the soft size ``V_k`` of every class (Kervadec et al. 2019, 2022).

    ``loss_{b,k} = (phi(lower - V) + phi(V - upper)) / |Omega|`` with ``phi`` the quadratic penalty or the extended
    log-barrier ``psi_t``. A bound that is NaN or infinite leaves that side unconstrained (it contributes 0).

    Args:
        input: logits.
        lower: lower bounds in voxels, broadcastable to (B, N), or None.
        upper: upper bounds in voxels, broadcastable to (B, N), or None.
        mask: optional (B, 1, *S) region where sizes are counted; logits elsewhere get no gradient.
        penalty: "quadratic" (MedIA 2019) or "log_barrier" (extended log-barrier).
        t: log-barrier parameter (ignored by the quadratic penalty).
        include_background: keep channel 0.
        reduction: "mean" over (B, N) entries, "sum", or "none" ((B, N, 1, ...)).

    Shapes:
        input: (B, N, *S); mask: (B, 1, *S).

    Returns:
        The penalty, reduced as asked.
    """
    check_reduction(reduction)
    check_penalty(penalty, t)
    x = upcast(input)
    m = check_mask(mask, x)
    probs = torch.softmax(x, 1)
    size = soft_size(probs, m)  # (B, N)
    shape = tuple(size.shape)
    lo, hi = _bounds(lower, shape, size, "lower"), _bounds(upper, shape, size, "upper")
    loss = size.new_zeros(shape)
    for z, active in ((lo - size, torch.isfinite(lo)), (size - hi, torch.isfinite(hi))):
        z = torch.where(active, z, torch.zeros_like(z))
        loss = loss + torch.where(active, constraint_penalty(z, penalty, t), torch.zeros_like(z))
    loss = loss / math.prod(x.shape[2:])
    if not include_background and loss.shape[1] > 1:
        loss = loss[:, 1:]
    return reduce_entries(loss, None, reduction, x.ndim)


def tag_bounds(tags: torch.Tensor, region: torch.Tensor, min_size: float = 1.0,
               min_fraction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Size bounds from tags: present -> lower ``max(min_size, min_fraction * region)``; absent -> upper 0.

    Args:
        tags: (B, N) int with 1 present, 0 absent, -1 unknown.
        region: (B, 1) number of voxels where sizes are counted.

    Returns:
        (lower, upper), each (B, N) with NaN where unconstrained.
    """
    nan = torch.full(tags.shape, float("nan"), dtype=region.dtype, device=region.device)
    need = torch.clamp(min_fraction * region, min=min_size).expand(tags.shape)
    lower = torch.where(tags == 1, need, nan)
    upper = torch.where(tags == 0, torch.zeros_like(nan), nan)
    return lower, upper


def _check_tag_args(min_size: float, min_fraction: float) -> None:
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0 voxels, got {min_size}")
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")


def tag_size_loss(input: torch.Tensor, *, tags: torch.Tensor, mask: torch.Tensor | None = None,
                  min_size: float = 1.0, min_fraction: float = 0.0, penalty: str = "quadratic", t: float = 5.0,
                  include_background: bool = True, reduction: str = "mean") -> torch.Tensor:
    """Inclusion / suppression size constraints from image-level tags.

    Tagged present (1): ``V_k >= max(min_size, min_fraction * |region|)`` (inclusion); tagged absent (0):
    ``V_k <= 0`` (suppression: any probability mass of the class is penalised); unknown (-1): unconstrained. The
    region is ``mask`` when given, else the whole image. See :func:`size_constraint_loss` for the penalties.

    Args:
        input: logits.
        tags: (B, N) with 1 present, 0 absent, -1 unknown (``Batch.tags``).
        mask: optional (B, 1, *S) region where sizes are counted.
        min_size: smallest size of a present class, in voxels.
        min_fraction: smallest size of a present class as a fraction of the region.
        penalty, t, include_background, reduction: as in :func:`size_constraint_loss`.

    Shapes:
        input: (B, N, *S); tags: (B, N); mask: (B, 1, *S).
    """
    _check_tag_args(min_size, min_fraction)
    if tags.shape != input.shape[:2]:
        raise ValueError(f"tags must be (B, N) = {tuple(input.shape[:2])}, got {tuple(tags.shape)}")
    x = upcast(input)
    if mask is None:
        region = x.new_full((x.shape[0], 1), float(math.prod(x.shape[2:])))
    else:
        region = check_mask(mask, x).flatten(1).sum(1, keepdim=True)
    lower, upper = tag_bounds(tags, region, min_size, min_fraction)
    return size_constraint_loss(x, lower=lower, upper=upper, mask=mask, penalty=penalty, t=t,
                                include_background=include_background, reduction=reduction)


class SizeConstraintLoss(nn.Module):
    """Module form of :func:`size_constraint_loss`; ``t`` is an attribute a schedule may change between epochs."""

    def __init__(self, penalty: str = "quadratic", t: float = 5.0, include_background: bool = True,
                 reduction: str = "mean"):
        super().__init__()
        check_penalty(penalty, t)
        check_reduction(reduction)
        self.penalty, self.t = penalty, t
        self.include_background, self.reduction = include_background, reduction

    def forward(self, input: torch.Tensor, *, lower: torch.Tensor | float | None = None,
                upper: torch.Tensor | float | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        return size_constraint_loss(input, lower=lower, upper=upper, mask=mask, penalty=self.penalty, t=self.t,
                                    include_background=self.include_background, reduction=self.reduction)


class TagSizeLoss(nn.Module):
    """Module form of :func:`tag_size_loss`; ``t`` is an attribute a schedule may change between epochs."""

    def __init__(self, min_size: float = 1.0, min_fraction: float = 0.0, penalty: str = "quadratic", t: float = 5.0,
                 include_background: bool = True, reduction: str = "mean"):
        super().__init__()
        _check_tag_args(min_size, min_fraction)
        check_penalty(penalty, t)
        check_reduction(reduction)
        self.min_size, self.min_fraction = min_size, min_fraction
        self.penalty, self.t = penalty, t
        self.include_background, self.reduction = include_background, reduction

    def forward(self, input: torch.Tensor, *, tags: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return tag_size_loss(input, tags=tags, mask=mask, min_size=self.min_size, min_fraction=self.min_fraction,
                             penalty=self.penalty, t=self.t, include_background=self.include_background,
                             reduction=self.reduction)
