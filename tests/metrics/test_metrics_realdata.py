"""Real masks: DRIVE observers (2D, field of view) and LA heart (3D) against MONAI and DeepMind."""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from everylabel.metrics import SURFACE_METRICS, case_records, compute_metrics, summarize

pytestmark = pytest.mark.realdata
monai_metrics = pytest.importorskip("monai.metrics")

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
RTOL = 1e-6


def _drive(index: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from PIL import Image

    root = DATA / "DRIVE" / "test"
    if not root.exists():
        pytest.skip(f"DRIVE not found at {root}")

    def read(path):
        return np.array(Image.open(path)) > 0

    first = read(root / "1st_manual" / f"{index:02d}_manual1.gif")
    second = read(root / "2nd_manual" / f"{index:02d}_manual2.gif")
    fov = read(root / "mask" / f"{index:02d}_test_mask.gif")
    return second, first, fov


def _la_heart() -> np.ndarray:
    h5py = pytest.importorskip("h5py")
    files = sorted((DATA / "LA_heart_h5").glob("*/*/mri_norm2.h5"))
    if not files:
        pytest.skip(f"LA_heart_h5 not found under {DATA}")
    with h5py.File(files[0]) as f:
        return f["label"][:].astype(bool)


def _monai(pred, ref, spacing, tau):
    def t(x):
        return torch.from_numpy(x[None, None].astype(np.float32))

    kw = {"include_background": True, "spacing": spacing}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "hd": monai_metrics.compute_hausdorff_distance(t(pred), t(ref), **kw).item(),
            "hd95": monai_metrics.compute_hausdorff_distance(t(pred), t(ref), percentile=95, **kw).item(),
            "assd": monai_metrics.compute_average_surface_distance(t(pred), t(ref), symmetric=True, **kw).item(),
            "nsd": monai_metrics.compute_surface_dice(t(pred), t(ref), [tau], **kw).item(),
            "dice": monai_metrics.compute_dice(t(pred), t(ref), include_background=True).item(),
        }


def test_drive_observers_match_monai_and_deepmind():
    second, first, fov = _drive(1)
    assert second.shape == first.shape == fov.shape == (584, 565)
    want = _monai(second & fov, first & fov, (1.0, 1.0), 2.0)
    got = compute_metrics(second, first, valid=fov, nsd_tolerance=2.0, convention="monai", metrics=tuple(want))
    assert got == pytest.approx(want, rel=RTOL)
    # the field of view restricts overlap counting: accuracy over the FOV differs from the whole image
    acc_fov = compute_metrics(second, first, valid=fov, metrics=("accuracy",))["accuracy"]
    agree = (second == first)[fov].mean()
    assert acc_fov == pytest.approx(agree, rel=1e-12)
    if importlib.util.find_spec("surface_distance") is not None:
        import surface_distance

        sd = surface_distance.compute_surface_distances(first & fov, second & fov, (1.0, 1.0))
        dm = compute_metrics(
            second, first, valid=fov, nsd_tolerance=2.0, convention="deepmind", metrics=SURFACE_METRICS
        )
        assert dm["hd95"] == pytest.approx(surface_distance.compute_robust_hausdorff(sd, 95), rel=RTOL)
        assert dm["nsd"] == pytest.approx(surface_distance.compute_surface_dice_at_tolerance(sd, 2.0), rel=RTOL)


def test_la_heart_3d_anisotropic_matches_monai_and_deepmind():
    ref = _la_heart()
    pred = ndimage.binary_dilation(np.roll(ref, (2, -1, 1), axis=(0, 1, 2)), iterations=1)
    pred[:, :, 40:44] = False  # a missing slab, for a long tail of distances
    spacing = (0.625, 0.625, 1.25)  # anisotropic on purpose
    want = _monai(pred, ref, spacing, 1.25)
    got = compute_metrics(pred, ref, spacing=spacing, nsd_tolerance=1.25, convention="monai", metrics=tuple(want))
    assert got == pytest.approx(want, rel=RTOL)
    if importlib.util.find_spec("surface_distance") is not None:
        import surface_distance

        sd = surface_distance.compute_surface_distances(ref, pred, spacing)
        dm = compute_metrics(pred, ref, spacing=spacing, nsd_tolerance=1.25, convention="deepmind")
        assert dm["hd95"] == pytest.approx(surface_distance.compute_robust_hausdorff(sd, 95), rel=RTOL)
        assert dm["masd"] == pytest.approx(np.mean(surface_distance.compute_average_surface_distance(sd)), rel=RTOL)
        assert dm["nsd"] == pytest.approx(surface_distance.compute_surface_dice_at_tolerance(sd, 1.25), rel=RTOL)


def test_drive_records_and_summary():
    records = []
    for index in (1, 2):
        second, first, fov = _drive(index)
        records += case_records(second.astype(np.uint8), first.astype(np.uint8), f"{index:02d}", {1: "vessel"},
                                valid=fov, metrics=("dice", "hd95", "nsd"))  # fmt: skip
    summary = summarize(records)
    assert summary["n_cases"] == 2
    assert 0.7 < summary["metrics"]["dice"]["mean"] < 0.85  # published inter-observer Dice on DRIVE is ~0.79
    assert summary["metrics"]["hd95"]["n_undefined"] == 0 and not math.isnan(summary["metrics"]["nsd"]["mean"])


def test_drive_topology_inter_observer():
    from skimage.measure import euler_number
    from skimage.morphology import skeletonize

    from everylabel.metrics import TOPOLOGY_METRICS, betti_numbers

    second, first, fov = _drive(1)
    m = compute_metrics(second, first, valid=fov, metrics=TOPOLOGY_METRICS)
    p, r = second & fov, first & fov
    sp, sr = skeletonize(p), skeletonize(r)
    tprec, tsens = (sp & r).sum() / sp.sum(), (sr & p).sum() / sr.sum()
    assert m["cldice"] == pytest.approx(2 * tprec * tsens / (tprec + tsens), rel=1e-12)
    assert 0.7 < m["cldice"] < 0.9
    b_p, b_r = betti_numbers(p), betti_numbers(r)
    assert b_p[0] - b_p[1] == euler_number(p, connectivity=2)
    assert m["betti0_error"] == abs(b_p[0] - b_r[0]) and m["betti1_error"] == abs(b_p[1] - b_r[1])
    assert math.isnan(m["betti2_error"])
