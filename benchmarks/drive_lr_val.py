"""Pick AdamW's learning rate on held-out DRIVE *training* images, never on the test images.

DRIVE's 20 training images are split into ``--k`` folds (``ids[f::k]`` of the sorted case ids; 4 images each for
k = 5). For each fold in ``--folds`` and each learning rate in ``--lrs``, the network is trained on the other
training images with the recipe of ``drive_supervised.py``'s train part (128x128 patches, batch 8, Dice + CE with
deep supervision, AdamW, poly LR, bf16 autocast, a wall-clock budget of ``--minutes``), and scored by its Dice on
the held-out fold inside the field of view, with flip TTA, as the test images are scored there. The test split is
never read.

Runs are cached in ``<workdir>/<network>_lr<lr>_<budget>_fold<f>/result.json`` (``_common.run_once``), so a killed sweep
resumes where it stopped; ``--fresh`` starts over.

Usage:
  python benchmarks/drive_lr_val.py --folds 0,1,2 --lrs 0.003,0.005,0.008 --minutes 5 --workdir W   # ~50 min
  python benchmarks/drive_lr_val.py --networks monai_unet --minutes 10 ...                       # MONAI's UNet
  python benchmarks/drive_lr_val.py --folds 0,1 --lrs 0.003,0.005 --steps 6000 --workdir W  # machine-independent
Ends with: RESULT best_lr=<lr with the highest mean held-out Dice> val_dice_lr<lr>=<mean> ... (first network)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import case_ids, mean, mean_std, run_once, subset_manifest  # noqa: E402
from drive_supervised import DRIVE_BASE, MANIFEST, monai_unet  # noqa: E402


def fold_manifest(k: int, fold: int, workdir: Path) -> Path:
    """DRIVE's training images only: fold ``fold`` of ``k`` becomes the "test" split, the rest "train"."""
    ids = sorted(case_ids(MANIFEST, "train"))
    held = set(ids[fold::k])
    return subset_manifest(MANIFEST, workdir / f"drive_train_fold{fold}of{k}.yaml",
                           {i: "test" if i in held else "train" for i in ids})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lrs", default="0.003,0.005,0.008", help="comma-separated AdamW learning rates")
    ap.add_argument("--k", type=int, default=5, help="folds the 20 training images are split into")
    ap.add_argument("--folds", default="0,1,2", help="which folds to hold out, one sweep each")
    ap.add_argument("--minutes", type=float, default=5.0, help="wall-clock training budget per run")
    ap.add_argument("--steps", type=int, default=None,
                    help="a step count instead of --minutes: the same schedule on any machine, whatever its speed "
                         "or load (drive_supervised.py's 5-minute budget gave ~6,000 steps on the 2-core machine "
                         "of BENCHMARKS.md)")
    ap.add_argument("--networks", default="unet", help="unet (everylabel's default) and/or monai_unet")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every run (repeatable)")
    ap.add_argument("--workdir", type=Path, default=Path("bench_drive_lr_val"))
    ap.add_argument("--fresh", action="store_true", help="ignore cached runs")
    args = ap.parse_args(argv)

    from everylabel.networks import NETWORKS

    NETWORKS.setdefault("monai_unet", monai_unet)
    lrs = [float(x) for x in args.lrs.split(",") if x]
    folds = [int(x) for x in args.folds.split(",") if x]
    networks = [x for x in args.networks.split(",") if x]
    if any(not 0 <= f < args.k for f in folds):
        ap.error(f"--folds must be in 0..{args.k - 1}, got {args.folds}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    manifests = {f: fold_manifest(args.k, f, args.workdir) for f in folds}

    budget = f"train.steps={args.steps}" if args.steps else f"train.minutes={args.minutes}"
    tag = f"{args.steps}steps" if args.steps else f"{args.minutes:g}min"
    results: dict[tuple[str, float], list[dict]] = {}
    for fold in folds:  # fold-major: a partial sweep still compares every LR on the same folds
        for network in networks:
            for lr in lrs:
                overrides = [f"network.name={network}", *DRIVE_BASE, "data.val_fraction=0", f"train.seed={fold}",
                             "train.log_every=100", "train.checkpoint_every=100000", f"optim.lr={lr}",
                             budget, *args.overrides]
                r = run_once(f"{network}_lr{lr:g}_{tag}_fold{fold}", manifests[fold], overrides, args.workdir,
                             fresh=args.fresh)
                print(f"{network} lr={lr:g} fold {fold}: held-out Dice {r['metrics']['dice']:.4f} "
                      f"({r['steps']} steps, {r['train_min']:.1f} min)", flush=True)
                results.setdefault((network, lr), []).append(r)

    print(f"\nDRIVE, held-out training images ({args.k} folds, folds {args.folds}), "
          + (f"{args.steps} steps" if args.steps else f"{args.minutes:g}-minute budget") + "; "
          "Dice inside the FOV, flip TTA\n")
    print("| network | lr | " + " | ".join(f"fold {f}" for f in folds) + " | mean +- std | steps (mean) |")
    print("|---|---:|" + "---:|" * len(folds) + "---:|---:|")
    for (network, lr), rs in results.items():
        dice = [r["metrics"]["dice"] for r in rs]
        print(f"| {network} | {lr:g} | " + " | ".join(f"{d:.4f}" for d in dice)
              + f" | {mean_std(dice, digits=4)} | {mean([r['steps'] for r in rs]):.0f} |")
    first = networks[0]
    means = {lr: mean([r["metrics"]["dice"] for r in results[(first, lr)]]) for lr in lrs}
    best = max(means, key=means.get)
    print("RESULT " + f"network={first} budget={tag} best_lr={best:g} "
          + " ".join(f"val_dice_lr{lr:g}={d:.4f}" for lr, d in means.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
