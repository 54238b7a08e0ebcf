"""Losses: one family per file, each a pure function plus a thin ``nn.Module`` with MONAI's flags.

``LOSSES`` holds the modules called as ``module(logits, target, mask)``; ``WEAK_LOSSES`` those whose ``forward``
takes annotation tensors of other kinds (boxes, tags, the image for the CRF; see each signature).
"""

from __future__ import annotations

from everylabel.losses.box_prior import BoxPriorLoss, box_prior_loss
from everylabel.losses.cldice import (
    SoftclDiceLoss,
    SoftDiceclDiceLoss,
    soft_cldice_loss,
    soft_dice_cldice_loss,
    soft_skeleton,
)
from everylabel.losses.constraints import (
    SizeConstraintLoss,
    TagSizeLoss,
    extended_log_barrier,
    quadratic_penalty,
    size_constraint_loss,
    tag_size_loss,
)
from everylabel.losses.crf import CRFLoss, bilateral_filter, crf_loss
from everylabel.losses.cross_entropy import MaskedCrossEntropyLoss, masked_cross_entropy
from everylabel.losses.dice import DiceLoss, dice_loss, to_one_hot
from everylabel.losses.dice_ce import DiceCELoss, dice_ce_loss
from everylabel.losses.entropy import (
    EntropyLoss,
    MutualInformationLoss,
    PriorKLLoss,
    entropy_loss,
    mutual_information_loss,
    prior_kl_loss,
)
from everylabel.losses.marginal import MarginalLoss, marginal_log_softmax, marginal_loss
from everylabel.losses.mil import MILLoss, global_pool, mil_loss
from everylabel.losses.multilabel import (
    MultilabelDeepSupervisionLoss,
    multilabel_deep_supervision_loss,
    multilabel_targets,
)
from everylabel.losses.partial import PartialDiceLoss, partial_dice_loss

LOSSES = {
    "dice": DiceLoss,
    "ce": MaskedCrossEntropyLoss,
    "dice_ce": DiceCELoss,
    "cldice": SoftclDiceLoss,
    "dice_cldice": SoftDiceclDiceLoss,
    "partial_ce": MaskedCrossEntropyLoss,
    "partial_dice": PartialDiceLoss,
    "marginal": MarginalLoss,
}

WEAK_LOSSES = {
    "entropy": EntropyLoss,
    "mutual_information": MutualInformationLoss,
    "prior_kl": PriorKLLoss,
    "size_constraint": SizeConstraintLoss,
    "tag_size": TagSizeLoss,
    "box_prior": BoxPriorLoss,
    "mil": MILLoss,
    "multilabel_deep_supervision": MultilabelDeepSupervisionLoss,
    "crf": CRFLoss,
}

__all__ = [
    "LOSSES", "WEAK_LOSSES",
    "BoxPriorLoss", "CRFLoss", "DiceCELoss", "DiceLoss", "EntropyLoss", "MILLoss", "MarginalLoss",
    "MaskedCrossEntropyLoss", "MultilabelDeepSupervisionLoss", "MutualInformationLoss", "PartialDiceLoss",
    "PriorKLLoss", "SizeConstraintLoss", "SoftDiceclDiceLoss", "SoftclDiceLoss", "TagSizeLoss",
    "bilateral_filter", "box_prior_loss", "crf_loss", "dice_ce_loss", "dice_loss", "entropy_loss",
    "extended_log_barrier", "global_pool", "marginal_log_softmax", "marginal_loss", "masked_cross_entropy",
    "mil_loss", "multilabel_deep_supervision_loss", "multilabel_targets", "mutual_information_loss",
    "partial_dice_loss", "prior_kl_loss", "quadratic_penalty", "size_constraint_loss", "soft_cldice_loss",
    "soft_dice_cldice_loss", "soft_skeleton", "tag_size_loss", "to_one_hot",
]
