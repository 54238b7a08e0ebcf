"""Soft skeleton and the soft clDice losses for tubular structures.

Shit, Paetzold et al., "clDice - a Novel Topology-Preserving Loss Function for Tubular Structure Segmentation",
CVPR 2021 (Algorithm 1 for the soft skeleton, Eq. 1-3 for clDice and L_c). Values are identical to
``monai.losses.cldice.soft_skel`` and equal to ``monai.losses.SoftclDiceLoss`` / ``SoftDiceclDiceLoss`` (MONAI 1.6)
under the same flags; the skeleton is cheaper because each erosion is computed once (MONAI erodes every image twice:
once for its opening and once more to get the next image).

Like MONAI 1.6, clDice pools the kept channels: one topological precision and one sensitivity per sample, summed
over channels and voxels. For a tubular foreground use one sigmoid channel, or softmax with
``include_background=False`` so the skeleton of the background does not dominate.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from everylabel.losses.dice import _check_flags, dice_loss, prepare_probabilities, reduce


def _check_iterations(iterations: int) -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")


def _check_cldice_flags(iterations: int, smooth: float, sigmoid: bool, softmax: bool, reduction: str) -> None:
    _check_iterations(iterations)
    _check_flags(sigmoid, softmax, reduction)
    if not smooth > 0:
        raise ValueError(f"smooth (the harmonic-mean epsilon) must be > 0, got {smooth}")


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def _check_spatial(x: torch.Tensor) -> None:
    if x.ndim not in (4, 5):
        raise ValueError(f"expected a (B, C, H, W) or (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")


def _cross_max(x: torch.Tensor) -> torch.Tensor:
    """Max over each voxel and its face neighbours (the cross); ``-_cross_max(-x)`` is the soft erosion."""
    if x.ndim == 4:
        return torch.maximum(F.max_pool2d(x, (3, 1), 1, (1, 0)), F.max_pool2d(x, (1, 3), 1, (0, 1)))
    p = torch.maximum(F.max_pool3d(x, (3, 1, 1), 1, (1, 0, 0)), F.max_pool3d(x, (1, 3, 1), 1, (0, 1, 0)))
    return torch.maximum(p, F.max_pool3d(x, (1, 1, 3), 1, (0, 0, 1)))


def soft_erode(x: torch.Tensor) -> torch.Tensor:
    """Soft erosion: min over the cross (3x1 and 1x3 in 2D; 3x1x1, 1x3x1, 1x1x3 in 3D), i.e. -maxpool(-x)."""
    _check_spatial(x)
    return -_cross_max(-x)


def soft_dilate(x: torch.Tensor) -> torch.Tensor:
    """Soft dilation: 3x3 (2D) or 3x3x3 (3D) max pooling."""
    _check_spatial(x)
    return F.max_pool2d(x, 3, 1, 1) if x.ndim == 4 else F.max_pool3d(x, 3, 1, 1)


def soft_open(x: torch.Tensor) -> torch.Tensor:
    """Soft opening: dilation of the erosion."""
    return soft_dilate(soft_erode(x))


def _soft_skeleton(x: torch.Tensor, iterations: int) -> torch.Tensor:
    neg = -x  # erosions carried negated, -erode(I) = cross_max(-I): one negation each (MONAI: four, six in 3D)
    image = x
    skel = None
    for _ in range(iterations + 1):
        neg = _cross_max(neg)
        eroded = -neg
        opened = F.max_pool2d(eroded, 3, 1, 1) if x.ndim == 4 else F.max_pool3d(eroded, 3, 1, 1)
        delta = F.relu(image - opened)
        # MONAI's form of S + (1 - S) * delta; kept verbatim so the values are bit-identical
        skel = delta if skel is None else skel + F.relu(delta - skel * delta)
        image = eroded  # the erosion inside this opening is the next image
    return skel


@functools.cache
def _compiled_skeleton():
    return torch.compile(_soft_skeleton, dynamic=False)


def soft_skeleton(x: torch.Tensor, iterations: int = 3, *, compile: bool = False) -> torch.Tensor:
    """Soft skeleton of a (probability) map by iterated soft opening (Shit, Paetzold et al., CVPR 2021, Alg. 1).

    ``S = relu(I - open(I))``, then ``iterations`` times ``I = erode(I)`` and ``S = S + (1 - S) * relu(I - open(I))``
    (computed as ``S + relu(delta - S * delta)`` like MONAI), with min-pooling over the cross-shaped element as the
    erosion and 3x3(x3) max-pooling as the dilation. Values are identical to ``monai.losses.cldice.soft_skel(x,
    iterations)``: ``iterations + 1`` openings, using ``iterations + 1`` erosions where MONAI computes
    ``2 * iterations + 1``.

    Args:
        x: image, typically probabilities in [0, 1].
        iterations: number of erosion steps after the first opening (MONAI's ``iter_``); at least 1.
        compile: run through ``torch.compile`` (compiles once per shape; same values; on CPU it helped in 2D and was
            slower than eager in 3D in our measurements).

    Shapes:
        x: (B, C, H, W) or (B, C, D, H, W).

    Returns:
        The soft skeleton, same shape and dtype as ``x``.
    """
    _check_iterations(iterations)
    _check_spatial(x)
    return (_compiled_skeleton() if compile else _soft_skeleton)(x, iterations)


def _prepare(input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, include_background: bool,
             to_onehot_y: bool, sigmoid: bool, softmax: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial-rank check, then the same front as ``dice_loss``."""
    _check_spatial(input)
    return prepare_probabilities(input, target, mask=mask, include_background=include_background,
                                 to_onehot_y=to_onehot_y, sigmoid=sigmoid, softmax=softmax)


def _cldice(pred: torch.Tensor, target: torch.Tensor, iterations: int, smooth_nr: float, smooth_dr: float,
            smooth: float, compile: bool) -> torch.Tensor:
    """Per-sample ``1 - clDice`` of prepared probabilities and one-hot target, shape (B, 1, *[1] * nd)."""
    skel_pred = soft_skeleton(pred, iterations, compile=compile)
    skel_true = soft_skeleton(target, iterations, compile=compile)
    dims = list(range(1, pred.ndim))  # channels pooled, as in MONAI
    tprec = (torch.sum(skel_pred * target, dim=dims) + smooth_nr) / (torch.sum(skel_pred, dim=dims) + smooth_dr)
    tsens = (torch.sum(skel_true * pred, dim=dims) + smooth_nr) / (torch.sum(skel_true, dim=dims) + smooth_dr)
    loss = 1.0 - 2.0 * (tprec * tsens) / (tprec + tsens + smooth)  # (B,)
    return loss.reshape((-1,) + (1,) * (pred.ndim - 1))  # (B, 1, *[1] * nd), broadcastable


def soft_cldice_loss(input: torch.Tensor, target: torch.Tensor, *, mask: torch.Tensor | None = None,
                     iterations: int = 3, include_background: bool = True, to_onehot_y: bool = False,
                     sigmoid: bool = False, softmax: bool = False, smooth_nr: float = 1.0, smooth_dr: float = 1.0,
                     smooth: float = 1e-4, reduction: str = "mean", compile: bool = False) -> torch.Tensor:
    """Soft clDice loss ``1 - 2 * Tprec * Tsens / (Tprec + Tsens + smooth)`` (Shit, Paetzold et al., CVPR 2021).

    ``Tprec = (|S_P . V_L| + smooth_nr) / (|S_P| + smooth_dr)`` is the fraction of the predicted soft skeleton inside
    the target and ``Tsens = (|S_L . V_P| + smooth_nr) / (|S_L| + smooth_dr)`` the fraction of the target's skeleton
    inside the prediction. Sums run over the kept channels and all voxels, one value per sample, exactly as
    ``monai.losses.SoftclDiceLoss`` (MONAI 1.6; ``iterations`` is its ``iter_``). Differences from MONAI: invalid
    flags raise instead of warning (``softmax=True`` or ``to_onehot_y=True`` with one channel), and "none" returns a
    broadcastable (B, 1, 1, ...) instead of (B,).

    With ``mask``, prediction and target are set to 0 outside it before skeletonisation (as ``dice_loss`` does), so
    voxels outside contribute neither value nor gradient; a structure crossing the mask border is cut there in both.

    Args:
        input: logits with ``sigmoid``/``softmax``, else probabilities.
        target: indices (B, 1, *S) with ``to_onehot_y=True``, else one-hot / binary (B, N, *S).
        mask: optional (B, 1, *S) bool/float valid region.
        iterations: soft-skeleton erosion steps (>= 1); should be about the largest vessel radius in voxels.
        include_background: keep channel 0 (ignored when N == 1). Pass False with softmax for a binary task.
        smooth_nr: added to both numerators. smooth_dr: added to both denominators.
        smooth: added to the harmonic-mean denominator (> 0).
        reduction: "mean" | "sum" over samples, or "none" ((B, 1, *[1] * nd)).
        compile: compute the skeletons with ``torch.compile`` (see :func:`soft_skeleton`).

    Shapes:
        input: (B, N, *S) with S of length 2 or 3; target: (B, 1, *S) or (B, N, *S); mask: (B, 1, *S).

    Returns:
        The loss, reduced as asked.
    """
    _check_cldice_flags(iterations, smooth, sigmoid, softmax, reduction)
    pred, target = _prepare(input, target, mask, include_background, to_onehot_y, sigmoid, softmax)
    return reduce(_cldice(pred, target, iterations, smooth_nr, smooth_dr, smooth, compile), reduction)


def soft_dice_cldice_loss(input: torch.Tensor, target: torch.Tensor, *, mask: torch.Tensor | None = None,
                          alpha: float = 0.5, iterations: int = 3, include_background: bool = True,
                          to_onehot_y: bool = False, sigmoid: bool = False, softmax: bool = False,
                          smooth_nr: float = 1.0, smooth_dr: float = 1.0, smooth: float = 1e-4,
                          reduction: str = "mean", compile: bool = False) -> torch.Tensor:
    """``L_c = (1 - alpha) * (1 - softDice) + alpha * (1 - softclDice)`` (Shit, Paetzold et al., CVPR 2021, Eq. 3).

    The Dice term is :func:`everylabel.losses.dice.dice_loss` per sample and class (``smooth_nr``/``smooth_dr``
    shared with clDice, default 1 as in ``monai.losses.SoftDiceclDiceLoss``); the clDice term is
    :func:`soft_cldice_loss` per sample. "mean" and "sum" reduce each term on its own and then mix them, as MONAI
    does; "none" returns the (B, N, 1, ...) mix with clDice broadcast over classes (MONAI's "none" broadcasts (B, N,
    1, ...) against (B,) into a (B, N, ..., B) tensor whose diagonal is this).

    Args:
        input, target, mask, iterations, include_background, to_onehot_y, sigmoid, softmax, smooth_nr, smooth_dr,
            smooth, compile: as in :func:`soft_cldice_loss`.
        alpha: weight of the clDice term, in [0, 1].
        reduction: "mean" | "sum" | "none" (see above).

    Shapes:
        input: (B, N, *S); target: (B, 1, *S) or (B, N, *S); mask: (B, 1, *S).

    Returns:
        The loss, reduced as asked.
    """
    _check_cldice_flags(iterations, smooth, sigmoid, softmax, reduction)
    _check_alpha(alpha)
    pred, target = _prepare(input, target, mask, include_background, to_onehot_y, sigmoid, softmax)
    dice = dice_loss(pred, target, smooth_nr=smooth_nr, smooth_dr=smooth_dr, reduction="none")  # (B, N', 1, ...)
    cl = _cldice(pred, target, iterations, smooth_nr, smooth_dr, smooth, compile)  # (B, 1, 1, ...)
    if reduction == "none":
        return (1.0 - alpha) * dice + alpha * cl
    return (1.0 - alpha) * reduce(dice, reduction) + alpha * reduce(cl, reduction)


class SoftclDiceLoss(nn.Module):
    """Module form of :func:`soft_cldice_loss`.

    Flags of ``monai.losses.SoftclDiceLoss``; its ``iter_`` is ``iterations``.
    """

    def __init__(self, iterations: int = 3, include_background: bool = True, to_onehot_y: bool = False,
                 sigmoid: bool = False, softmax: bool = False, smooth_nr: float = 1.0, smooth_dr: float = 1.0,
                 smooth: float = 1e-4, reduction: str = "mean", compile: bool = False):
        super().__init__()
        _check_cldice_flags(iterations, smooth, sigmoid, softmax, reduction)
        self.kw = {"iterations": iterations, "include_background": include_background, "to_onehot_y": to_onehot_y,
                   "sigmoid": sigmoid, "softmax": softmax, "smooth_nr": smooth_nr, "smooth_dr": smooth_dr,
                   "smooth": smooth, "reduction": reduction, "compile": compile}

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return soft_cldice_loss(input, target, mask=mask, **self.kw)


class SoftDiceclDiceLoss(nn.Module):
    """Module form of :func:`soft_dice_cldice_loss` (flags of ``monai.losses.SoftDiceclDiceLoss``)."""

    def __init__(self, alpha: float = 0.5, iterations: int = 3, include_background: bool = True,
                 to_onehot_y: bool = False, sigmoid: bool = False, softmax: bool = False, smooth_nr: float = 1.0,
                 smooth_dr: float = 1.0, smooth: float = 1e-4, reduction: str = "mean", compile: bool = False):
        super().__init__()
        _check_cldice_flags(iterations, smooth, sigmoid, softmax, reduction)
        _check_alpha(alpha)
        self.kw = {"alpha": alpha, "iterations": iterations, "include_background": include_background,
                   "to_onehot_y": to_onehot_y, "sigmoid": sigmoid, "softmax": softmax, "smooth_nr": smooth_nr,
                   "smooth_dr": smooth_dr, "smooth": smooth, "reduction": reduction, "compile": compile}

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return soft_dice_cldice_loss(input, target, mask=mask, **self.kw)
