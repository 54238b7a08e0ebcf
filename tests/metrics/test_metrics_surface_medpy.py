"""Parity with MedPy (skipped when medpy is not installed), and its HD95 difference from MONAI."""

from __future__ import annotations

import pytest

from everylabel.metrics import compute_metrics

CASES = [((48, 40), (0.7, 1.3)), ((24, 22, 16), (0.8, 1.1, 2.5))]
RTOL = 1e-6

medpy_binary = pytest.importorskip("medpy.metric.binary", reason="MedPy parity needs medpy")


@pytest.mark.parametrize(("shape", "spacing"), CASES)
def test_parity_medpy_and_hd95_difference(blobs, shape, spacing):
    pred, ref = blobs(shape, 7), blobs(shape, 8, fraction=0.15)
    medpy = compute_metrics(pred, ref, spacing=spacing, metrics=("hd", "hd95", "assd"), convention="medpy")
    assert medpy["hd"] == pytest.approx(medpy_binary.hd(pred, ref, spacing), rel=RTOL)
    assert medpy["assd"] == pytest.approx(medpy_binary.assd(pred, ref, spacing), rel=RTOL)
    assert medpy["hd95"] == pytest.approx(medpy_binary.hd95(pred, ref, spacing), rel=RTOL)
    # MedPy's HD95 is the percentile of the concatenated distances, MONAI's (and default) the max of the two
    # directed percentiles: the same masks give different numbers, and MedPy's is never the larger.
    default = compute_metrics(pred, ref, spacing=spacing, metrics=("hd", "hd95", "assd"))
    assert default["hd"] == pytest.approx(medpy["hd"], rel=RTOL)
    assert default["assd"] == pytest.approx(medpy["assd"], rel=RTOL)
    assert default["hd95"] > medpy["hd95"] * (1 + 1e-3)
