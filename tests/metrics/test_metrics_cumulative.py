"""Cumulative metric classes: accumulation, reductions, MONAI parity, and per-case (topology, lesion) classes."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from everylabel.metrics import (
    BettiErrorMetric,
    CaseMetric,
    ClDiceMetric,
    CumulativeCaseMetrics,
    CumulativeOverlap,
    DiceMetric,
    LesionMetric,
    MeanIoU,
    compute_case_metrics,
    compute_dice,
    compute_metrics,
    reduce_metric,
)

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


def _label_batches(blobs, shape=(26, 24), n_batches=2, batch=2):
    """Label maps (B, 1, *S) with classes 0..2, as torch tensors."""
    out = []
    for i in range(n_batches):
        maps = []
        for role in range(2):  # prediction, reference
            lab = np.zeros((batch, 1, *shape), dtype=np.int64)
            for b in range(batch):
                seed = 100 * i + 10 * b + role
                lab[b, 0][blobs(shape, seed, sigma=1.2, fraction=0.25)] = 1
                lab[b, 0][blobs(shape, seed + 5, sigma=1.0, fraction=0.08)] = 2
            maps.append(torch.from_numpy(lab))
        out.append(tuple(maps))
    return out


@pytest.mark.parametrize(
    ("metric", "name"),
    [
        (ClDiceMetric(num_classes=3), "cldice"),
        (BettiErrorMetric(1, num_classes=3, reduction="mean_batch"), "betti1_error"),
        (BettiErrorMetric(0, num_classes=3, connectivity=1, reduction="sum"), "betti0_error"),
        (LesionMetric("lesion_sensitivity", num_classes=3), "lesion_sensitivity"),
        (LesionMetric("lesion_fp", num_classes=3, reduction="sum_channel"), "lesion_fp"),
        (LesionMetric("box_iou", num_classes=3, reduction="none"), "box_iou"),
        (CaseMetric("euler_error", num_classes=3), "euler_error"),
    ],
)
def test_topology_and_lesion_metrics_accumulate(blobs, metric, name):
    batches = _label_batches(blobs)
    for pred, ref in batches:
        value = metric(pred, ref)
        assert value.shape == (2, 2) and value.dtype == torch.float64
    pred_all = torch.cat([p for p, _ in batches])
    ref_all = torch.cat([r for _, r in batches])
    connectivity = metric.options["connectivity"]
    one_shot = compute_case_metrics(pred_all, ref_all, [name], num_classes=3, connectivity=connectivity)[name]
    torch.testing.assert_close(metric.get_buffer(), one_shot, equal_nan=True)
    torch.testing.assert_close(metric.aggregate(), reduce_metric(one_shot, metric.reduction)[0], equal_nan=True)
    p, r = pred_all[3, 0].numpy() == 2, ref_all[3, 0].numpy() == 2  # case 3, class 2 by hand
    want = compute_metrics(p, r, metrics=(name,), connectivity=connectivity)[name]
    assert one_shot[3, 1].item() == pytest.approx(want, nan_ok=True)
    metric.reset()
    with pytest.raises(ValueError, match="no values"):
        metric.aggregate()


def test_cumulative_case_metrics_share_passes(blobs):
    from everylabel.metrics import LESION_METRICS, TOPOLOGY_METRICS

    names = (*TOPOLOGY_METRICS, *LESION_METRICS)
    metric = CumulativeCaseMetrics(names, num_classes=3, reduction="mean_batch")
    batches = _label_batches(blobs)
    for pred, ref in batches:
        assert set(metric(pred, ref)) == set(names)
    one_shot = compute_case_metrics(torch.cat([p for p, _ in batches]), torch.cat([r for _, r in batches]), names,
                                    num_classes=3)  # fmt: skip
    got = metric.aggregate()
    for m in names:
        torch.testing.assert_close(got[m], reduce_metric(one_shot[m], "mean_batch")[0], equal_nan=True)
    assert torch.isnan(got["betti2_error"]).all()  # 2D: no b2
    with pytest.raises(ValueError, match="unknown metrics"):
        CumulativeCaseMetrics(("clDice",))
    with pytest.raises(ValueError, match="betti must be 0, 1 or 2"):
        BettiErrorMetric(3)
    with pytest.raises(ValueError, match="metric_name must be one of"):
        LesionMetric("dice")


def test_case_metrics_valid_region(blobs):
    (pred, ref), = _label_batches(blobs, n_batches=1)
    valid = torch.zeros_like(pred, dtype=torch.bool)
    valid[..., 4:20, 3:21] = True
    got = compute_case_metrics(pred, ref, ("cldice", "lesion_fp"), num_classes=3, valid=valid)
    want = compute_case_metrics(pred * valid, ref * valid, ("cldice", "lesion_fp"), num_classes=3)
    for m in got:
        torch.testing.assert_close(got[m], want[m], equal_nan=True)
    with pytest.raises(ValueError, match="valid must have shape"):
        compute_case_metrics(pred, ref, ("cldice",), num_classes=3, valid=valid[:, :, :-1])
