"""Multiple-instance learning from image-level tags: global pooling of the logits + binary cross-entropy.

Pinheiro & Collobert, "From image-level to pixel-level labeling with convolutional networks", CVPR 2015:
Log-Sum-Exp pooling of the pixel scores ``x_{p,k}`` of each class,

    s_k = 1/r * log( 1/|Omega| * sum_p exp(r x_{p,k}) ),

tends to the max for ``r -> inf`` and to the mean for ``r -> 0`` (``max - log(|Omega|)/r <= s_k <= max``; they use
r = 5 with a softmax over classes). Here the image is a bag of pixels and every class a separate binary problem:
the pooled score is a logit compared with the tag by binary cross-entropy (multi-label tags; -1 = unknown is
ignored). "max" pooling is the classic MIL bag score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from everylabel.losses.constraints import check_mask, check_reduction, reduce_entries
from everylabel.losses.dice import upcast

POOLS = ("lse", "max", "mean")


def _check_pool(pool: str, r: float) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if not r > 0:
        raise ValueError(f"r (the LSE sharpness) must be > 0, got {r}")


def global_pool(input: torch.Tensor, *, pool: str = "lse", r: float = 5.0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pool every channel over the spatial axes (inside ``mask``): LSE with sharpness ``r``, max or mean.

    Args:
        input: (B, N, *S) scores (logits).
        pool: "lse" (Pinheiro & Collobert), "max" or "mean".
        r: LSE sharpness; ``r -> inf`` gives the max, ``r -> 0`` the mean.
        mask: optional (B, 1, *S) region; a sample whose mask is empty is pooled over the whole image.

    Returns:
        (B, N) pooled scores.
    """
    _check_pool(pool, r)
    x = upcast(input).flatten(2)  # (B, N, P)
    if mask is None:
        m = torch.ones_like(x[:, :1], dtype=torch.bool)
    else:
        m = check_mask(mask, input).flatten(2) > 0  # (B, 1, P)
        m = m | ~m.any(-1, keepdim=True)
    if pool == "mean":
        mf = m.to(x.dtype)
        return (x * mf).sum(-1) / mf.sum(-1)
    filled = x.masked_fill(~m, float("-inf"))
    if pool == "max":
        return filled.amax(-1)
    count = m.sum(-1).to(x.dtype)  # (B, 1)
    return (torch.logsumexp(r * filled, -1) - torch.log(count)) / r


def mil_loss(input: torch.Tensor, *, tags: torch.Tensor, pool: str = "lse", r: float = 5.0,
             mask: torch.Tensor | None = None, include_background: bool = True,
             reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy between globally pooled logits and image-level tags (unknown tags ignored).

    Args:
        input: logits.
        tags: (B, N) with 1 present, 0 absent, -1 unknown (``Batch.tags``).
        pool, r, mask: see :func:`global_pool`; a sample with an empty mask contributes nothing.
        include_background: keep channel 0.
        reduction: "mean" over known tags, "sum", or "none" ((B, N, 1, ...), 0 for unknown tags).

    Shapes:
        input: (B, N, *S); tags: (B, N); mask: (B, 1, *S).

    Returns:
        The loss, reduced as asked.
    """
    check_reduction(reduction)
    _check_pool(pool, r)
    if tags.shape != input.shape[:2]:
        raise ValueError(f"tags must be (B, N) = {tuple(input.shape[:2])}, got {tuple(tags.shape)}")
    score = global_pool(input, pool=pool, r=r, mask=mask)
    known = (tags >= 0).to(score.dtype)
    if mask is not None:
        known = known * (mask.flatten(1).any(1, keepdim=True)).to(score.dtype)
    loss = F.binary_cross_entropy_with_logits(score, tags.clamp(0, 1).to(score.dtype), reduction="none")
    if not include_background and loss.shape[1] > 1:
        loss, known = loss[:, 1:], known[:, 1:]
    return reduce_entries(loss, known, reduction, input.ndim)


class MILLoss(nn.Module):
    """Module form of :func:`mil_loss`."""

    def __init__(self, pool: str = "lse", r: float = 5.0, include_background: bool = True, reduction: str = "mean"):
        super().__init__()
        _check_pool(pool, r)
        check_reduction(reduction)
        self.pool, self.r, self.include_background, self.reduction = pool, r, include_background, reduction

    def forward(self, input: torch.Tensor, *, tags: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return mil_loss(input, tags=tags, pool=self.pool, r=self.r, mask=mask,
                        include_background=self.include_background, reduction=self.reduction)
