"""Cross-entropy restricted to a ``valid`` region (partial cross-entropy when the region is sparse).

With a full mask this equals ``torch.nn.CrossEntropyLoss`` (as used by ``monai.losses.DiceCELoss``); with a sparse
mask it is the partial cross-entropy of scribble-supervised segmentation (Tang et al., ECCV 2018, Eq. 1).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from everylabel.losses.dice import REDUCTIONS, upcast


def masked_cross_entropy(input: torch.Tensor, target: torch.Tensor, *, mask: torch.Tensor | None = None,
                         weight: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Softmax cross-entropy averaged over the voxels where ``mask`` is True.

    Args:
        input: logits.
        target: class indices (B, 1, *S) or one-hot / soft targets (B, N, *S).
        mask: optional (B, 1, *S) bool; other voxels contribute neither value nor gradient.
        weight: optional (N,) class weights.
        reduction: "mean" (over masked voxels; 0 if none), "sum", or "none" ((B, 1, *S) map, 0 outside the mask).

    Shapes:
        input: (B, N, *S).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    logp = F.log_softmax(upcast(input), dim=1)
    if target.shape[1] == 1 and input.shape[1] > 1:
        idx = target.long().clamp(0, input.shape[1] - 1)
        nll = -logp.gather(1, idx)  # (B, 1, *S)
        if weight is not None:
            nll = nll * weight.to(nll)[idx]
    elif target.shape == input.shape:
        t = target.to(logp.dtype)
        if weight is not None:
            t = t * weight.to(t).view(1, -1, *([1] * (input.ndim - 2)))
        nll = -(t * logp).sum(1, keepdim=True)
    else:
        raise ValueError(f"target shape {tuple(target.shape)} fits neither indices (B, 1, *S) nor one-hot "
                         f"{tuple(input.shape)}")
    if mask is not None:
        m = mask.to(nll.dtype)
        nll = nll * m
        denom = m.sum()
    else:
        denom = torch.tensor(float(nll.numel()), device=nll.device)
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return nll.sum() / denom.clamp_min(1.0)


class MaskedCrossEntropyLoss(nn.Module):
    """Module form of :func:`masked_cross_entropy`."""

    def __init__(self, weight: torch.Tensor | None = None, reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.reduction = reduction

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_cross_entropy(input, target, mask=mask, weight=self.weight, reduction=self.reduction)
