"""Box priors: emptiness outside the boxes, tightness inside them, optional box-size bounds.

Kervadec, Dolz, Wang, Granger, Ben Ayed, "Bounding boxes for weakly supervised segmentation: Global constraints get
close to full supervision", MIDL 2020. For each class k with boxes ``B`` in an image and softmax ``s_k``:

* emptiness: ``sum_{p not in any box of k} s_{p,k} <= 0``;
* tightness prior: a tight box touches its object in every row and column, so every segment ``s_l`` of width
  ``w`` crossing the box holds at least ``w`` object pixels: ``sum_{p in s_l} s_{p,k} >= w`` (the last segment
  along an axis may be narrower; its bound is its width);
* box size (optional): ``a |B| <= sum_p s_{p,k} <= b |B|`` with ``|B|`` the volume covered by the class's boxes
  (the authors' code uses a = 0.5, b = 0.9).

Every constraint goes through the extended log-barrier ``psi_t`` (:func:`extended_log_barrier`) or, optionally,
the quadratic penalty. As in the authors' code (``LIVIAETS/boxes_tightness_prior``), the tightness terms are summed
unnormalised while emptiness and size are divided by the number of voxels ``|Omega|``; their released PROMISE12
configuration (``box_prior_box_size_neg_size``) weighs tightness 1e-4, size 1 and emptiness 1 with ``w = 5`` and
``t = 5`` (x1.1 per epoch), which are our defaults. Their emptiness term (``NegSizeLoss``) is the log-barrier of the
*background* probability mass outside the boxes with weight ``1-2``, a Python expression equal to -1: in the linear
part of the barrier (always, since that mass is >= 0) it equals our foreground-outside-the-box emptiness with weight
+1 up to a constant. An earlier version of this module read ``1-2`` as 1e-2; with that weight the emptiness gradient is
100x smaller than the size term's and on LA_heart_h5 the network settled on a uniform ~0.2 foreground probability
inside and outside the boxes (size and tightness met, 2 % Dice).

3D (our generalisation, same code for 2D): a "segment of width w along axis a" is a slab of ``w`` consecutive
indices along ``a`` restricted to the box on the other axes (in 2D: ``w`` rows or ``w`` columns). A tight box meets
its object in every slice, so each slab holds at least ``w`` object voxels; lines *along* an axis in 3D would not
(a ball in its box misses the box's edges). Boxes are float voxel coordinates ``(min_0.., max_0..)``, max exclusive
(``Batch.boxes``); they are rounded to the nearest integer and clipped to the image. A box clipped by a patch border
is no longer tight across the clipped side: by default (``tight_at_border=False``) a box touching the image border
on an axis keeps only the slabs perpendicular to that axis (the ones still guaranteed to meet the object).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from everylabel.losses.constraints import check_penalty, check_reduction, constraint_penalty, reduce_entries
from everylabel.losses.dice import upcast


def round_boxes(boxes: torch.Tensor) -> list[list[int]]:
    """(M, 2 * ndim) float boxes -> integer bounds rounded to the nearest voxel (one host transfer)."""
    return torch.floor(boxes.detach().double() + 0.5).long().cpu().tolist()


def box_slices(bounds: Sequence[int], spatial: Sequence[int]) -> tuple[slice, ...] | None:
    """Slices of integer box bounds ``(min_0.., max_0..)`` clipped to the image; None when the box is empty."""
    nd = len(spatial)
    out = []
    for a in range(nd):
        lo, hi = max(0, min(bounds[a], spatial[a])), max(0, min(bounds[nd + a], spatial[a]))
        if hi <= lo:
            return None
        out.append(slice(lo, hi))
    return tuple(out)


def box_masks(boxes: Sequence[torch.Tensor], box_labels: Sequence[torch.Tensor], num_classes: int,
              spatial_shape: Sequence[int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Filled boxes per class and which classes are boxed.

    Shapes:
        boxes[b]: (M_b, 2 * ndim) (mins then maxes, max exclusive); box_labels[b]: (M_b,).

    Returns:
        ``(inside, boxed)``: float (B, N, *S) 1 inside a box of that class, and bool (B, N), True for the classes
        with at least one box in the sample.
    """
    spatial = tuple(int(s) for s in spatial_shape)
    b = len(boxes)
    inside = torch.zeros((b, num_classes, *spatial), dtype=torch.float32, device=device)
    boxed = torch.zeros((b, num_classes), dtype=torch.bool, device=device)
    for i in range(b):
        for bounds, k in zip(round_boxes(boxes[i]), box_labels[i].tolist()):
            if not 0 <= k < num_classes:
                raise ValueError(f"sample {i}: box label {k} is not a class in 0..{num_classes - 1}")
            boxed[i, k] = True
            sl = box_slices(bounds, spatial)
            if sl is not None:
                inside[(i, k, *sl)] = 1.0
    return inside, boxed


def _check_box_args(width: int, size_bounds: tuple[float, float] | None, lambdas: Sequence[float]) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width (the tightness segment width) must be an integer >= 1, got {width!r}")
    if size_bounds is not None and (len(size_bounds) != 2 or not 0.0 <= size_bounds[0] <= size_bounds[1]):
        raise ValueError(f"size_bounds must be (lower, upper) with 0 <= lower <= upper, got {size_bounds}")
    if any(lam < 0 for lam in lambdas):
        raise ValueError(f"lambda_emptiness, lambda_tightness and lambda_size must be >= 0, got {tuple(lambdas)}")


def _tightness_values(p: torch.Tensor, sl: tuple[slice, ...], spatial: Sequence[int], width: int,
                      tight_at_border: bool) -> list[torch.Tensor]:
    """``bound - sum`` for every slab of one box (each value must be <= 0)."""
    nd = len(spatial)
    crop = p[sl]
    touches = [sl[a].start == 0 or sl[a].stop == spatial[a] for a in range(nd)]
    out = []
    for a in range(nd):
        if not tight_at_border and any(touches[b] for b in range(nd) if b != a):
            continue
        profile = crop.sum(tuple(b for b in range(nd) if b != a))  # (L,) along axis a
        length = profile.shape[0]
        full = length // width
        if full:
            out.append(width - profile[: full * width].reshape(full, width).sum(1))
        if length % width:
            out.append((length % width) - profile[full * width:].sum().reshape(1))
    return out


def box_prior_loss(input: torch.Tensor, *, boxes: Sequence[torch.Tensor], box_labels: Sequence[torch.Tensor],
                   width: int = 5, t: float = 5.0, penalty: str = "log_barrier", lambda_emptiness: float = 1.0,
                   lambda_tightness: float = 1e-4, lambda_size: float = 1.0,
                   size_bounds: tuple[float, float] | None = None, tight_at_border: bool = False,
                   classes: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Emptiness + tightness (+ box size) constraints of Kervadec et al. (MIDL 2020) for every boxed class.

    Per sample: ``lambda_emptiness * sum_k phi(V_out_k) / |Omega| + lambda_tightness * sum_{boxes, slabs}
    phi(w_l - S_l) + lambda_size * sum_k (phi(a |B_k| - V_k) + phi(V_k - b |B_k|)) / |Omega|`` over the classes k
    that have at least one box in that sample, with ``phi`` = ``psi_t`` (log-barrier) or ``relu(.)^2``. Samples
    without boxes contribute 0.

    Args:
        input: logits.
        boxes: one (M_b, 2 * ndim) float tensor per sample, ``(min_0, ..., max_0, ...)``, max exclusive.
        box_labels: one (M_b,) int tensor per sample with the (foreground) class of each box.
        width: segment width ``w`` of the tightness prior, in voxels.
        t: log-barrier parameter (the module's ``t`` attribute can follow a schedule).
        penalty: "log_barrier" (the paper) or "quadratic".
        lambda_emptiness, lambda_tightness, lambda_size: weights of the three terms.
        size_bounds: (a, b) fractions of the boxed volume for the box-size constraint; None disables it.
        tight_at_border: trust tightness also across sides touching the image border (see module docstring).
        classes: optional (B, N) bool, the classes whose objects the boxes of each sample cover exhaustively. A
            covered class with no box in a sample is absent from it, so emptiness applies to the whole sample
            (``sum_p s_{p,k} <= 0``): a slice of a boxed volume that no box crosses, or a patch beside every box,
            is a negative example. None = only the classes that have a box in the sample are constrained.
        reduction: "mean" over samples, "sum", or "none" ((B, 1, ...) per sample).

    Shapes:
        input: (B, N, *S) with N >= 2 (class 0 = background, never boxed).

    Returns:
        The loss, reduced as asked.
    """
    check_reduction(reduction)
    check_penalty(penalty, t)
    _check_box_args(width, size_bounds, (lambda_emptiness, lambda_tightness, lambda_size))
    b_, n = input.shape[:2]
    if len(boxes) != b_ or len(box_labels) != b_:
        raise ValueError(f"boxes and box_labels need one entry per sample ({b_}), got {len(boxes)} and "
                         f"{len(box_labels)}")
    spatial = tuple(input.shape[2:])
    nd = len(spatial)
    n_vox = math.prod(spatial)
    if classes is not None and tuple(classes.shape) != (b_, n):
        raise ValueError(f"classes must be a (B, N) = ({b_}, {n}) bool tensor, got shape {tuple(classes.shape)}")
    probs = torch.softmax(upcast(input), 1)
    per_sample = []
    for b in range(b_):
        bx, lab = boxes[b], box_labels[b]
        if bx.ndim != 2 or bx.shape[1] != 2 * nd or lab.shape != (bx.shape[0],):
            raise ValueError(f"sample {b}: boxes must be (M, {2 * nd}) with box_labels (M,), got "
                             f"{tuple(bx.shape)} and {tuple(lab.shape)}")
        total = probs.new_zeros(())
        labels = [int(v) for v in lab.tolist()]
        if any(k < 1 or k >= n for k in labels):
            raise ValueError(f"sample {b}: box labels must be foreground classes 1..{n - 1}, got {sorted(set(labels))}")
        rounded = round_boxes(bx)
        if classes is not None and lambda_emptiness:
            for k in range(1, n):
                if bool(classes[b, k]) and k not in labels:  # covered but not boxed here: absent
                    absent = probs[b, k].sum()
                    total = total + lambda_emptiness * constraint_penalty(absent, penalty, t) / n_vox
        for k in sorted(set(labels)):
            p = probs[b, k]
            inside = torch.zeros(spatial, dtype=torch.bool, device=input.device)
            tight: list[torch.Tensor] = []
            slices = [sl for sl, v in zip((box_slices(r, spatial) for r in rounded), labels) if v == k and sl]
            if not slices:
                continue
            for sl in slices:
                inside[sl] = True
                tight += _tightness_values(p, sl, spatial, width, tight_at_border)
            if lambda_emptiness:
                outside = (p * (~inside).to(p.dtype)).sum()
                total = total + lambda_emptiness * constraint_penalty(outside, penalty, t) / n_vox
            if lambda_tightness and tight:
                total = total + lambda_tightness * constraint_penalty(torch.cat(tight), penalty, t).sum()
            if lambda_size and size_bounds is not None:
                vol, size = inside.sum().to(p.dtype), p.sum()
                z = torch.stack([size_bounds[0] * vol - size, size - size_bounds[1] * vol])
                total = total + lambda_size * constraint_penalty(z, penalty, t).sum() / n_vox
        per_sample.append(total)
    return reduce_entries(torch.stack(per_sample), None, reduction, input.ndim)


class BoxPriorLoss(nn.Module):
    """Module form of :func:`box_prior_loss`; ``t`` is an attribute a schedule may change between epochs."""

    def __init__(self, width: int = 5, t: float = 5.0, penalty: str = "log_barrier", lambda_emptiness: float = 1.0,
                 lambda_tightness: float = 1e-4, lambda_size: float = 1.0,
                 size_bounds: tuple[float, float] | None = None, tight_at_border: bool = False,
                 reduction: str = "mean"):
        super().__init__()
        check_reduction(reduction)
        check_penalty(penalty, t)
        _check_box_args(width, size_bounds, (lambda_emptiness, lambda_tightness, lambda_size))
        self.t = t
        self.kw = {"width": width, "penalty": penalty, "lambda_emptiness": lambda_emptiness,
                   "lambda_tightness": lambda_tightness, "lambda_size": lambda_size, "size_bounds": size_bounds,
                   "tight_at_border": tight_at_border, "reduction": reduction}

    def forward(self, input: torch.Tensor, *, boxes: Sequence[torch.Tensor], box_labels: Sequence[torch.Tensor],
                classes: torch.Tensor | None = None) -> torch.Tensor:
        return box_prior_loss(input, boxes=boxes, box_labels=box_labels, classes=classes, t=self.t, **self.kw)
