"""clDice on real vessels and membranes (issue 6): soft-Dice vs L_c = (1 - a) softDice + a softclDice.

Shit, Paetzold et al., "clDice - a novel topology-preserving loss function for tubular structure segmentation",
CVPR 2021, Table 1 (DRIVE, FCN): soft-Dice 78.23 Dice / 78.02 clDice / beta0 error 2.187; alpha = 0.2: 78.75 /
80.22 / 1.892. As in the paper, the baseline is soft-Dice alone (``method.ce_weight=0``) and L_c replaces it; the
Dice term keeps everylabel's deep supervision, clDice acts on the full-resolution output (``--iterations`` soft
skeleton iterations, default 3 as MONAI's; the paper asks for at least the largest vessel radius: on the DRIVE
training masks 3 iterations recover 93.8 % of the scikit-image skeleton within 1 px, 5 recover 96.8 %, 10 no more).

Setup: everylabel's default 2D U-Net, 128 x 128 patches, batch 8, AdamW + poly LR, ``--steps`` steps, the same
seeds for every configuration; prediction with flip TTA.
  drive: train on the 20 training images, test on the 20 test images inside the field of view (1st observer).
  isbi:  ISBI 2012 EM membranes, 30 labelled slices, k-fold cross-validation (``--folds``, default 3).
Metrics (everylabel.metrics, hard masks): Dice, clDice (scikit-image skeletons), Betti-0 / Betti-1 errors
(8-connected foreground, 4-connected background in 2D) on the whole test image (inside the FOV for DRIVE). The paper
reports Betti errors on random patches, so its values are smaller than whole-image ones; compare the trend.

"Best alpha" = the alpha with the highest mean clDice among those losing at most 0.5 Dice points to the baseline
(if none qualifies: the highest clDice). ``--base dicece`` compares everylabel's default loss, Dice + CE, with
(1 - alpha)(Dice + CE) + alpha softclDice: clDice as a term added to the loss a user already trains with.

Usage:
  python benchmarks/drive_cldice.py                             # DRIVE, alphas 0 .1 .2 .3 .5, seeds 0 1 2
  python benchmarks/drive_cldice.py --dataset isbi --alphas 0,0.2,0.3 --seeds 0
  python benchmarks/drive_cldice.py --alphas 0,0.2 --iterations 5   # L_c with 5 soft skeleton iterations
  python benchmarks/drive_cldice.py --base dicece --alphas 0,0.2,0.3,0.5   # clDice on top of Dice + CE
  python benchmarks/drive_cldice.py --speed-only                # the skeleton timing vs MONAI alone
Runs are cached in --workdir (default $EVERYLABEL_BENCH_DIR/cldice_<dataset>, EVERYLABEL_BENCH_DIR defaulting to
/tmp/everylabel_bench); a re-run skips finished runs.
Ends with: RESULT cldice_gain=... dice_drop=... beta0_change=... skeleton_speed_vs_monai=...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MANIFESTS, case_ids, mean, mean_std, run_once, subset_manifest  # noqa: E402

METRICS = ("dice", "cldice", "betti0_error", "betti1_error")


BASELINES = {"softdice": "soft-Dice", "dicece": "Dice + CE"}


def configs(alphas: list[float], iterations: int = 3, base: str = "softdice") -> list[tuple[str, str, list[str]]]:
    """(table label, run-name tag, overrides) per alpha; alpha 0 is the baseline.

    ``base`` "softdice": the paper's set-up, soft-Dice alone vs L_c = (1 - a) softDice + a softclDice.
    ``base`` "dicece": everylabel's default supervised loss, Dice + CE, vs (1 - a) (Dice + CE) + a softclDice.
    """
    out = []
    for a in alphas:
        if base == "softdice":
            over, prefix, term = ["method.ce_weight=0", f"method.cldice_weight={a}"], "", "L_c"
        else:
            over, prefix, term = [f"method.cldice_weight={a}"], "dce_", "Dice + CE + clDice"
        if a == 0:
            out.append((BASELINES[base], f"{prefix}a0", over))
        elif iterations == 3:
            out.append((f"{term}, alpha={a:g}", f"{prefix}a{a:g}", over))
        else:
            out.append((f"{term}, alpha={a:g}, {iterations} it.", f"{prefix}a{a:g}_it{iterations}",
                        over + [f"method.cldice_iterations={iterations}"]))
    return out


def splits(dataset: str, folds: int, workdir: Path) -> list[tuple[str, Path]]:
    """(name, manifest) per data split: DRIVE's fixed train/test, or the ISBI folds."""
    if dataset == "drive":
        return [("drive", MANIFESTS / "drive.yaml")]
    src = MANIFESTS / "isbi2012.yaml"
    ids = sorted(case_ids(src, "train"))
    out = []
    for k in range(folds):
        test = set(ids[k::folds])
        m = subset_manifest(src, workdir / f"isbi_fold{k}.yaml", {i: "test" if i in test else "train" for i in ids})
        out.append((f"fold{k}", m))
    return out


def skeleton_speed() -> tuple[float, str]:
    """Run benchmarks/cldice_speed.py; the speed-up of the soft skeleton over MONAI's (the lower of 2D and 3D)."""
    import subprocess

    out = subprocess.run([sys.executable, str(Path(__file__).with_name("cldice_speed.py"))], check=True,
                         capture_output=True, text=True).stdout
    result = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split()[1:])
    return min(float(v) for v in result.values()), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=("drive", "isbi"), default="drive")
    ap.add_argument("--alphas", default="0,0.1,0.2,0.3,0.5")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--iterations", type=int, default=3, help="soft skeleton iterations of L_c")
    ap.add_argument("--base", choices=tuple(BASELINES), default="softdice",
                    help="baseline loss: soft-Dice alone (the paper's) or Dice + CE (everylabel's default)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    import os

    bench = Path(os.environ.get("EVERYLABEL_BENCH_DIR", "/tmp/everylabel_bench"))
    workdir = args.workdir or bench / f"cldice_{args.dataset}"
    workdir.mkdir(parents=True, exist_ok=True)
    alphas = [float(a) for a in args.alphas.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    rows = {}
    if not args.speed_only:
        # network.stem_stride=1 and optim.lr=0.003: the nnU-Net layout and AdamW learning rate these tables were run
        # with (the defaults before 2026-11-24 and 2026-11-25).
        base = ["network.stem_stride=1", "optim.lr=0.003", "data.patch_size=[128, 128]", "data.batch_size=8",
                "data.val_fraction=0", f"train.steps={args.steps}", "train.log_every=100",
                "train.checkpoint_every=100000", "train.val_every=100000"]
        for label, tag, over in configs(alphas, args.iterations, args.base):
            per_run = []
            for split_name, manifest in splits(args.dataset, args.folds, workdir):
                for seed in seeds:
                    name = f"{split_name}_{tag}_seed{seed}"
                    r = run_once(name, manifest, base + over + [f"train.seed={seed}"], workdir, metrics=METRICS,
                                 fresh=args.fresh)
                    per_run.append(r)
                    print(f"  {label:18s} {split_name} seed {seed}: " +
                          " ".join(f"{k}={r['metrics'][k]:.4f}" for k in METRICS), flush=True)
            rows[label] = per_run

        print(f"\n{args.dataset.upper()}: {args.steps} steps, seeds {seeds}" +
              (f", {args.folds}-fold CV" if args.dataset == "isbi" else "") + " (mean ± std over runs)\n")
        print("| loss | Dice (%) | clDice (%) | Betti-0 error | Betti-1 error | runs |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, runs in rows.items():
            vals = {k: [r["metrics"][k] for r in runs] for k in METRICS}
            print(f"| {label} | {mean_std(vals['dice'], 100)} | {mean_std(vals['cldice'], 100)} | "
                  f"{mean_std(vals['betti0_error'])} | {mean_std(vals['betti1_error'])} | {len(runs)} |")

    speed = float("nan")
    if not args.no_speed:
        speed, table = skeleton_speed()
        print("\nsoft skeleton, forward + backward (benchmarks/cldice_speed.py):\n" + table)

    if rows:
        base_label = BASELINES[args.base]
        m = {label: {k: mean([r["metrics"][k] for r in runs]) for k in METRICS} for label, runs in rows.items()}
        b = m[base_label]
        cands = [lab for lab in m if lab != base_label]
        ok = [lab for lab in cands if (b["dice"] - m[lab]["dice"]) * 100 <= 0.5] or cands
        best = max(ok, key=lambda lab: m[lab]["cldice"])
        print(f"\nbest alpha: {best}")
        print(f"RESULT cldice_gain={(m[best]['cldice'] - b['cldice']) * 100:.2f} "
              f"dice_drop={(b['dice'] - m[best]['dice']) * 100:.2f} "
              f"beta0_change={m[best]['betti0_error'] - b['betti0_error']:.2f} skeleton_speed_vs_monai={speed:.2f}")
    else:
        print(f"RESULT skeleton_speed_vs_monai={speed:.2f}")


if __name__ == "__main__":
    main()
