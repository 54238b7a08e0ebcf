"""Dice + cross-entropy (``monai.losses.DiceCELoss`` conventions), restricted to a ``valid`` region."""

from __future__ import annotations

import torch
import torch.nn as nn

from everylabel.losses.cross_entropy import masked_cross_entropy
from everylabel.losses.dice import dice_loss


def dice_ce_loss(input: torch.Tensor, target: torch.Tensor, *, mask: torch.Tensor | None = None,
                 include_background: bool = True, batch: bool = False, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> torch.Tensor:
    """``lambda_dice * Dice(softmax(input)) + lambda_ce * CE(input)`` on index targets, both masked.

    Shapes:
        input: (B, N, *S) logits, N >= 2; target: (B, 1, *S) indices; mask: (B, 1, *S).
    """
    if lambda_dice < 0 or lambda_ce < 0:
        raise ValueError(f"lambda_dice and lambda_ce must be >= 0, got {lambda_dice}, {lambda_ce}")
    d = dice_loss(input, target, mask=mask, include_background=include_background, to_onehot_y=True,
                  softmax=True, batch=batch, smooth_nr=smooth_nr, smooth_dr=smooth_dr)
    ce = masked_cross_entropy(input, target, mask=mask)
    return lambda_dice * d + lambda_ce * ce


class DiceCELoss(nn.Module):
    """Module form of :func:`dice_ce_loss`."""

    def __init__(self, include_background: bool = True, batch: bool = False, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5):
        super().__init__()
        if lambda_dice < 0 or lambda_ce < 0:
            raise ValueError(f"lambda_dice and lambda_ce must be >= 0, got {lambda_dice}, {lambda_ce}")
        self.kw = dict(include_background=include_background, batch=batch, lambda_dice=lambda_dice,
                       lambda_ce=lambda_ce, smooth_nr=smooth_nr, smooth_dr=smooth_dr)

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return dice_ce_loss(input, target, mask=mask, **self.kw)
