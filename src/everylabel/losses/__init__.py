"""Losses: one family per file, each a pure function plus a thin ``nn.Module`` with MONAI's flags."""

from __future__ import annotations

from everylabel.losses.cldice import (
    SoftclDiceLoss,
    SoftDiceclDiceLoss,
    soft_cldice_loss,
    soft_dice_cldice_loss,
    soft_skeleton,
)
from everylabel.losses.cross_entropy import MaskedCrossEntropyLoss, masked_cross_entropy
from everylabel.losses.dice import DiceLoss, dice_loss, to_one_hot
from everylabel.losses.dice_ce import DiceCELoss, dice_ce_loss

LOSSES = {
    "dice": DiceLoss,
    "ce": MaskedCrossEntropyLoss,
    "dice_ce": DiceCELoss,
    "cldice": SoftclDiceLoss,
    "dice_cldice": SoftDiceclDiceLoss,
}

__all__ = ["LOSSES", "DiceLoss", "dice_loss", "MaskedCrossEntropyLoss", "masked_cross_entropy", "DiceCELoss",
           "dice_ce_loss", "to_one_hot", "SoftclDiceLoss", "soft_cldice_loss", "SoftDiceclDiceLoss",
           "soft_dice_cldice_loss", "soft_skeleton"]
