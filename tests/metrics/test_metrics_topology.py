"""Topology (clDice, Betti numbers, Euler characteristic) and lesion-level metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.measure import euler_number, label, regionprops
from skimage.morphology import skeletonize

from everylabel.metrics import (
    LESION_METRICS,
    TOPOLOGY_METRICS,
    betti_numbers,
    box_iou,
    cldice,
    compute_metrics,
    euler_characteristic,
    lesion_boxes,
    lesion_detection,
    match_boxes,
)


def _ring2d() -> np.ndarray:
    m = np.zeros((9, 9), dtype=bool)
    m[2:7, 2:7] = True
    m[4, 4] = False
    return m


def _torus3d() -> np.ndarray:
    m = np.zeros((9, 9, 9), dtype=bool)
    m[2:7, 2:7, 3:6] = True
    m[4, 4, :] = False
    return m


def _hollow3d() -> np.ndarray:
    m = np.zeros((9, 9, 9), dtype=bool)
    m[2:7, 2:7, 2:7] = True
    m[4, 4, 4] = False
    return m


def test_betti_numbers_known_shapes():
    assert betti_numbers(_ring2d()) == (1, 1)
    assert betti_numbers(_torus3d()) == (1, 1, 0)
    assert betti_numbers(_hollow3d()) == (1, 0, 1)
    assert betti_numbers(np.zeros((5, 5), dtype=bool)) == (0, 0)
    diagonal = np.zeros((4, 4), dtype=bool)
    diagonal[1, 1] = diagonal[2, 2] = True
    assert betti_numbers(diagonal) == (1, 0)  # 8-connected by default
    assert betti_numbers(diagonal, connectivity=1) == (2, 0)
    diamond = np.zeros((5, 5), dtype=bool)
    diamond[1, 2] = diamond[2, 1] = diamond[2, 3] = diamond[3, 2] = True
    assert betti_numbers(diamond) == (1, 1)  # the centre is a hole for 4-connected background
    assert betti_numbers(diamond, connectivity=1) == (4, 0)  # and not for 8-connected background


@pytest.mark.parametrize("connectivity", [1, None])
@pytest.mark.parametrize("shape", [(40, 40), (16, 16, 12)])
def test_betti_numbers_agree_with_euler_number(blobs, shape, connectivity):
    for seed in range(4):
        m = blobs(shape, seed, sigma=1.0, fraction=0.45)
        b = betti_numbers(m, connectivity)
        chi = b[0] - b[1] + (b[2] if len(b) == 3 else 0)
        assert chi == euler_number(m, connectivity=connectivity or m.ndim) == euler_characteristic(m, connectivity)
        assert min(b) >= 0


def test_topology_errors():
    ring, disk = _ring2d(), _ring2d()
    disk[4, 4] = True
    m = compute_metrics(ring, disk, metrics=TOPOLOGY_METRICS)
    assert m["betti0_error"] == 0 and m["betti1_error"] == 1 and m["euler_error"] == 1
    assert math.isnan(m["betti2_error"])  # no b2 in 2D
    m3 = compute_metrics(_torus3d(), _hollow3d(), metrics=("betti0_error", "betti1_error", "betti2_error"))
    assert m3 == {"betti0_error": 0.0, "betti1_error": 1.0, "betti2_error": 1.0}
    empty = np.zeros_like(ring)
    assert compute_metrics(empty, empty, metrics=("betti1_error", "euler_error")) == {
        "betti1_error": 0.0,
        "euler_error": 0.0,
    }


def test_cldice_hand_and_reference_formula(blobs):
    line = np.zeros((20, 20), dtype=bool)
    line[10, 2:18] = True
    assert cldice(line, line) == 1.0
    shifted = np.roll(line, 3, axis=0)
    assert cldice(line, shifted) == 0.0
    pred, ref = blobs((48, 48), 1, sigma=1.5), blobs((48, 48), 2, sigma=1.5)
    sp, sr = skeletonize(pred), skeletonize(ref)
    tprec, tsens = (sp & ref).sum() / sp.sum(), (sr & pred).sum() / sr.sum()
    assert cldice(pred, ref) == pytest.approx(2 * tprec * tsens / (tprec + tsens))
    assert math.isnan(cldice(np.zeros_like(line), line))
    thick = np.zeros((20, 20, 20), dtype=bool)
    thick[5:15, 8:11, 8:11] = True
    assert cldice(thick, thick) == 1.0


def test_lesion_detection_centre_of_mass_rule():
    ref = np.zeros((20, 20), dtype=bool)
    ref[2:6, 2:6] = True  # lesion A
    ref[12:16, 12:16] = True  # lesion B (missed)
    pred = np.zeros_like(ref)
    pred[3:7, 3:7] = True  # centre (4.5, 4.5) -> rounds to (5, 5), inside A: TP
    pred[2:4, 9:11] = True  # centre outside any lesion: FP
    counts = lesion_detection(pred, ref)
    assert counts == {"n_ref": 2, "n_pred": 2, "n_detected": 1, "n_tp": 1, "n_fp": 1}
    m = compute_metrics(pred, ref, metrics=LESION_METRICS)
    assert m["lesion_sensitivity"] == 0.5 and m["lesion_fp"] == 1.0
    # an overlapping component whose centre falls outside the lesion is not a detection (ADAM rule)
    l_shape = np.zeros_like(ref)
    l_shape[12:13, 12:20] = True
    l_shape[12:20, 19:20] = True
    assert lesion_detection(l_shape, ref)["n_tp"] == 0
    assert math.isnan(compute_metrics(pred, np.zeros_like(ref), metrics=("lesion_sensitivity",))["lesion_sensitivity"])


def test_box_iou_pairwise():
    a = np.array([[0, 0, 4, 4], [5, 5, 6, 8]])
    b = np.array([[2, 2, 6, 4], [10, 10, 12, 12], [5, 5, 6, 8]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou, [[4 / (16 + 8 - 4), 0, 0], [0, 0, 1]])  # 4x4 vs 4x2 boxes share 2x2
    cube = np.array([[0, 0, 0, 2, 2, 2]])
    assert box_iou(cube, cube + np.array([1, 1, 1, 1, 1, 1]))[0, 0] == pytest.approx(1 / 15)
    assert math.isnan(box_iou(np.array([[1, 1, 1, 3]]), np.array([[1, 1, 1, 3]]))[0, 0])  # empty boxes
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)
    with pytest.raises(ValueError, match=r"boxes1 must have shape \(N, 2 \* ndim\)"):
        box_iou(np.zeros((2, 3)), b)
    with pytest.raises(ValueError, match="same number of axes"):
        box_iou(cube, b)
    with pytest.raises(ValueError, match=r"boxes2\[0\] has a maximum below its minimum"):
        box_iou(a, np.array([[3, 3, 1, 5]]))


def test_lesion_boxes_match_regionprops(blobs):
    for shape in ((40, 44), (18, 16, 14)):
        mask = blobs(shape, 3, sigma=1.0, fraction=0.15)
        for connectivity in (1, None):
            want = [r.bbox for r in regionprops(label(mask, connectivity=connectivity))]
            got = lesion_boxes(mask, connectivity)
            assert got.shape == (len(want), 2 * mask.ndim) and len(want) > 3
            np.testing.assert_array_equal(got, np.asarray(want))
    assert lesion_boxes(np.zeros((4, 4), dtype=bool)).shape == (0, 4)


def test_lesion_box_iou_hand_computed():
    ref = np.zeros((20, 20), dtype=bool)
    ref[2:6, 2:6] = True  # lesion 0, box (2, 2, 6, 6)
    ref[2:4, 15:18] = True  # lesion 1 (labels follow raster order), missed
    ref[12:16, 12:16] = True  # lesion 2, box (12, 12, 16, 16)
    pred = np.zeros_like(ref)
    pred[3:7, 2:6] = True  # box (3, 2, 7, 6): IoU with lesion 0 = 12 / 20
    pred[12:16, 13:15] = True  # a cross whose box (12, 12, 16, 16) equals lesion 2's: IoU 1
    pred[13:14, 12:16] = True
    pred[9:10, 9:10] = True  # false positive, no box overlap
    assert lesion_boxes(pred).tolist() == [[3, 2, 7, 6], [9, 9, 10, 10], [12, 12, 16, 16]]
    ref_idx, pred_idx, iou = match_boxes(lesion_boxes(ref), lesion_boxes(pred))
    assert ref_idx.tolist() == [2, 0] and pred_idx.tolist() == [2, 0]  # by decreasing IoU
    np.testing.assert_allclose(iou, [1.0, 12 / 20])
    m = compute_metrics(pred, ref, metrics=LESION_METRICS)
    assert m["box_iou"] == pytest.approx((1.0 + 12 / 20) / 2)  # the missed lesion 1 is left out
    assert m["lesion_sensitivity"] == pytest.approx(2 / 3) and m["lesion_fp"] == 1.0
    empty = np.zeros_like(ref)
    assert math.isnan(compute_metrics(empty, ref, metrics=("box_iou",))["box_iou"])
    assert math.isnan(compute_metrics(ref, empty, metrics=("box_iou",))["box_iou"])


def test_match_boxes_is_one_to_one():
    ref = np.array([[0, 0, 4, 4], [0, 0, 4, 5]])
    pred = np.array([[0, 0, 4, 4]])  # best for both; the first (higher IoU) wins, the second stays unmatched
    ref_idx, pred_idx, iou = match_boxes(ref, pred)
    assert ref_idx.tolist() == [0] and pred_idx.tolist() == [0] and iou.tolist() == [1.0]
    tie = np.array([[0, 0, 2, 2], [0, 0, 2, 2]])
    assert match_boxes(tie, tie)[0].tolist() == [0, 1] and match_boxes(tie, tie)[1].tolist() == [0, 1]
    assert match_boxes(np.zeros((0, 4)), pred)[0].size == 0


def test_bad_input_messages():
    with pytest.raises(ValueError, match="connectivity must be 1 or 2"):
        betti_numbers(_ring2d(), connectivity=3)
    with pytest.raises(ValueError, match="2D or 3D"):
        betti_numbers(np.ones(5, dtype=bool))
    with pytest.raises(ValueError, match="same shape"):
        cldice(_ring2d(), _ring2d()[:-1])
    with pytest.raises(ValueError, match="binary"):
        lesion_detection(_ring2d() * 3, _ring2d())


@pytest.mark.parametrize("shape", [(30, 34), (14, 16, 12)])
def test_metrics_unchanged_by_zero_padding(blobs, shape):
    """Every metric but accuracy/specificity/kappa (which count background) ignores the empty surroundings."""
    pred, ref = blobs(shape, 11, sigma=1.5), blobs(shape, 12, sigma=1.5)
    names = ("dice", "hd", "hd95", "assd", "nsd", *TOPOLOGY_METRICS, *LESION_METRICS)
    pad = [(3, 5)] * len(shape)
    small = compute_metrics(pred, ref, metrics=names)
    large = compute_metrics(np.pad(pred, pad), np.pad(ref, pad), metrics=names)
    assert small == pytest.approx(large, nan_ok=True)
