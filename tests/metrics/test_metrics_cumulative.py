"""Cumulative metric classes: accumulation, reductions and MONAI parity."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from everylabel.metrics import CumulativeOverlap, DiceMetric, MeanIoU, compute_dice, reduce_metric

monai_metrics = pytest.importorskip("monai.metrics")
monai_utils = pytest.importorskip("monai.metrics.utils")


def _batches(blobs, n_batches=3, shape=(16, 18)):
    out = []
    for i in range(n_batches):
        pred = np.stack([np.stack([~m, m]) for m in (blobs(shape, 10 * i), blobs(shape, 10 * i + 1))])
        ref = np.stack([np.stack([~m, m]) for m in (blobs(shape, 10 * i + 2), blobs(shape, 10 * i + 3))])
        out.append((torch.from_numpy(pred).float(), torch.from_numpy(ref).float()))
    return out


@pytest.mark.parametrize("reduction", ["mean", "sum", "mean_batch", "sum_batch", "mean_channel", "sum_channel", "none"])
def test_dice_metric_matches_monai(blobs, reduction):
    ours = DiceMetric(include_background=True, reduction=reduction, get_not_nans=True, ignore_empty=True)
    theirs = monai_metrics.DiceMetric(include_background=True, reduction=reduction, get_not_nans=True)
    for pred, ref in _batches(blobs):
        torch.testing.assert_close(ours(pred, ref), theirs(pred, ref).double())
    (a, na), (b, nb) = ours.aggregate(), theirs.aggregate()
    # MONAI's "mean" and "sum" keep a trailing axis of 1
    torch.testing.assert_close(a, b.double().reshape(a.shape), rtol=1e-6, atol=0)
    torch.testing.assert_close(na, nb.double().reshape(na.shape))
    ours.reset()
    with pytest.raises(ValueError, match="no values"):
        ours.aggregate()


def test_reduction_with_nothing_defined_is_nan_not_zero():
    f = torch.full((2, 3), float("nan"), dtype=torch.float64)
    value, count = reduce_metric(f, "mean")
    assert math.isnan(value.item()) and count.item() == 0
    _, monai_count = monai_utils.do_metric_reduction(f.clone(), "mean")
    assert monai_count.item() == 0  # MONAI would report 0.0 as the value


def test_mean_iou_and_label_maps(blobs):
    pred = torch.from_numpy(np.stack([blobs((10, 11), 0), blobs((10, 11), 1)])[:, None].astype(np.int64))
    ref = torch.from_numpy(np.stack([blobs((10, 11), 2), blobs((10, 11), 3)])[:, None].astype(np.int64))
    metric = MeanIoU(num_classes=2, include_background=False, reduction="none")
    value = metric(pred, ref)
    assert value.shape == (2, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = monai_metrics.compute_iou(pred.bool().float(), ref.bool().float(), include_background=True)
    torch.testing.assert_close(value, want.double())


def test_cumulative_overlap_all_metrics(blobs):
    metric = CumulativeOverlap(("dice", "recall", "kappa"), include_background=False)
    batches = _batches(blobs)
    for pred, ref in batches:
        out = metric(pred, ref)
        assert set(out) == {"dice", "recall", "kappa"} and out["dice"].shape == (2, 1)
    agg = metric.aggregate()
    all_dice = torch.cat([compute_dice(p, r, include_background=False) for p, r in batches])
    torch.testing.assert_close(agg["dice"], all_dice.mean())
    assert metric.confusion().shape == (4, 6, 1)
    with pytest.raises(ValueError, match="unknown overlap metrics"):
        CumulativeOverlap(("dise",))
    with pytest.raises(ValueError, match="reduction must be one of"):
        DiceMetric(reduction="avg")
