"""Partial losses: supervision on the annotated pixels only (scribbles, points, sparse slices, fields of view).

* Partial cross-entropy (Tang et al., "On regularized losses for weakly-supervised CNN segmentation", ECCV 2018)
  is :func:`~everylabel.losses.cross_entropy.masked_cross_entropy` with ``mask = valid``; LOSSES["partial_ce"].
* Partial Dice is the soft Dice of the annotated pixels: prediction and target are both multiplied by ``valid``,
  so an unannotated pixel adds nothing to ``|X|``, ``|Y|`` or ``|X.Y|``. This is exactly ``dice_loss(mask=valid)``;
  :func:`partial_dice_loss` only sets the defaults for logits and index targets (softmax, one-hot).

With sparse annotations, prefer ``batch=True`` (one Dice per class over the batch): a per-sample Dice over a few
scribble pixels is noisy, and a class absent from a sample's scribbles has an empty target there: its term stays
near 1 until its predicted mass on the annotated pixels falls to about ``smooth_nr`` (MONAI behaves the same).
"""

from __future__ import annotations

import torch
from torch import nn

from everylabel.losses.dice import _check_flags, dice_loss


def partial_dice_loss(input: torch.Tensor, target: torch.Tensor, *, mask: torch.Tensor | None = None,
                      include_background: bool = True, to_onehot_y: bool = True, softmax: bool = True,
                      sigmoid: bool = False, batch: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                      reduction: str = "mean") -> torch.Tensor:
    """Soft Dice over the annotated pixels only: ``dice_loss(input, target, mask=mask)`` with softmax/one-hot on.

    Args:
        input: logits.
        target: (B, 1, *S) indices (``to_onehot_y=True``) or (B, N, *S) one-hot; any value where ``mask`` is False.
        mask: (B, 1, *S) bool, True on annotated pixels (``Batch.valid``); other pixels contribute neither value
            nor gradient. None = every pixel (the ordinary Dice loss).
        include_background, to_onehot_y, softmax, sigmoid, batch, smooth_nr, smooth_dr, reduction: as in
            :func:`~everylabel.losses.dice.dice_loss` (MONAI's ``DiceLoss``).

    Shapes:
        input: (B, N, *S); target: (B, 1, *S) or (B, N, *S); mask: (B, 1, *S).

    Returns:
        The loss, reduced as asked.
    """
    return dice_loss(input, target, mask=mask, include_background=include_background, to_onehot_y=to_onehot_y,
                     sigmoid=sigmoid, softmax=softmax, batch=batch, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                     reduction=reduction)


class PartialDiceLoss(nn.Module):
    """Module form of :func:`partial_dice_loss` (``DiceLoss`` with softmax and one-hot targets by default)."""

    def __init__(self, include_background: bool = True, to_onehot_y: bool = True, softmax: bool = True,
                 sigmoid: bool = False, batch: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 reduction: str = "mean"):
        super().__init__()
        _check_flags(sigmoid, softmax, reduction)
        self.kw = {"include_background": include_background, "to_onehot_y": to_onehot_y, "softmax": softmax,
                   "sigmoid": sigmoid, "batch": batch, "smooth_nr": smooth_nr, "smooth_dr": smooth_dr,
                   "reduction": reduction}

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return partial_dice_loss(input, target, mask=mask, **self.kw)
