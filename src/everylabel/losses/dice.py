"""Soft Dice loss with MONAI's conventions, optionally restricted to a ``valid`` region.

Milletari et al., "V-Net", 3DV 2016; the smoothing terms and flags follow ``monai.losses.DiceLoss``. Pixels where
``mask`` is False contribute nothing to the loss or its gradient.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum", "none")


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors (from autocast) to float32; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_flags(sigmoid: bool, softmax: bool, reduction: str) -> None:
    if sigmoid and softmax:
        raise ValueError("sigmoid=True and softmax=True are mutually exclusive; choose one")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def to_one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, *S) class indices -> (B, N, *S) float one-hot."""
    if target.shape[1] != 1:
        raise ValueError(f"index targets must have one channel, got shape {tuple(target.shape)}")
    return F.one_hot(target[:, 0].long().clamp_min(0), num_classes).movedim(-1, 1).to(torch.float32)


def prepare_target(input: torch.Tensor, target: torch.Tensor, to_onehot_y: bool) -> torch.Tensor:
    n = input.shape[1]
    if to_onehot_y:
        if n == 1:
            raise ValueError("to_onehot_y=True needs more than one output channel")
        target = to_one_hot(target, n)
    if target.shape != input.shape:
        raise ValueError(f"target shape {tuple(target.shape)} does not match input {tuple(input.shape)} "
                         "(use to_onehot_y=True for index targets)")
    return target.to(input.dtype)


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def prepare_probabilities(input: torch.Tensor, target: torch.Tensor, *, mask: torch.Tensor | None,
                          include_background: bool, to_onehot_y: bool, sigmoid: bool,
                          softmax: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared front of region losses: activation, one-hot target, zeroing outside ``mask``, background removal.

    Shapes:
        input: (B, N, *S) logits; target: (B, 1, *S) or (B, N, *S); mask: (B, 1, *S).
    Returns:
        (probabilities, one-hot target), both (B, N', *S) with N' = N - 1 without background.
    """
    n = input.shape[1]
    if sigmoid:
        input = torch.sigmoid(input)
    if softmax:
        if n == 1:
            raise ValueError("softmax=True with a single channel is meaningless; use sigmoid=True")
        input = torch.softmax(upcast(input), 1)
    input = upcast(input)
    target = prepare_target(input, target, to_onehot_y).contiguous()  # one-hot comes channels-last
    if mask is not None:
        if mask.shape[1] != 1 or mask.shape[2:] != input.shape[2:] or mask.shape[0] != input.shape[0]:
            raise ValueError(f"mask shape {tuple(mask.shape)} must be (B, 1, *S) for input {tuple(input.shape)}")
        m = mask.to(input.dtype)
        input = input * m
        target = target * m
    if not include_background and n > 1:
        input, target = input[:, 1:], target[:, 1:]
    return input, target


def dice_loss(input: torch.Tensor, target: torch.Tensor, *, mask: torch.Tensor | None = None,
              include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
              softmax: bool = False, squared_pred: bool = False, batch: bool = False, smooth_nr: float = 1e-5,
              smooth_dr: float = 1e-5, reduction: str = "mean") -> torch.Tensor:
    """Soft Dice loss ``1 - (2 * |X.Y| + smooth_nr) / (|X| + |Y| + smooth_dr)``.

    Args:
        input: logits (or probabilities when neither ``sigmoid`` nor ``softmax``).
        target: indices (B, 1, *S) with ``to_onehot_y=True``, or one-hot (B, N, *S).
        mask: optional (B, 1, *S) bool/float; only voxels where it is True count.
        include_background: keep channel 0 (ignored when N == 1).
        batch: sum over the batch before the ratio (one Dice per class).
        reduction: "mean" | "sum" | "none" (shape (B, N, 1, ...) or (N, 1, ...) with ``batch``, broadcastable).

    Shapes:
        input: (B, N, *S); target: (B, 1, *S) or (B, N, *S); mask: (B, 1, *S).

    Returns:
        The loss, reduced as asked.
    """
    _check_flags(sigmoid, softmax, reduction)
    input, target = prepare_probabilities(input, target, mask=mask, include_background=include_background,
                                          to_onehot_y=to_onehot_y, sigmoid=sigmoid, softmax=softmax)
    dims = list(range(2, input.ndim))
    if batch:
        dims = [0] + dims
    inter = (input * target).sum(dims)
    pred_o = (input * input).sum(dims) if squared_pred else input.sum(dims)
    ground_o = (target * target).sum(dims) if squared_pred else target.sum(dims)
    loss = 1.0 - (2.0 * inter + smooth_nr) / (pred_o + ground_o + smooth_dr)
    if reduction == "none":
        loss = loss.reshape(loss.shape + (1,) * (input.ndim - 2))  # broadcastable like MONAI
    return reduce(loss, reduction)


class DiceLoss(nn.Module):
    """Module form of :func:`dice_loss` (same flags as ``monai.losses.DiceLoss``)."""

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, squared_pred: bool = False, batch: bool = False, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, reduction: str = "mean"):
        super().__init__()
        _check_flags(sigmoid, softmax, reduction)
        self.kw = dict(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
                       softmax=softmax, squared_pred=squared_pred, batch=batch, smooth_nr=smooth_nr,
                       smooth_dr=smooth_dr, reduction=reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return dice_loss(input, target, mask=mask, **self.kw)
