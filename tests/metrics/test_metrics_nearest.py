"""The neighbour search behind the surface metrics: exact parity with scipy's distance transform, the KD-tree
fallback for far voxels, threads, and metric parity with MONAI / MedPy / DeepMind on masks with far surfaces."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from everylabel.metrics import SURFACE_METRICS, compute_metrics
from everylabel.metrics import _nearest as nearest
from everylabel.metrics._nearest import border_voxels, nearest_distances, nearest_distances_both

ULP_RTOL = 1e-15  # the search and the transform may pick different offsets of exactly equal length


def _edt(src: np.ndarray, dst: np.ndarray, spacing) -> np.ndarray:
    return ndimage.distance_transform_edt(~dst, sampling=spacing)[src]


def _assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=ULP_RTOL, atol=0)


@pytest.fixture
def far_pair():
    """A large blob and a one-voxel blob 71 voxels (56.8 mm) away, beyond the default search radius (46.8 mm)."""

    def make(shape=(100, 24, 18)):
        large = np.zeros(shape, dtype=bool)
        large[2:20, 4:20, 3:15] = True
        tiny = large.copy()
        tiny[90, 12, 9] = True
        return large, tiny

    return make


@pytest.fixture
def count_fallback(monkeypatch):
    calls = []
    original = nearest._kdtree_fallback

    def spy(coords, dst, spacing):
        calls.append(len(coords))
        return original(coords, dst, spacing)

    monkeypatch.setattr(nearest, "_kdtree_fallback", spy)
    return calls


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [
        ((41, 37), (1.0, 1.0)),
        ((41, 37), (0.7, 1.3)),  # line axis 0
        ((41, 37), (1.3, 0.45)),  # line axis 1
        ((23, 19, 17), (0.8, 0.8, 2.5)),
        ((23, 19, 17), (2.5, 0.6, 0.9)),  # line axis 1
        ((23, 19, 17), (1.1, 2.0, 0.3)),  # line axis 2
        ((12, 30, 9), (0.33, 0.33, 0.33)),
    ],
)
@pytest.mark.parametrize("radius", [1, 3, None])
def test_matches_distance_transform(blobs, shape, spacing, radius):
    a, b = blobs(shape, 1, sigma=1.5, fraction=0.2), blobs(shape, 2, sigma=1.0, fraction=0.05)
    d_ab, d_ba = nearest_distances_both(a, b, spacing, radius=radius)
    _assert_same(d_ab, _edt(a, b, spacing))
    _assert_same(d_ba, _edt(b, a, spacing))
    _assert_same(nearest_distances(a, b, spacing, radius=radius), d_ab)


def test_kdtree_fallback_for_far_voxels(far_pair, count_fallback):
    large, tiny = far_pair()
    spacing = (0.8, 1.1, 2.5)
    d_lt, d_tl = nearest_distances_both(large, tiny, spacing)
    assert count_fallback, "the far voxel should have gone to the KD-tree"
    _assert_same(d_lt, _edt(large, tiny, spacing))
    _assert_same(d_tl, _edt(tiny, large, spacing))
    assert d_tl.max() == pytest.approx(71 * 0.8)  # (90 - 19) voxels along axis 0
    assert nearest._default_radius(spacing) * 0.8 < 71 * 0.8


def test_many_far_voxels_switch_to_the_kdtree_early(count_fallback):
    """A cube 12-40 voxels from a single voxel: searching the whole radius for every face voxel would cost more than
    a KD-tree of one point, so the search stops after about as many offsets as the tree costs."""
    cube = np.zeros((70, 40, 40), dtype=bool)
    cube[30:62, 4:36, 4:36] = True
    point = np.zeros_like(cube)
    point[2, 20, 20] = True
    d_cp, d_pc = nearest_distances_both(cube, point, (1.0, 1.0, 1.0))
    assert count_fallback and count_fallback[0] > 100
    _assert_same(d_cp, _edt(cube, point, (1.0, 1.0, 1.0)))
    _assert_same(d_pc, _edt(point, cube, (1.0, 1.0, 1.0)))


def test_single_voxel_and_every_voxel_far(count_fallback):
    a = np.zeros((300, 5), dtype=bool)
    a[0, 2] = True
    b = np.zeros_like(a)
    b[299, 0] = True
    d_ab, d_ba = nearest_distances_both(a, b, (0.5, 1.0))
    assert count_fallback
    assert d_ab.tolist() == d_ba.tolist() == [float(np.sqrt((299 * 0.5) ** 2 + 2.0**2))]


def test_border_voxels_equal_erosion(blobs):
    for shape in ((30, 33), (14, 12, 16)):
        m = np.pad(blobs(shape, 4, sigma=1.0), 1)
        want = (m & ~ndimage.binary_erosion(m))[(slice(1, -1),) * m.ndim]
        np.testing.assert_array_equal(border_voxels(m), want)


def test_two_threads_give_the_same_numbers(blobs, monkeypatch):
    shape, spacing = (40, 36, 30), (0.9, 0.9, 1.7)
    a, b = blobs(shape, 5, fraction=0.25), blobs(shape, 6, fraction=0.25)
    single = nearest_distances_both(a, b, spacing)
    monkeypatch.setattr(nearest, "_cpus", lambda: 2)
    monkeypatch.setattr(nearest, "_PARALLEL_MIN", 1)
    monkeypatch.setattr(nearest, "_CHUNK", 1 << 12)  # many slabs, shared between the threads
    threaded = nearest_distances_both(a, b, spacing)
    for x, y in zip(single, threaded):
        np.testing.assert_array_equal(x, y)


def test_bad_radius():
    a = np.ones((3, 3), dtype=bool)
    with pytest.raises(ValueError, match="radius must lie in"):
        nearest_distances(a, a, (1.0, 1.0), radius=0)


# ------------------------------------------------------------------------------------------ metric parity
def _monai_surface(pred, ref, spacing, tau):
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    def t(x):
        return torch.from_numpy(x[None, None].astype(np.float32))

    kw = {"include_background": True, "spacing": spacing}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "hd": compute_hausdorff_distance(t(pred), t(ref), **kw).item(),
            "hd95": compute_hausdorff_distance(t(pred), t(ref), percentile=95, **kw).item(),
            "assd": compute_average_surface_distance(t(pred), t(ref), symmetric=True, **kw).item(),
            "nsd": compute_surface_dice(t(pred), t(ref), [tau], **kw).item(),
        }


def _far_cases(blobs):
    """Anisotropic 3D and 2D pairs whose surfaces include voxels beyond the default search radius (46.8 mm in 3D,
    127 mm in 2D)."""
    large = blobs((100, 24, 18), 7, sigma=2.0, fraction=0.3)
    large[25:] = False
    pred = large.copy()
    pred[92:95, 10:13, 8:10] = True  # a small blob 51 mm from the reference
    ref = ndimage.binary_erosion(large)
    ref[35, 23, 17] = True  # and a single reference voxel away from the rest
    flat_large = blobs((240, 40), 8, sigma=2.0, fraction=0.3)
    flat_large[100:] = False
    flat_pred = flat_large.copy()
    flat_pred[230:233, 36:39] = True  # >= 130 rows of 1.2 mm from the reference
    return [(pred, ref, (0.8, 1.1, 2.5)), (flat_pred, flat_large, (1.2, 0.5))]


def test_far_surfaces_match_monai(blobs, count_fallback):
    pytest.importorskip("monai")
    for pred, ref, spacing in _far_cases(blobs):
        tau = spacing[0]
        want = _monai_surface(pred, ref, spacing, tau)
        got = compute_metrics(pred, ref, spacing=spacing, metrics=("hd", "hd95", "assd", "nsd"), nsd_tolerance=tau,
                              convention="monai")  # fmt: skip
        assert got == pytest.approx(want, rel=1e-6)
        default = compute_metrics(pred, ref, spacing=spacing, metrics=("hd", "hd95", "assd", "nsd"),
                                  nsd_tolerance=tau)  # fmt: skip
        assert default == pytest.approx(want, rel=1e-6)
    assert count_fallback


def test_far_surfaces_match_medpy(blobs, count_fallback):
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    for pred, ref, spacing in _far_cases(blobs):
        got = compute_metrics(pred, ref, spacing=spacing, metrics=("hd", "hd95", "assd"), convention="medpy")
        assert got["hd"] == pytest.approx(medpy_binary.hd(pred, ref, spacing), rel=1e-12)
        assert got["hd95"] == pytest.approx(medpy_binary.hd95(pred, ref, spacing), rel=1e-12)
        assert got["assd"] == pytest.approx(medpy_binary.assd(pred, ref, spacing), rel=1e-12)
    assert count_fallback


def test_far_surfaces_match_deepmind(blobs, count_fallback):
    surface_distance = pytest.importorskip("surface_distance")
    for pred, ref, spacing in _far_cases(blobs):
        tau = spacing[1]
        sd = surface_distance.compute_surface_distances(ref, pred, spacing)
        got = compute_metrics(pred, ref, spacing=spacing, metrics=SURFACE_METRICS, nsd_tolerance=tau,
                              convention="deepmind")  # fmt: skip
        assert got["hd"] == pytest.approx(surface_distance.compute_robust_hausdorff(sd, 100), rel=1e-12)
        assert got["hd95"] == pytest.approx(surface_distance.compute_robust_hausdorff(sd, 95), rel=1e-12)
        assert got["nsd"] == pytest.approx(surface_distance.compute_surface_dice_at_tolerance(sd, tau), rel=1e-12)
        gt_to_pred, pred_to_gt = surface_distance.compute_average_surface_distance(sd)
        assert got["masd"] == pytest.approx((gt_to_pred + pred_to_gt) / 2, rel=1e-12)
    assert count_fallback
