"""Marginal Dice + cross-entropy (and exclusion loss) for class-partial masks.

A partial mask labels only some classes (``Batch.classes``, background always included); a voxel of an unlabelled
class is stored as background. The marginal loss merges the probabilities of the classes the mask does not cover
into background before Dice and cross-entropy, so predicting such a class where the mask says "background" is not
punished:

    s'_0 = s_0 + sum_{k not covered} s_k,     s'_k = s_k for covered k.

Shi, Xiao & Zhou, "Marginal loss and exclusion loss for partially supervised multi-organ segmentation", MedIA 2021;
Fang & Yan, "Multi-organ segmentation over partially labeled datasets with multi-scale feature abstraction",
IEEE TMI 2020 (target adaptive loss, the same merge for cross-entropy).

The exclusion loss (Shi et al.) uses that organs do not overlap: voxels labelled as a covered class j are
certainly not class k != j. With the exclusion map ``e_k = 1 - g_k`` for covered k and ``e_k = 1 - g_0`` (voxels of
covered foreground classes) for uncovered k, it minimises the soft Dice *coefficient* between ``s_k`` and ``e_k``.
Deviations, on purpose: probabilities are merged, as in the paper (the authors' released code adds the logits before
the softmax); the exclusion coefficient has no numerator smoothing, so no overlap gives exactly 0; it applies to every
sample (with a full mask it only adds ``s_k`` outside ``g_k``, like the CE already does).
"""

from __future__ import annotations

import torch
from torch import nn

from everylabel.losses.constraints import check_mask
from everylabel.losses.dice import to_one_hot, upcast


def _check_lambdas(lambda_dice: float, lambda_ce: float, lambda_exclusion: float) -> None:
    if min(lambda_dice, lambda_ce, lambda_exclusion) < 0:
        raise ValueError(f"lambda_dice, lambda_ce and lambda_exclusion must be >= 0, got {lambda_dice}, {lambda_ce}, "
                         f"{lambda_exclusion}")


def _covered(classes: torch.Tensor | None, input: torch.Tensor) -> torch.Tensor:
    b, n = input.shape[:2]
    if classes is None:
        return torch.ones((b, n), dtype=torch.bool, device=input.device)
    if classes.shape != (b, n):
        raise ValueError(f"classes must be (B, N) = {(b, n)} bool, got {tuple(classes.shape)}")
    covered = classes.to(device=input.device, dtype=torch.bool).clone()
    covered[:, 0] = True
    return covered


def marginal_log_softmax(input: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
    """Log of the merged probabilities: channel 0 holds ``log(s_0 + sum_{uncovered} s_k)``, covered channels
    ``log s_k``, uncovered channels ``-inf`` (probability 0). ``classes`` (B, N) bool; None = all covered."""
    x = upcast(input)
    logp = torch.log_softmax(x, 1)
    covered = _covered(classes, x)
    view = (*covered.shape, *([1] * (x.ndim - 2)))
    to_bg = ~covered.clone()
    to_bg[:, 0] = True
    bg = torch.logsumexp(logp.masked_fill(~to_bg.view(view), float("-inf")), 1, keepdim=True)  # (B, 1, *S)
    merged = torch.where(covered.view(view), logp, torch.full_like(logp, float("-inf")))
    return torch.cat([bg, merged[:, 1:]], 1)


def marginal_loss(input: torch.Tensor, target: torch.Tensor, *, classes: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None, include_background: bool = True, batch: bool = False,
                  lambda_dice: float = 1.0, lambda_ce: float = 1.0, lambda_exclusion: float = 0.0,
                  smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> torch.Tensor:
    """Marginal Dice + CE (Shi et al. 2021; Fang & Yan 2020), plus ``lambda_exclusion`` times the exclusion loss.

    Dice and CE use the merged probabilities ``s'``. The Dice is averaged over the (sample, class) entries whose
    class the sample's mask covers (classes covered anywhere in the batch with ``batch=True``); with every class
    covered (``classes=None``) the loss equals :func:`~everylabel.losses.dice_ce.dice_ce_loss`.

    Args:
        input: logits.
        target: (B, 1, *S) indices; only covered classes may occur where ``mask`` is True.
        classes: (B, N) bool, the classes each partial mask covers (``Batch.classes``); background is always
            covered. None = every class.
        mask: optional (B, 1, *S) bool ``valid`` region; other voxels contribute neither value nor gradient.
        include_background: keep channel 0 in the Dice and exclusion terms.
        batch: one Dice per class over the batch.
        lambda_dice, lambda_ce, lambda_exclusion: weights (Shi et al. use 1, 1, 2).
        smooth_nr, smooth_dr: Dice smoothing (MONAI's meaning).

    Shapes:
        input: (B, N, *S) with N >= 2; target: (B, 1, *S); classes: (B, N); mask: (B, 1, *S).

    Returns:
        The scalar loss.
    """
    _check_lambdas(lambda_dice, lambda_ce, lambda_exclusion)
    b, n = input.shape[:2]
    if n < 2 or target.shape != (b, 1, *input.shape[2:]):
        raise ValueError(f"marginal_loss needs N >= 2 logits and (B, 1, *S) index targets, got input "
                         f"{tuple(input.shape)} and target {tuple(target.shape)}")
    x = upcast(input)
    m = check_mask(mask, x)
    covered = _covered(classes, x)
    idx = target.long().clamp(0, n - 1)
    labelled = idx.flatten(1) if m is None else idx.flatten(1)[m.flatten(1) > 0]
    rows = torch.arange(b, device=x.device)[:, None].expand(idx.flatten(1).shape)
    rows = rows if m is None else rows[m.flatten(1) > 0]
    if not covered[rows, labelled].all():
        bad = sorted(set(labelled[~covered[rows, labelled]].tolist()))
        raise ValueError(f"target holds classes {bad} that the partial masks do not cover (classes)")
    merged = marginal_log_softmax(x, covered)
    denom = m.sum().clamp_min(1.0) if m is not None else x.new_tensor(float(idx.numel()))
    total = x.new_zeros(())
    if lambda_ce:
        nll = -merged.gather(1, idx)  # (B, 1, *S)
        if m is not None:
            nll = nll * m
        total = total + lambda_ce * nll.sum() / denom
    onehot = to_one_hot(idx, n).to(x.dtype)
    dims = list(range(2, x.ndim))
    if batch:
        dims = [0] + dims
    first = 0 if include_background else 1
    if lambda_dice:
        pred = merged.exp()
        tgt = onehot
        if m is not None:
            pred, tgt = pred * m, tgt * m
        inter, so, go = (pred * tgt).sum(dims), pred.sum(dims), tgt.sum(dims)
        dice = 1.0 - (2.0 * inter + smooth_nr) / (so + go + smooth_dr)  # (B, N) or (N,)
        weight = (covered.any(0) if batch else covered).to(x.dtype)
        dice, weight = dice[..., first:], weight[..., first:]
        total = total + lambda_dice * (dice * weight).sum() / weight.sum().clamp_min(1.0)
    if lambda_exclusion:
        probs = torch.softmax(x, 1)
        view = (b, n, *([1] * (x.ndim - 2)))
        excl = torch.where(covered.view(view), 1.0 - onehot, (1.0 - onehot[:, :1]).expand_as(onehot))
        if m is not None:
            probs, excl = probs * m, excl * m
        coeff = 2.0 * (probs * excl).sum(dims) / (probs.sum(dims) + excl.sum(dims) + smooth_dr)
        total = total + lambda_exclusion * coeff[..., first:].mean()
    return total


class MarginalLoss(nn.Module):
    """Module form of :func:`marginal_loss`; ``classes`` is a keyword of ``forward`` (None = every class)."""

    def __init__(self, include_background: bool = True, batch: bool = False, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, lambda_exclusion: float = 0.0, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5):
        super().__init__()
        _check_lambdas(lambda_dice, lambda_ce, lambda_exclusion)
        self.kw = {"include_background": include_background, "batch": batch, "lambda_dice": lambda_dice,
                   "lambda_ce": lambda_ce, "lambda_exclusion": lambda_exclusion, "smooth_nr": smooth_nr,
                   "smooth_dr": smooth_dr}

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, *,
                classes: torch.Tensor | None = None) -> torch.Tensor:
        return marginal_loss(input, target, classes=classes, mask=mask, **self.kw)
