"""CRF loss speed and bilateral-grid accuracy, CPU.

Speed: forward + backward of :func:`everylabel.losses.crf_loss` on a (1, 2, 256, 256) two-class logit map guided by
a synthetic z-scored grey image (sigma_xy 5, sigma_intensity 0.15, the defaults), median over ``--repeats`` after a
warm-up, with 2 threads. Also timed, not in RESULT: batch 8, 3D (1, 2, 64, 64, 64), an RGB guide with the full 5D
grid and with ``intensity_dims=1``, and the paper's large sigma_xy=80.

Accuracy: the normalised filter of a soft two-class segmentation (:func:`bilateral_filter`) against the exact
Gaussian bilateral filter (every pixel pair, float64, in row blocks) on a 96 x 96 image, mean and max absolute
difference, and the relative error of the loss value; for grey and synthetic colour guides at several grid
resolutions, and for a crop of a real DRIVE fundus photo (full 5D grid vs PCA projections) when
``../shared/data/DRIVE`` is present. The last line is machine-readable:
``RESULT crf_ms_256=<median ms> crf_mean_abs_err=<mean |approx - exact|>``.

    python benchmarks/crf_speed.py [--repeats 30] [--warmup 3] [--size 96]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from everylabel.losses.crf import bilateral_filter, crf_loss


def exact_bilateral(values: torch.Tensor, image: torch.Tensor, sigma_xy: float, sigma_intensity: float,
                    normalize: bool = True, block: int = 2048) -> torch.Tensor:
    """Every-pair Gaussian bilateral filter in float64, ``block`` rows of W at a time. (B, N, *S) -> (B, N, *S)."""
    b, n = values.shape[:2]
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in values.shape[2:]], indexing="ij")
    pos = torch.stack([g.reshape(-1) for g in grids], 1) / sigma_xy  # (P, d)
    out = []
    for i in range(b):
        feats = torch.cat([pos, image[i].reshape(image.shape[1], -1).T.double() / sigma_intensity], 1)  # (P, d + C)
        v = values[i].reshape(n, -1).double().T  # (P, N)
        acc, mass = torch.empty_like(v), torch.empty(v.shape[0], dtype=torch.float64)
        for s in range(0, feats.shape[0], block):
            w = torch.exp(-0.5 * torch.cdist(feats[s:s + block], feats) ** 2)  # (block, P)
            acc[s:s + block], mass[s:s + block] = w @ v, w.sum(1)
        out.append((acc / mass[:, None] if normalize else acc).T)
    return torch.stack(out).reshape(values.shape)


def exact_crf_loss(logits: torch.Tensor, image: torch.Tensor, sigma_xy: float, sigma_intensity: float) -> float:
    """Normalised loss of ``crf_loss`` (no mask, batch 1) with the exact filter."""
    prob = torch.softmax(logits.double(), 1)
    ws = exact_bilateral(prob, image, sigma_xy, sigma_intensity)
    return float((prob * (1 - ws)).sum(1).mean())


def synthetic(size: int, ndim: int = 2, channels: int = 1, batch: int = 1, seed: int = 0):
    """Z-scored-like guide (disc + step + ramp + noise) and smooth two-class logits."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.linspace(-1, 1, size)] * ndim, indexing="ij")
    r2 = sum(a**2 for a in axes)
    base = (r2 < 0.4).float() + 0.5 * (axes[-1] > 0.3).float() + 0.3 * axes[0]
    image = base + 0.1 * torch.randn((batch, channels) + (size,) * ndim, generator=g)
    if channels > 1:  # colour that varies along other directions than the grey level
        image[:, 1] += 0.5 * (axes[0] > 0).float()
        image[:, 2] -= 0.4 * (r2 < 0.1).float()
    image = (image - image.mean()) / image.std()
    pool = F.avg_pool2d if ndim == 2 else F.avg_pool3d
    logits = pool(torch.randn((batch, 2) + (size,) * ndim, generator=g) * 8, 9, 1, 4)
    return image, logits


def drive_crop(size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A (1, 3, size, size) crop of DRIVE training image 21 (0-255) and logits from its vessel mask, if present."""
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "DRIVE" / "training"
    image_path, label_path = root / "images" / "21_training.tif", root / "1st_manual" / "21_manual1.gif"
    if not image_path.exists() or not label_path.exists():
        return None
    from PIL import Image

    top, left = 250, 250
    crop = (slice(top, top + size), slice(left, left + size))
    image = torch.from_numpy(np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32)[crop])
    vessel = torch.from_numpy(np.asarray(Image.open(label_path), dtype=np.float32)[crop] > 0).float()
    sign = 2 * vessel - 1
    logits = F.avg_pool2d(torch.stack([-sign, sign])[None] * 3, 3, 1, 1)  # a soft, slightly blurred mask
    return image.permute(2, 0, 1)[None].contiguous(), logits


def time_fwd_bwd(logits: torch.Tensor, image: torch.Tensor, repeats: int, warmup: int, **kw) -> tuple[float, float]:
    """(median, min) milliseconds of one forward + backward."""
    times = []
    for r in range(warmup + repeats):
        x = logits.clone().requires_grad_(True)
        start = time.perf_counter()
        crf_loss(x, image, **kw).backward()
        if r >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, min(times) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per case")
    parser.add_argument("--size", type=int, default=96, help="side of the image for the accuracy check")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.size < 8:
        parser.error(f"need --repeats >= 1, --warmup >= 0, --size >= 8; got {args.repeats}, {args.warmup}, "
                     f"{args.size}")
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}, "
          f"repeats {args.repeats}, warm-up {args.warmup}")

    print(f"{'speed case':44s} {'median ms':>10s} {'min ms':>8s}")
    cases = {
        "2d (1, 2, 256, 256) grey": (synthetic(256), {}),
        "2d (8, 2, 256, 256) grey": (synthetic(256, batch=8), {}),
        "2d (1, 2, 256, 256) grey sigma_xy=80": (synthetic(256), {"sigma_xy": 80.0}),
        "2d (1, 2, 256, 256) RGB full grid": (synthetic(256, channels=3), {"sigma_xy": 10.0, "sigma_intensity": 0.3}),
        "2d (1, 2, 256, 256) RGB intensity_dims=1": (synthetic(256, channels=3),
                                                      {"sigma_xy": 10.0, "sigma_intensity": 0.3, "intensity_dims": 1}),
        "3d (1, 2, 64, 64, 64) grey": (synthetic(64, ndim=3), {}),
    }
    medians = {}
    for name, ((image, logits), kw) in cases.items():
        med, best = time_fwd_bwd(logits, image, args.repeats, args.warmup, **kw)
        medians[name] = med
        print(f"{name:44s} {med:10.2f} {best:8.2f}")

    print(f"\naccuracy vs the exact filter, {args.size} x {args.size}, normalised responses of a soft segmentation")
    print(f"{'accuracy case':52s} {'mean abs':>9s} {'max abs':>8s} {'loss rel':>9s}")
    acc_cases = {
        "grey, sigma_xy 5, sigma_int 0.15": (synthetic(args.size, seed=1), 5.0, 0.15, {}),
        "grey, sigma_xy 5, sigma_int 0.15, 1 cell/sigma": (synthetic(args.size, seed=1), 5.0, 0.15,
                                                           {"cells_per_sigma": 1.0}),
        "grey, sigma_xy 5, sigma_int 0.15, 2 cells/sigma": (synthetic(args.size, seed=1), 5.0, 0.15,
                                                            {"cells_per_sigma": 2.0}),
        "grey, sigma_xy 3, sigma_int 0.1": (synthetic(args.size, seed=1), 3.0, 0.1, {}),
        "grey, sigma_xy 20, sigma_int 0.3": (synthetic(args.size, seed=1), 20.0, 0.3, {}),
        "RGB full grid, sigma_xy 10, sigma_int 0.3": (synthetic(args.size, channels=3, seed=1), 10.0, 0.3, {}),
        "RGB intensity_dims=1": (synthetic(args.size, channels=3, seed=1), 10.0, 0.3, {"intensity_dims": 1}),
        "RGB intensity_dims=2": (synthetic(args.size, channels=3, seed=1), 10.0, 0.3, {"intensity_dims": 2}),
    }
    drive = drive_crop(args.size)
    if drive is not None:  # real colour: a DRIVE fundus crop in 0-255 with the paper's sigma_rgb
        for name, kw in (("full grid", {}), ("intensity_dims=1", {"intensity_dims": 1}),
                         ("intensity_dims=2", {"intensity_dims": 2})):
            acc_cases[f"DRIVE RGB 0-255, sigma_xy 10, 15, {name}"] = (drive, 10.0, 15.0, kw)
    errors = {}
    for name, ((image, logits), sxy, sint, kw) in acc_cases.items():
        prob = torch.softmax(logits, 1)
        ref = exact_bilateral(prob, image, sxy, sint)
        approx = bilateral_filter(prob, image, sxy, sint, **kw).double()
        err = (approx - ref).abs()
        loss = float(crf_loss(logits, image, sigma_xy=sxy, sigma_intensity=sint, **kw))
        ref_loss = exact_crf_loss(logits, image, sxy, sint)
        errors[name] = float(err.mean())
        print(f"{name:52s} {err.mean():9.5f} {err.max():8.4f} {abs(loss - ref_loss) / ref_loss:9.4f}")

    ms = medians["2d (1, 2, 256, 256) grey"]
    err = errors["grey, sigma_xy 5, sigma_int 0.15"]
    assert math.isfinite(ms) and math.isfinite(err)
    print(f"RESULT crf_ms_256={ms:.2f} crf_mean_abs_err={err:.5f}")


if __name__ == "__main__":
    main()
