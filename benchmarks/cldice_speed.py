"""Soft-skeleton speed: everylabel's ``soft_skeleton`` vs MONAI's ``soft_skel``, forward + backward, CPU.

Both run 3 iterations on (8, 1, 256, 256) and (2, 1, 64, 64, 64) probability maps with 2 threads. After a warm-up,
the two are timed in alternating order ``--repeats`` times and the medians compared; values must be identical and
input gradients equal to float rounding, or the script exits with an error. The last line is machine-readable:
``RESULT skeleton_speed_vs_monai_2d=<x> skeleton_speed_vs_monai_3d=<x>`` (MONAI time / ours, > 1 means faster).

    python benchmarks/cldice_speed.py [--repeats 20] [--warmup 3] [--compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from everylabel.losses.cldice import soft_skeleton

SHAPES = {"2d": (8, 1, 256, 256), "3d": (2, 1, 64, 64, 64)}
ITERATIONS = 3


def _time_fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    x = x.clone().requires_grad_(True)
    start = time.perf_counter()
    fn(x).sum().backward()
    return time.perf_counter() - start


def _check_same(ours: Callable, ref: Callable, x: torch.Tensor) -> None:
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(a), ref(b)
    if not torch.equal(ya, yb):
        sys.exit(f"values differ from MONAI for shape {tuple(x.shape)}: max |diff| {(ya - yb).abs().max():.3g}")
    ya.sum().backward()
    yb.sum().backward()
    if not torch.allclose(a.grad, b.grad, rtol=0, atol=1e-4):
        diff = (a.grad - b.grad).abs().max()
        sys.exit(f"gradients differ from MONAI for shape {tuple(x.shape)}: max |diff| {diff:.3g}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per implementation and shape")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per implementation and shape")
    parser.add_argument("--compile", action="store_true", help="also time soft_skeleton(compile=True) (not in RESULT)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")

    import monai
    from monai.losses.cldice import soft_skel

    torch.set_num_threads(2)
    impls = {
        "monai": lambda x: soft_skel(x, ITERATIONS),
        "everylabel": lambda x: soft_skeleton(x, ITERATIONS),
    }
    if args.compile:
        impls["everylabel_compiled"] = lambda x: soft_skeleton(x, ITERATIONS, compile=True)
    print(f"torch {torch.__version__}, monai {monai.__version__}, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}, repeats {args.repeats}, warm-up {args.warmup}")

    speedups = {}
    print(f"{'case':4s} {'shape':18s} {'implementation':20s} {'median ms':>10s} {'min ms':>8s} {'vs monai':>9s}")
    for case, shape in SHAPES.items():
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        for name, fn in impls.items():
            if name != "monai":
                _check_same(fn, impls["monai"], x)
            for _ in range(args.warmup):
                _time_fwd_bwd(fn, x)
        times: dict[str, list[float]] = {name: [] for name in impls}
        names = list(impls)
        for r in range(args.repeats):
            for name in names if r % 2 == 0 else names[::-1]:  # alternate the order to share out drift
                times[name].append(_time_fwd_bwd(impls[name], x))
        medians = {name: statistics.median(t) for name, t in times.items()}
        for name in impls:
            ratio = medians["monai"] / medians[name]
            print(f"{case:4s} {shape!s:18s} {name:20s} {medians[name] * 1e3:10.1f} {min(times[name]) * 1e3:8.1f} "
                  f"{ratio:8.2f}x")
        speedups[case] = medians["monai"] / medians["everylabel"]
    print("values identical to MONAI: yes (2d, 3d); input gradients equal within 1e-4")
    print(f"RESULT skeleton_speed_vs_monai_2d={speedups['2d']:.2f} skeleton_speed_vs_monai_3d={speedups['3d']:.2f}")


if __name__ == "__main__":
    main()
