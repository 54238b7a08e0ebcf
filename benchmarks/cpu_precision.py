"""Training step in bf16 autocast vs fp32 on the CPU, with oneDNN held to each instruction set this CPU has.

bf16 autocast pays off on a CPU only when it computes in bf16 natively (x86: AVX512-BF16 or AMX). On older CPUs
oneDNN emulates bf16 (AVX512 without BF16) or has no bf16 convolution kernel worth the name (AVX2, most laptops and
desktops, AMD before Zen 4), and a bf16 step can be several times slower than fp32. This script shows it on one
machine: each row is a subprocess with ``ONEDNN_MAX_CPU_ISA`` (oneDNN's convolutions, matmuls, norms) and
``ATEN_CPU_CAPABILITY`` (torch's own kernels) capped, timing one training step (forward, Dice + CE, backward,
fused AdamW) of everylabel's default U-Net at its training layout (channels_last) in fp32 and in bf16 autocast,
interleaved, median of ``--repeats``. It also prints what ``train.precision: auto`` picks in that process (it
reads the cap as well as the CPU's flags).

Caveat: the caps change which kernels run, not the silicon; a real AVX2 CPU has other clocks, caches and cores.

Usage:
  python benchmarks/cpu_precision.py                # ~4 min on 2 cores (3D at AVX2 left out: minutes per bf16 step)
  python benchmarks/cpu_precision.py --all          # with 3D at AVX2
  python benchmarks/cpu_precision.py --dims 2 --repeats 5
Ends with: RESULT bf16_over_fp32_<isa>_<dims>d=<bf16 step time / fp32 step time> ... (above 1: bf16 is slower)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# oneDNN ISA cap -> ATen capability cap; from the newest down. A cap above what the CPU has is the CPU's own level.
ISAS = {"default": None, "AVX512_CORE": "avx512", "AVX2": "avx2"}
SLOW = {("AVX2", 3)}  # a bf16 step takes minutes here: run with --all


def child(dims: int, repeats: int) -> dict:
    import torch

    from everylabel.engine.trainer import autocast_dtype, build_optimizer
    from everylabel.experiments.config import load_config
    from everylabel.losses import dice_ce_loss
    from everylabel.networks import UNet

    shape = (8, 3, 128, 128) if dims == 2 else (2, 1, 64, 64, 64)
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (shape[0], 1) + shape[2:])
    cfg = load_config(None, [])
    runners = {}
    for name, amp in (("fp32", False), ("bf16", True)):
        torch.manual_seed(0)
        net = UNet(dims, shape[1], 2).to(memory_format=fmt)
        runners[name] = (net, build_optimizer(cfg, net.parameters()), amp)

    def step(net, opt, amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            outs = net(x)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            loss = dice_ce_loss(outs[0], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = {name: [] for name in runners}
    for i in range(2 + repeats):
        for name, (net, opt, amp) in runners.items():
            t = time.perf_counter()
            step(net, opt, amp)
            if i >= 2:
                times[name].append(time.perf_counter() - t)
    auto = autocast_dtype("auto", torch.device("cpu"))
    return {"fp32_ms": 1000 * statistics.median(times["fp32"]), "bf16_ms": 1000 * statistics.median(times["bf16"]),
            "auto": "bf16" if auto is not None else "fp32",
            "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "capability": torch.backends.cpu.get_cpu_capability()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="2,3")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--isas", default=",".join(ISAS), help=f"oneDNN ISA caps to run, of {', '.join(ISAS)}")
    ap.add_argument("--all", action="store_true", help="also the slow rows (3D at AVX2)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.repeats)))
        return 0

    rows = []
    for isa in [s for s in args.isas.split(",") if s]:
        if isa not in ISAS:
            ap.error(f"unknown ISA cap {isa!r}; choose from {', '.join(ISAS)}")
        env = dict(os.environ)
        if ISAS[isa] is not None:
            env.update(ONEDNN_MAX_CPU_ISA=isa, ATEN_CPU_CAPABILITY=ISAS[isa])
        for dims in [int(d) for d in args.dims.split(",") if d]:
            if (isa, dims) in SLOW and not args.all:
                print(f"{isa} {dims}D: left out (minutes per bf16 step; --all runs it)", flush=True)
                continue
            out = subprocess.run([sys.executable, __file__, "--child", str(dims), "--repeats", str(args.repeats)],
                                 env=env, check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"isa": isa, "dims": dims, **r})
            print(f"{isa} {dims}D: fp32 {r['fp32_ms']:.0f} ms, bf16 {r['bf16_ms']:.0f} ms", flush=True)

    print("\n## Training step of the default U-Net, fp32 vs bf16 autocast, oneDNN capped (median of "
          f"{args.repeats} interleaved repeats)\n")
    print("| oneDNN cap | ATen capability | oneDNN bf16 | dims | fp32 | bf16 | bf16 / fp32 | `auto` picks |")
    print("|---|---|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['isa']} | {r['capability']} | {'yes' if r['mkldnn_bf16'] else 'no'} | {r['dims']}D | "
              f"{r['fp32_ms']:.0f} ms | {r['bf16_ms']:.0f} ms | {r['bf16_ms'] / r['fp32_ms']:.2f} | {r['auto']} |")
    print("RESULT " + " ".join(f"bf16_over_fp32_{r['isa'].lower()}_{r['dims']}d={r['bf16_ms'] / r['fp32_ms']:.2f}"
                               for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
