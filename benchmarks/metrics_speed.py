"""Surface-metric speed: everylabel's one-pass HD/HD95/ASSD/NSD vs MONAI, MedPy and DeepMind surface-distance, CPU.

Cases: one 2D 584x565 pair (DRIVE test image 01, first vs second observer, if ``../shared/data/DRIVE`` exists, else
a synthetic vessel-like pair) with unit spacing, and seeded 3D blob pairs of 128^3 and 256^3 (smoothed noise
thresholded; the prediction is a perturbed copy of the reference) with spacing (0.8, 0.8, 2.5). NSD tolerance 1.0.

Each peer computes the metrics its own way and everylabel runs in the matching convention:

- MONAI: one call per metric (``compute_hausdorff_distance`` with ``percentile=None`` and ``95``,
  ``compute_average_surface_distance(symmetric=True)``, ``compute_surface_dice(class_thresholds=[1.0])``) vs
  ``compute_metrics(metrics=[hd, hd95, assd, nsd], convention="monai")`` (one surface pass); also HD95 alone.
- MedPy: ``hd``, ``hd95``, ``assd`` (``voxelspacing``) vs ``compute_metrics(..., convention="medpy")``.
- DeepMind: ``compute_surface_distances`` once, then robust HD 100 / 95, the area-weighted average distance and
  the surface Dice at tolerance vs ``compute_metrics(..., convention="deepmind")``.
- Extra row: MONAI ``DiceMetric`` vs ``compute_dice`` on 256^3.

After one warm-up, peer and everylabel are timed alternately ``repeats`` times (2 threads, ``time.perf_counter``)
and medians compared. ``disagreements`` counts (case, metric, peer) whose relative difference exceeds 1e-6.
Peak memory: the peak resident set size of one extra untimed call, measured by resetting the kernel's high-water
mark (``/proc/self/clear_refs``) and reading ``VmHWM - VmRSS`` before the call (covers numpy, scipy and torch);
falls back to ``tracemalloc`` (numpy/Python allocations only) where ``clear_refs`` is unavailable.

The last line is machine-readable: ``RESULT surface4_speedup_vs_monai=<x> hd95_speedup_vs_monai=<x>
disagreements=<n>`` (256^3, MONAI time / ours, > 1 means faster).

everylabel's surface pass (``everylabel.metrics._nearest``) runs its array work in up to two threads on boxes of
256k voxels or more; the peers run as they come (MONAI's KD-tree and MedPy / DeepMind's distance transforms use
one core).

    python benchmarks/metrics_speed.py [--repeats-2d 5] [--repeats-128 3] [--repeats-256 3] [--cases 2d,128,256]
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from everylabel.metrics import compute_dice, compute_metrics

SPACING_3D = (0.8, 0.8, 2.5)
TAU = 1.0
RTOL = 1e-6
SURF4 = ["hd", "hd95", "assd", "nsd"]
DRIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "DRIVE"


# ----------------------------------------------------------------------------------------------------- data
def _blob_pair(shape: tuple[int, ...], seed: int, sigma: float, fraction: float = 0.3) -> tuple[np.ndarray, ...]:
    """Reference: smoothed noise above its (1 - fraction) quantile; prediction: the same field plus smaller noise."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma / 2)
    ref = field > np.quantile(field, 1.0 - fraction)
    perturbed = field + 0.5 * noise * (field.std() / noise.std())
    pred = perturbed > np.quantile(perturbed, 1.0 - fraction)
    return pred, ref


def _drive_pair() -> tuple[np.ndarray, np.ndarray, str]:
    from PIL import Image

    a = DRIVE / "test" / "1st_manual" / "01_manual1.gif"
    b = DRIVE / "test" / "2nd_manual" / "01_manual2.gif"
    if a.exists() and b.exists():
        ref = np.asarray(Image.open(a)) > 0
        pred = np.asarray(Image.open(b)) > 0
        return pred, ref, "DRIVE 01 (2nd observer vs 1st)"
    rng = np.random.default_rng(7)
    field = ndimage.gaussian_filter(rng.standard_normal((584, 565)), 3)
    ref = np.abs(field) < 0.02  # thin level-set lines, vessel-like
    pred = np.abs(field + 0.003 * ndimage.gaussian_filter(rng.standard_normal((584, 565)), 2)) < 0.02
    return pred, ref, "synthetic 584x565 (DRIVE not found)"


# ----------------------------------------------------------------------------------------------------- peers
def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x[None, None].astype(np.float32))


def monai_surface4(pred, ref, spacing):
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    p, r = _t(pred), _t(ref)
    kw = {"include_background": True, "spacing": spacing}
    return {
        "hd": compute_hausdorff_distance(p, r, percentile=None, **kw).item(),
        "hd95": compute_hausdorff_distance(p, r, percentile=95, **kw).item(),
        "assd": compute_average_surface_distance(p, r, symmetric=True, **kw).item(),
        "nsd": compute_surface_dice(p, r, class_thresholds=[TAU], **kw).item(),
    }


def monai_hd95(pred, ref, spacing):
    from monai.metrics import compute_hausdorff_distance

    return {"hd95": compute_hausdorff_distance(_t(pred), _t(ref), percentile=95, include_background=True,
                                               spacing=spacing).item()}  # fmt: skip


def medpy3(pred, ref, spacing):
    from medpy.metric import binary

    return {
        "hd": float(binary.hd(pred, ref, voxelspacing=spacing)),
        "hd95": float(binary.hd95(pred, ref, voxelspacing=spacing)),
        "assd": float(binary.assd(pred, ref, voxelspacing=spacing)),
    }


def deepmind4(pred, ref, spacing):
    import surface_distance as sdm

    sd = sdm.compute_surface_distances(ref, pred, spacing)
    areas = np.concatenate([sd["surfel_areas_gt"], sd["surfel_areas_pred"]])
    dists = np.concatenate([sd["distances_gt_to_pred"], sd["distances_pred_to_gt"]])
    return {
        "hd": float(sdm.compute_robust_hausdorff(sd, 100)),
        "hd95": float(sdm.compute_robust_hausdorff(sd, 95)),
        "assd": float(np.sum(areas * dists) / np.sum(areas)),
        "nsd": float(sdm.compute_surface_dice_at_tolerance(sd, TAU)),
    }


def ours(metrics: list[str], convention: str) -> Callable:
    def fn(pred, ref, spacing):
        return compute_metrics(pred, ref, spacing=spacing, metrics=metrics, nsd_tolerance=TAU, convention=convention)

    return fn


# ----------------------------------------------------------------------------------------------------- harness
def _time(fn: Callable, *args) -> tuple[float, object]:
    gc.collect()
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def _clear_refs_ok() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_mib(fn: Callable, *args) -> float:
    """Peak extra memory of one call in MiB (RSS high-water delta, or tracemalloc peak as a fallback)."""
    gc.collect()
    if MEM_MODE == "rss":
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kb("VmRSS")
        fn(*args)
        return (_status_kb("VmHWM") - before) / 1024
    tracemalloc.start()
    fn(*args)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def rel_diff(a: float, b: float) -> float:
    if (math.isnan(a) and math.isnan(b)) or a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(b), 1e-12)


def compare(peer_fn, our_fn, args, repeats):
    """Warm-up once, then ``repeats`` alternating timings; returns (peer median, ours median, peer vals, our vals)."""
    peer_vals, our_vals = peer_fn(*args), our_fn(*args)
    tp, to = [], []
    for i in range(repeats):
        order = ((peer_fn, tp), (our_fn, to)) if i % 2 == 0 else ((our_fn, to), (peer_fn, tp))
        for fn, acc in order:
            dt, _ = _time(fn, *args)
            acc.append(dt)
    return statistics.median(tp), statistics.median(to), peer_vals, our_vals


MEM_MODE = "rss" if _clear_refs_ok() else "tracemalloc"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats-2d", type=int, default=5)
    parser.add_argument("--repeats-128", type=int, default=3)
    parser.add_argument("--repeats-256", type=int, default=3)
    parser.add_argument("--cases", default="2d,128,256", help="comma-separated subset of 2d,128,256 (quick checks)")
    args = parser.parse_args()
    wanted = set(args.cases.split(","))
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")

    import medpy
    import monai

    t_start = time.perf_counter()
    cases = []
    if "2d" in wanted:
        pred2, ref2, name2 = _drive_pair()
        cases.append((f"2D 584x565: {name2}", pred2, ref2, (1.0, 1.0), args.repeats_2d))
    if "128" in wanted:
        cases.append(("3D 128^3 blobs", *_blob_pair((128,) * 3, seed=0, sigma=4.0), SPACING_3D, args.repeats_128))
    if "256" in wanted:
        cases.append(("3D 256^3 blobs", *_blob_pair((256,) * 3, seed=1, sigma=8.0), SPACING_3D, args.repeats_256))
    memory = "RSS high-water delta (VmHWM after clear_refs)" if MEM_MODE == "rss" else "tracemalloc peak (numpy only)"
    print(f"monai {monai.__version__}, medpy {getattr(medpy, '__version__', '?')}, surface-distance (DeepMind), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()} (everylabel: up to 2), NSD tolerance {TAU}, "
          f"warm-up 1, medians of alternating runs; peak memory = {memory}")  # fmt: skip
    print("everylabel has convention 'medpy' -> MedPy HD95 is compared against it and counted.")

    rows_by_case = {}
    disagreements = 0
    headline = {}
    for label, pred, ref, spacing, repeats in cases:
        print(f"\n== {label}: shape {pred.shape}, spacing {spacing}, fg ref {ref.mean():.3f} pred {pred.mean():.3f}, "
              f"Dice {2 * (pred & ref).sum() / (pred.sum() + ref.sum()):.3f}, repeats {repeats}")  # fmt: skip
        comparisons = [
            ("MONAI 4 metrics (4 calls)", monai_surface4, "one-pass monai", ours(SURF4, "monai"), SURF4),
            ("MONAI HD95 alone", monai_hd95, "hd95 monai", ours(["hd95"], "monai"), ["hd95"]),
            ("MedPy hd+hd95+assd", medpy3, "one-pass medpy", ours(["hd", "hd95", "assd"], "medpy"),
             ["hd", "hd95", "assd"]),
            ("DeepMind 1 pass + 4", deepmind4, "one-pass deepmind", ours(SURF4, "deepmind"), SURF4),
        ]  # fmt: skip
        print(f"{'peer':28s} {'peer s':>9s} {'ours':18s} {'ours s':>9s} {'speed-up':>8s} {'max rel diff':>12s} "
              f"{'peer MiB':>9s} {'ours MiB':>9s}  values (ours)")  # fmt: skip
        rows = []
        for peer_name, peer_fn, our_name, our_fn, names in comparisons:
            tp, to, pv, ov = compare(peer_fn, our_fn, (pred, ref, spacing), repeats)
            diffs = {m: rel_diff(ov[m], pv[m]) for m in names}
            bad = [m for m, d in diffs.items() if d > RTOL]
            if peer_name != "MONAI HD95 alone":  # same (case, hd95, MONAI) as the 4-metric row; not counted twice
                disagreements += len(bad)
            mp, mo = peak_mib(peer_fn, pred, ref, spacing), peak_mib(our_fn, pred, ref, spacing)
            vals = " ".join(f"{m}={ov[m]:.6g}" for m in names)
            flag = f"  DISAGREE: {', '.join(f'{m} peer={pv[m]:.9g} ours={ov[m]:.9g}' for m in bad)}" if bad else ""
            print(f"{peer_name:28s} {tp:9.3f} {our_name:18s} {to:9.3f} {tp / to:7.1f}x {max(diffs.values()):12.2e} "
                  f"{mp:9.1f} {mo:9.1f}  {vals}{flag}", flush=True)  # fmt: skip
            rows.append((peer_name, tp, to))
        if "256" in label:
            headline["surface4"] = rows[0][1] / rows[0][2]
            headline["hd95"] = rows[1][1] / rows[1][2]
            # extra row: plain Dice
            from monai.metrics import DiceMetric

            p_t, r_t = _t(pred), _t(ref)

            def monai_dice(p, r):
                metric = DiceMetric(include_background=True, reduction="none")
                metric(p, r)
                return {"dice": float(metric.aggregate().item())}

            def our_dice(p, r):
                return {"dice": float(compute_dice(p, r)[0, 0])}

            tp, to, pv, ov = compare(monai_dice, our_dice, (p_t, r_t), repeats)
            d = rel_diff(ov["dice"], pv["dice"])
            disagreements += int(d > RTOL)
            mp, mo = peak_mib(monai_dice, p_t, r_t), peak_mib(our_dice, p_t, r_t)
            print(f"{'MONAI DiceMetric':28s} {tp:9.3f} {'compute_dice':18s} {to:9.3f} {tp / to:7.1f}x {d:12.2e} "
                  f"{mp:9.1f} {mo:9.1f}  dice={ov['dice']:.6g}", flush=True)  # fmt: skip
        rows_by_case[label] = rows

    print(f"\ndisagreements counted over (case, metric, peer): MONAI hd/hd95/assd/nsd, MedPy hd/hd95/assd "
          f"(hd95 vs convention 'medpy'), DeepMind hd/hd95/assd/nsd, plus Dice on 256^3; threshold rel {RTOL:g}")
    print(f"total wall time {time.perf_counter() - t_start:.1f} s")
    if headline:
        print(f"RESULT surface4_speedup_vs_monai={headline['surface4']:.2f} "
              f"hd95_speedup_vs_monai={headline['hd95']:.2f} disagreements={disagreements}")  # fmt: skip
    else:
        print(f"RESULT disagreements={disagreements} (no 256^3 case: no speed-up headline)")


if __name__ == "__main__":
    main()
