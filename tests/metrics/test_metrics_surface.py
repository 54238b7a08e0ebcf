"""Surface metrics: hand-computed values, empty masks, and exact parity with MONAI, MedPy and DeepMind."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from everylabel.metrics import (
    SURFACE_METRICS,
    HausdorffDistanceMetric,
    SurfaceDiceMetric,
    SurfaceDistanceMetric,
    compute_average_surface_distance,
    compute_hausdorff_distance,
    compute_metrics,
    compute_surface_dice,
    compute_surface_distances,
    compute_surface_metrics,
    surface_metrics,
)

monai_metrics = pytest.importorskip("monai.metrics")

CASES = [((48, 40), (0.7, 1.3)), ((24, 22, 16), (0.8, 1.1, 2.5))]
RTOL = 1e-6


def _square_pair():
    a = np.zeros((20, 20), dtype=bool)
    a[5:10, 5:10] = True
    return a, np.roll(a, 2, axis=0)


def test_hand_computed_square_shift():
    pred, ref = _square_pair()
    # spacing (1, 2): the 16 border voxels of each square lie at distances 2 (x5), 1 (x2), 0 (x6), 2 (x3)
    m = compute_metrics(pred, ref, spacing=(1.0, 2.0), metrics=SURFACE_METRICS, nsd_tolerance=1.0)
    assert m == pytest.approx({"hd": 2.0, "hd95": 2.0, "assd": 18 / 16, "masd": 18 / 16, "nsd": 0.5,
                               "avg_hausdorff": 18 / 16})  # fmt: skip


def test_directed_definitions_differ_as_documented(blobs):
    pred, ref = blobs((40, 40), 5), blobs((40, 40), 6, fraction=0.1)
    sd = compute_surface_distances(pred, ref, (1.0, 1.5))
    m = surface_metrics(sd)
    mean_pr, mean_rp = sd.pred_to_ref.mean(), sd.ref_to_pred.mean()
    assert m["masd"] == pytest.approx((mean_pr + mean_rp) / 2)
    assert m["avg_hausdorff"] == pytest.approx(max(mean_pr, mean_rp))
    assert m["assd"] == pytest.approx(np.concatenate([sd.pred_to_ref, sd.ref_to_pred]).mean())
    assert m["hd"] == max(sd.pred_to_ref.max(), sd.ref_to_pred.max())


@pytest.mark.parametrize("convention", ["default", "monai", "medpy", "deepmind"])
def test_empty_masks_give_nan(convention):
    pred, _ = _square_pair()
    empty = np.zeros_like(pred)
    for a, b in ((pred, empty), (empty, pred), (empty, empty)):
        m = compute_metrics(a, b, metrics=SURFACE_METRICS, convention=convention)
        assert all(math.isnan(v) for v in m.values())
    identical = compute_metrics(pred, pred, metrics=SURFACE_METRICS, convention=convention)
    assert identical == {"hd": 0.0, "hd95": 0.0, "assd": 0.0, "masd": 0.0, "nsd": 1.0, "avg_hausdorff": 0.0}


def test_numpy_torch_and_dtypes_agree(blobs):
    pred, ref = blobs((30, 30), 1), blobs((30, 30), 2)
    a = compute_metrics(pred, ref, spacing=(0.5, 0.9))
    b = compute_metrics(torch.from_numpy(pred).float(), torch.from_numpy(ref.astype(np.uint8)), spacing=(0.5, 0.9))
    assert a == b


def test_valid_region_masks_surfaces(blobs):
    pred, ref = blobs((30, 30), 3), blobs((30, 30), 4)
    valid = np.zeros_like(pred)
    valid[5:25, 5:25] = True
    got = compute_metrics(pred, ref, valid=valid, metrics=("hd", "assd", "dice"))
    want = compute_metrics(pred & valid, ref & valid, metrics=("hd", "assd", "dice"))
    assert got == want


def test_bad_input_messages():
    pred, ref = _square_pair()
    with pytest.raises(ValueError, match="spacing must have one value per spatial axis"):
        compute_metrics(pred, ref, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive and finite"):
        compute_metrics(pred, ref, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="same shape"):
        compute_metrics(pred, ref[:-1])
    with pytest.raises(ValueError, match="pred must be binary"):
        compute_metrics(pred * 2, ref)
    with pytest.raises(ValueError, match="2D or 3D"):
        compute_surface_distances(pred[0], ref[0])
    with pytest.raises(ValueError, match="convention must be one of"):
        compute_metrics(pred, ref, convention="itk")
    with pytest.raises(ValueError, match="unknown metrics"):
        compute_metrics(pred, ref, metrics=("hd99",))
    with pytest.raises(ValueError, match="nsd_tolerance"):
        compute_metrics(pred, ref, nsd_tolerance=-1.0)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x[None, None].astype(np.float32))


def _monai_reference(pred, ref, spacing, tau):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {"include_background": True, "spacing": spacing}
        asd_pr = monai_metrics.compute_average_surface_distance(_t(pred), _t(ref), **kw).item()
        asd_rp = monai_metrics.compute_average_surface_distance(_t(ref), _t(pred), **kw).item()
        return {
            "hd": monai_metrics.compute_hausdorff_distance(_t(pred), _t(ref), **kw).item(),
            "hd95": monai_metrics.compute_hausdorff_distance(_t(pred), _t(ref), percentile=95, **kw).item(),
            "assd": monai_metrics.compute_average_surface_distance(_t(pred), _t(ref), symmetric=True, **kw).item(),
            "masd": (asd_pr + asd_rp) / 2,
            "avg_hausdorff": max(asd_pr, asd_rp),
            "nsd": monai_metrics.compute_surface_dice(_t(pred), _t(ref), [tau], **kw).item(),
        }


@pytest.mark.parametrize(("shape", "spacing"), CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_parity_monai(blobs, shape, spacing, seed):
    pred, ref = blobs(shape, seed), blobs(shape, seed + 50, fraction=0.2)
    tau = spacing[1]  # a tolerance that distances hit exactly
    want = _monai_reference(pred, ref, spacing, tau)
    for convention in ("monai", "default"):
        got = compute_metrics(pred, ref, spacing=spacing, metrics=SURFACE_METRICS, nsd_tolerance=tau,
                              convention=convention)  # fmt: skip
        assert got == pytest.approx(want, rel=RTOL)


def test_parity_monai_batched_api_and_cumulative(blobs):
    shape, spacing = CASES[1]
    labels = np.zeros((2, 1, *shape), dtype=np.int64)
    refs = np.zeros_like(labels)
    for b in range(2):
        labels[b, 0][blobs(shape, 10 + b)] = 1
        labels[b, 0][blobs(shape, 20 + b, fraction=0.1)] = 2
        refs[b, 0][blobs(shape, 30 + b)] = 1
        refs[b, 0][blobs(shape, 40 + b, fraction=0.1)] = 2
    refs[1, 0][refs[1, 0] == 2] = 0  # class 2 empty in the reference of case 1

    def one_hot(x):
        return torch.from_numpy(np.concatenate([x == c for c in range(3)], 1).astype(np.float32))

    p, r = one_hot(labels), one_hot(refs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want_hd95 = monai_metrics.compute_hausdorff_distance(p, r, percentile=95, spacing=spacing).double()
        want_dir = monai_metrics.compute_hausdorff_distance(p, r, directed=True, spacing=spacing).double()
        want_asd = monai_metrics.compute_average_surface_distance(p, r, spacing=spacing).double()
        want_nsd = monai_metrics.compute_surface_dice(p, r, [1.0, 2.0], spacing=spacing).double()
    # MONAI gives inf or NaN (distances) and 0 (NSD) when one mask is empty; everylabel gives NaN
    assert not torch.isfinite(want_hd95[1, 1]) and torch.isinf(want_asd[1, 1]) and want_nsd[1, 1] == 0
    for t in (want_hd95, want_dir, want_asd, want_nsd):
        t[1, 1] = float("nan")
    got = compute_surface_metrics(labels, refs, ("hd95", "nsd"), spacing, [1.0, 2.0], "monai", num_classes=3)
    np.testing.assert_allclose(got["hd95"], want_hd95.numpy(), rtol=RTOL)
    np.testing.assert_allclose(got["nsd"], want_nsd.numpy(), rtol=RTOL)
    kw = {"spacing": spacing, "convention": "monai"}
    torch.testing.assert_close(compute_hausdorff_distance(p, r, directed=True, **kw), want_dir, rtol=RTOL, atol=0,
                               equal_nan=True)  # fmt: skip
    torch.testing.assert_close(compute_average_surface_distance(p, r, symmetric=False, **kw), want_asd, rtol=RTOL,
                               atol=0, equal_nan=True)  # fmt: skip
    torch.testing.assert_close(compute_surface_dice(p, r, [1.0, 2.0], **kw), want_nsd, rtol=RTOL, atol=0,
                               equal_nan=True)  # fmt: skip
    metric = HausdorffDistanceMetric(percentile=95, reduction="mean_batch", **kw)
    metric(p[:1], r[:1])
    metric(p[1:], r[1:])
    np.testing.assert_allclose(metric.aggregate().numpy(), np.nanmean(want_hd95.numpy(), axis=0), rtol=RTOL)
    assert SurfaceDistanceMetric(symmetric=False, reduction="none", **kw)(p, r).shape == (2, 2)
    assert SurfaceDiceMetric([1.0, 1.0, 2.0], include_background=True, **kw)(p, r).shape == (2, 3)


def test_hd95_conventions_pinned():
    """A square and the same square plus one voxel 6 away: HD95 is 2.4 (MONAI, default) but 0.0 (MedPy)."""
    pred = np.zeros((10, 14), dtype=bool)
    pred[2:6, 2:6] = True
    ref = pred.copy()
    ref[3, 11] = True
    # pred->ref: 12 border voxels at 0. ref->pred: 12 at 0 and one at 6.
    # default/MONAI: max(p95([0]*12), p95([0]*12 + [6])) = 0.4 * 6 = 2.4 (linear interpolation at rank 11.4)
    # MedPy: p95([0]*24 + [6]) = 0 (rank 22.8 lies among the zeros)
    got = {c: compute_metrics(pred, ref, metrics=("hd", "hd95"), convention=c) for c in ("default", "monai", "medpy")}
    assert got["default"] == pytest.approx({"hd": 6.0, "hd95": 2.4}, rel=1e-12)
    assert got["monai"] == pytest.approx({"hd": 6.0, "hd95": 2.4}, rel=1e-6)
    assert got["medpy"] == {"hd": 6.0, "hd95": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_hd95 = monai_metrics.compute_hausdorff_distance(_t(pred), _t(ref), include_background=True, percentile=95)
    assert monai_hd95.item() == pytest.approx(2.4, rel=1e-6)
