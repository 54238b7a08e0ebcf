"""Parity with DeepMind surface-distance (skipped when it is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

from everylabel.metrics import SURFACE_METRICS, compute_metrics

CASES = [((48, 40), (0.7, 1.3)), ((24, 22, 16), (0.8, 1.1, 2.5))]
RTOL = 1e-6

surface_distance = pytest.importorskip("surface_distance", reason="DeepMind parity needs surface-distance")


def _deepmind_reference(pred, ref, spacing, tau):
    sd = surface_distance.compute_surface_distances(ref, pred, spacing)
    gt_to_pred, pred_to_gt = surface_distance.compute_average_surface_distance(sd)
    areas = np.concatenate([sd["surfel_areas_gt"], sd["surfel_areas_pred"]])
    dists = np.concatenate([sd["distances_gt_to_pred"], sd["distances_pred_to_gt"]])
    return {
        "hd": surface_distance.compute_robust_hausdorff(sd, 100),
        "hd95": surface_distance.compute_robust_hausdorff(sd, 95),
        "assd": np.sum(areas * dists) / np.sum(areas),
        "masd": (gt_to_pred + pred_to_gt) / 2,
        "avg_hausdorff": max(gt_to_pred, pred_to_gt),
        "nsd": surface_distance.compute_surface_dice_at_tolerance(sd, tau),
    }


@pytest.mark.parametrize(("shape", "spacing"), CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_parity_deepmind(blobs, shape, spacing, seed):
    pred, ref = blobs(shape, seed + 3), blobs(shape, seed + 60, fraction=0.2)
    tau = spacing[0]
    want = _deepmind_reference(pred, ref, spacing, tau)
    got = compute_metrics(pred, ref, spacing=spacing, metrics=SURFACE_METRICS, nsd_tolerance=tau,
                          convention="deepmind")  # fmt: skip
    assert got == pytest.approx(want, rel=RTOL)


def test_deepmind_surfel_table_is_verbatim():
    from surface_distance import lookup_tables

    from everylabel.metrics._surfel_tables import NEIGHBOUR_CODE_TO_NORMALS

    for ours, theirs in zip(NEIGHBOUR_CODE_TO_NORMALS, lookup_tables._NEIGHBOUR_CODE_TO_NORMALS, strict=True):
        np.testing.assert_array_equal(np.asarray(ours, float), np.asarray(theirs, float))


def test_weighted_percentile_matches_deepmind_order():
    """The fast path (sorted by distance only) returns what DeepMind's (distance, weight) order returns, also when
    the target falls exactly on the end of a run of equal distances."""
    from everylabel.metrics.surface import _weighted_percentile

    def deepmind(distances, weights, q):
        order = np.lexsort((weights, distances))
        cumulative = np.cumsum(weights[order]) / np.sum(weights)
        return distances[order][min(int(np.searchsorted(cumulative, q / 100.0)), len(distances) - 1)]

    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(1, 300))
        d = np.sqrt(rng.integers(0, rng.integers(1, 30), size=n) * 0.64)
        w = rng.choice(rng.random(3) if rng.random() < 0.5 else np.array([0.25, 0.5, 1.0]), size=n)
        for q in (0, 5, 50, 95, 100):
            assert _weighted_percentile(d, w, q) == deepmind(d, w, q)
    d, w = np.repeat([1.0, 2.0], 10), np.ones(20)  # 95% of 20 equal weights ends exactly after 19 elements
    assert _weighted_percentile(d, w, 95) == deepmind(d, w, 95) == 2.0
    assert _weighted_percentile(d, w, 50) == deepmind(d, w, 50) == 1.0
