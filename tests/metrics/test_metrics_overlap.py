"""Overlap metrics: hand-computed values, empty-mask semantics, valid regions, MONAI parity."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from everylabel.metrics import (
    OVERLAP_METRICS,
    compute_accuracy,
    compute_confusion,
    compute_dice,
    compute_iou,
    compute_kappa,
    compute_overlap_metric,
    compute_precision,
    compute_recall,
    compute_specificity,
    compute_volume_similarity,
)

monai_metrics = pytest.importorskip("monai.metrics")


def _pair_1d() -> tuple[np.ndarray, np.ndarray]:
    # pred 1 1 1 0 0 0 0 0 0 0 ; ref 0 1 1 1 1 0 0 0 0 0 -> tp 2, fp 1, fn 2, tn 5
    pred = np.zeros((1, 1, 10), dtype=bool)
    ref = np.zeros((1, 1, 10), dtype=bool)
    pred[..., 0:3] = True
    ref[..., 1:5] = True
    return pred, ref


def test_hand_computed_values():
    pred, ref = _pair_1d()
    tp, fp, fn, tn = compute_confusion(pred, ref)
    assert (tp.item(), fp.item(), fn.item(), tn.item()) == (2, 1, 2, 5)
    assert compute_dice(pred, ref).item() == pytest.approx(4 / 7)
    assert compute_iou(pred, ref).item() == pytest.approx(2 / 5)
    assert compute_precision(pred, ref).item() == pytest.approx(2 / 3)
    assert compute_recall(pred, ref).item() == pytest.approx(2 / 4)
    assert compute_specificity(pred, ref).item() == pytest.approx(5 / 6)
    assert compute_accuracy(pred, ref).item() == pytest.approx(7 / 10)
    assert compute_volume_similarity(pred, ref).item() == pytest.approx(1 - 1 / 7)
    po, pe = 0.7, 0.3 * 0.4 + 0.7 * 0.6
    assert compute_kappa(pred, ref).item() == pytest.approx((po - pe) / (1 - pe))


def test_kappa_matches_sklearn_style_formula_on_random(blobs):
    pred, ref = blobs((40, 40), 0), blobs((40, 40), 1)
    n = pred.size
    po = (pred == ref).mean()
    pe = pred.mean() * ref.mean() + (1 - pred.mean()) * (1 - ref.mean())
    got = compute_kappa(pred[None, None], ref[None, None]).item()
    assert got == pytest.approx((po - pe) / (1 - pe), rel=1e-12)
    assert n == 1600


def test_label_map_and_one_hot_agree():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, size=(2, 1, 8, 9))
    ref = rng.integers(0, 3, size=(2, 1, 8, 9))

    def one_hot(x):
        return np.concatenate([x == c for c in range(3)], axis=1)

    a = compute_dice(pred, ref, num_classes=3)
    b = compute_dice(one_hot(pred), one_hot(ref))
    c = compute_dice(pred, one_hot(ref), num_classes=3)
    assert a.shape == (2, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(compute_dice(pred, ref, num_classes=3, include_background=False), a[:, 1:])


def test_numpy_and_torch_agree_and_types_follow_pred(blobs):
    pred = np.stack([blobs((12, 13, 9), s) for s in range(2)])[:, None]
    ref = np.stack([blobs((12, 13, 9), s + 10) for s in range(2)])[:, None]
    for name in OVERLAP_METRICS:
        a = compute_overlap_metric(name, pred, ref)
        b = compute_overlap_metric(name, torch.from_numpy(pred), torch.from_numpy(ref).float())
        assert isinstance(a, np.ndarray) and isinstance(b, torch.Tensor)
        assert a.dtype == np.float64 and b.dtype == torch.float64
        np.testing.assert_allclose(a, b.numpy(), rtol=0, atol=0)


def test_empty_mask_semantics():
    empty = np.zeros((1, 1, 4, 4), dtype=bool)
    full = np.ones((1, 1, 4, 4), dtype=bool)
    some = empty.copy()
    some[..., 0, 0] = True
    assert math.isnan(compute_dice(empty, empty).item())  # both empty: undefined
    assert compute_dice(some, empty).item() == 0.0  # one empty: defined, 0
    assert math.isnan(compute_dice(some, empty, ignore_empty=True).item())  # MONAI default
    assert math.isnan(compute_iou(empty, empty).item())
    assert math.isnan(compute_precision(empty, some).item())
    assert math.isnan(compute_recall(some, empty).item())
    assert math.isnan(compute_specificity(some, full).item())
    assert compute_accuracy(empty, empty).item() == 1.0
    assert math.isnan(compute_volume_similarity(empty, empty).item())
    assert math.isnan(compute_kappa(empty, empty).item())
    assert math.isnan(compute_kappa(full, full).item())
    assert compute_kappa(full, empty).item() == 0.0


def test_valid_region_restricts_counting(blobs):
    pred, ref = blobs((30, 30), 3)[None, None], blobs((30, 30), 4)[None, None]
    valid = np.zeros_like(pred)
    valid[..., 5:20, 2:25] = True
    got = compute_confusion(pred, ref, valid=valid)
    crop = (slice(None), slice(None), slice(5, 20), slice(2, 25))
    want = compute_confusion(pred[crop], ref[crop])
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    # changing anything outside the valid region changes nothing
    pred2 = np.where(valid, pred, ~pred)
    np.testing.assert_array_equal(compute_dice(pred2, ref, valid=valid), compute_dice(pred, ref, valid=valid))
    empty_valid = np.zeros_like(valid)
    assert math.isnan(compute_accuracy(pred, ref, valid=empty_valid).item())


def _one_hot_batch(blobs, shape, n_classes, seed):
    rng = np.random.default_rng(seed)
    labels = np.zeros((2, 1, *shape), dtype=np.int64)
    for b in range(2):
        for c in range(1, n_classes):
            labels[b, 0][blobs(shape, int(rng.integers(1e6)), fraction=0.25)] = c
    labels[1, 0][labels[1, 0] == n_classes - 1] = 0  # an empty class in case 1
    return labels, np.concatenate([labels == c for c in range(n_classes)], axis=1).astype(np.float32)


@pytest.mark.parametrize("shape", [(24, 20), (12, 14, 10)])
def test_parity_monai_dice_iou(blobs, shape):
    labels_p, pred = _one_hot_batch(blobs, shape, 3, 0)
    labels_r, ref = _one_hot_batch(blobs, shape, 3, 1)
    p, r = torch.from_numpy(pred), torch.from_numpy(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ignore_empty in (True, False):
            m_dice = monai_metrics.DiceMetric(include_background=True, reduction="none", ignore_empty=ignore_empty)
            m_iou = monai_metrics.MeanIoU(include_background=True, reduction="none", ignore_empty=ignore_empty)
            want_dice, want_iou = m_dice(p, r).double(), m_iou(p, r).double()
            got_dice = compute_dice(p, r, ignore_empty=ignore_empty)
            got_iou = compute_iou(labels_p, labels_r, num_classes=3, ignore_empty=ignore_empty)
            if not ignore_empty:  # MONAI gives 1.0 for two empty masks where everylabel says undefined
                both_empty = (p.sum(dim=(2, *range(3, p.ndim))) == 0) & (r.sum(dim=tuple(range(2, r.ndim))) == 0)
                assert both_empty.any()
                assert torch.isnan(got_dice[both_empty]).all()
                got_dice = torch.where(both_empty, 1.0, got_dice)
                got_iou = np.where(both_empty.numpy(), 1.0, got_iou)
            torch.testing.assert_close(got_dice, want_dice, rtol=1e-6, atol=0, equal_nan=True)
            np.testing.assert_allclose(got_iou, want_iou.numpy(), rtol=1e-6, atol=0, equal_nan=True)


@pytest.mark.parametrize("shape", [(24, 20), (12, 14, 10)])
def test_parity_monai_confusion_matrix_metrics(blobs, shape):
    _, pred = _one_hot_batch(blobs, shape, 3, 2)
    _, ref = _one_hot_batch(blobs, shape, 3, 3)
    p, r = torch.from_numpy(pred), torch.from_numpy(ref)
    cm = monai_metrics.get_confusion_matrix(p, r, include_background=True)  # (B, C, 4): tp, fp, tn, fn
    tp, fp, fn, tn = compute_confusion(p, r)
    torch.testing.assert_close(torch.stack([tp, fp, tn, fn], dim=-1), cm.double())
    pairs = {"precision": compute_precision, "sensitivity": compute_recall, "specificity": compute_specificity}
    pairs["accuracy"] = compute_accuracy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for monai_name, fn_ in pairs.items():
            want = monai_metrics.compute_confusion_matrix_metric(monai_name, cm).double()
            torch.testing.assert_close(fn_(p, r), want, rtol=1e-6, atol=0, equal_nan=True)


def test_bad_input_messages():
    pred = np.zeros((1, 1, 4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="binary"):
        compute_dice(pred + 2, pred)
    with pytest.raises(ValueError, match="same shape"):
        compute_dice(np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 4, 5)))
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        compute_dice(pred + 3, pred, num_classes=3)
    with pytest.raises(ValueError, match="label map"):
        compute_dice(np.zeros((1, 2, 4, 4)), pred, num_classes=3)
    with pytest.raises(ValueError, match="valid must have shape"):
        compute_dice(pred, pred, num_classes=2, valid=np.ones((1, 1, 4, 3), dtype=bool))
    with pytest.raises(ValueError, match="include_background=False"):
        compute_dice(pred, pred, include_background=False)
    with pytest.raises(ValueError, match="unknown overlap metric"):
        compute_overlap_metric("dic", pred, pred)
    with pytest.raises(ValueError, match="numpy array or a torch tensor"):
        compute_dice([[0, 1]], pred)
