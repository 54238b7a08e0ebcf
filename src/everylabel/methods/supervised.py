"""Full-mask supervision: Dice + cross-entropy restricted to ``valid``, with deep supervision.

The loss of nnU-Net (Isensee et al., Nature Methods 2021): soft Dice (batch Dice, background excluded) plus
cross-entropy at every decoder scale, weighted 1, 1/2, 1/4, ... (coarsest 0) and normalised. Voxels outside
``valid`` (not annotated, outside a field of view, or an unlabelled sample) contribute nothing.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from everylabel.annotations.kinds import Kind
from everylabel.losses.cldice import soft_cldice_loss
from everylabel.losses.dice_ce import dice_ce_loss
from everylabel.methods.base import Method, as_list, deep_supervision_weights, downsample_nearest, sample_view


class Supervised(Method):
    """Dice + CE on dense masks (MASK kind), masked by ``valid``.

    Args:
        dice_weight: weight of the Dice term.
        ce_weight: weight of the cross-entropy term.
        include_background: include class 0 in the Dice term.
        batch_dice: compute Dice over the whole batch (nnU-Net) rather than per sample.
        deep_supervision: use every decoder scale the network returns.
        cldice_weight: weight alpha of soft-clDice at full resolution (Shit et al., CVPR 2021) for tubular
            targets; the loss becomes (1 - alpha) * DiceCE + alpha * (1 - softclDice). 0 = off.
        cldice_iterations: soft-skeleton iterations.
    """

    uses = frozenset({Kind.MASK})

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, include_background: bool = False,
                 batch_dice: bool = True, deep_supervision: bool = True, cldice_weight: float = 0.0,
                 cldice_iterations: int = 3):
        super().__init__()
        if not 0.0 <= cldice_weight <= 1.0:
            raise ValueError(f"cldice_weight must be in [0, 1], got {cldice_weight}")
        self.cldice_weight, self.cldice_iterations = cldice_weight, cldice_iterations
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError(f"dice_weight and ce_weight must be >= 0 and not both 0, got {dice_weight}, {ce_weight}")
        self.dice_weight, self.ce_weight = dice_weight, ce_weight
        self.include_background, self.batch_dice = include_background, batch_dice
        self.deep_supervision = deep_supervision

    @property
    def name(self) -> str:
        return "supervised"

    def supervised_terms(self, outputs: list[torch.Tensor], labels: torch.Tensor,
                         valid: torch.Tensor) -> torch.Tensor:
        """Deep-supervised Dice + CE of a list of logits against (B, 1, *S) labels inside ``valid``."""
        if not self.deep_supervision:
            outputs = outputs[:1]
        weights = deep_supervision_weights(len(outputs))
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights, outputs):
            if w == 0:
                continue
            size = tuple(out.shape[2:])
            lab = downsample_nearest(labels, size)
            val = downsample_nearest(valid, size)
            total = total + w * dice_ce_loss(out, lab, mask=val, include_background=self.include_background,
                                             batch=self.batch_dice, lambda_dice=self.dice_weight,
                                             lambda_ce=self.ce_weight)
        if self.cldice_weight:
            cl = soft_cldice_loss(outputs[0], labels, mask=valid, iterations=self.cldice_iterations,
                                  include_background=False, to_onehot_y=True, softmax=True)
            total = (1.0 - self.cldice_weight) * total + self.cldice_weight * cl
        return total

    def forward(self, network: nn.Module, batch, step: int = 0, total_steps: int = 1) -> dict[str, torch.Tensor]:
        outputs = as_list(network(batch.image))
        has_mask = sample_view(batch.has[Kind.MASK].to(batch.valid.device), batch.valid.ndim)
        loss = self.supervised_terms(outputs, batch.labels, batch.valid & has_mask)
        return self.add_entropy({"loss": loss, "dice_ce": loss.detach(), "output": outputs[0]}, outputs[0], batch)
