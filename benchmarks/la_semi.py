"""Semi-supervised methods on LA_heart_h5 (issue 5): 2 or 4 of 16 training volumes labelled, the rest unlabelled.

Methods (same network, steps and seeds; see benchmarks/sweeps/la_semi.yaml and la_base.yaml): supervised-only on
the labelled volumes, mean teacher (Tarvainen & Valpola 2017), self-training with confident pseudo-labels
(FixMatch-style, tau 0.9, lambda_u 2), mean-taught deep supervision (Reiß et al. 2021). Half of each batch comes
from the unlabelled volumes for the semi-supervised methods. 3D Dice on the 4 test volumes, mean ± std over 3 seeds
(each seed draws its own labelled volumes, the same ones for every method).

Also DRIVE with 2 of the 20 training images labelled (``--drive``, benchmarks/sweeps/drive_semi.yaml): Dice on the
20 test images inside the field of view.

Usage:
  python benchmarks/la_semi.py [--out DIR] [--jobs 2] [--no-run] [--report] [--drive]
Ends with: RESULT semi_gain_4labelled=<Dice points of the best semi-supervised method over supervised-only, 4 masks>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sweeps import LA_DIR, add_run_options, failed, fmt, mean, run_sweep, scores  # noqa: E402

METHODS = ("supervised", "mean_teacher", "self_training", "mean_taught")
BUDGETS = ("2masks_unlabelled", "4masks_unlabelled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=LA_DIR, help="sweep directory (shared by the LA sweeps)")
    ap.add_argument("--report", action="store_true", help="also write the sweep's HTML/Markdown report")
    ap.add_argument("--drive", action="store_true", help="also run DRIVE with 2 of 20 training images labelled")
    add_run_options(ap)
    args = ap.parse_args()
    sweep_dir = run_sweep("la_semi", args.out, args.jobs, not args.no_run)
    s = scores(sweep_dir)
    print("\nLA_heart_h5, 16 training volumes (2 or 4 labelled), 4 test volumes; 3D Dice (%) mean ± std over seeds\n")
    print("| method | 2 labelled | 4 labelled |\n|---|---:|---:|")
    for m in METHODS:
        print(f"| {m} | " + " | ".join(fmt(s.get((m, b), [])) for b in BUDGETS) + " |")
    for line in failed(sweep_dir):
        print("FAILED", line)
    if args.report:
        from everylabel.experiments.report import write_report

        paths = write_report(sweep_dir)
        print(f"report: {paths['html']}")
    if args.drive:
        drive_dir = run_sweep("drive_semi", args.out.parent / "drive_semi", args.jobs, not args.no_run)
        d, dc = scores(drive_dir), scores(drive_dir, "cldice")
        print("\nDRIVE, 2 of 20 training images labelled, 18 unlabelled; Dice and clDice (%) on the 20 test images "
              "in the FOV\n")
        print("| method | Dice (%) | clDice (%) |\n|---|---:|---:|")
        for m, p in [(m, "2masks_unlabelled") for m in METHODS] + [("supervised", "allmasks")]:
            print(f"| {m}, {p} | {fmt(d.get((m, p), []))} | {fmt(dc.get((m, p), []))} |")
    sup = mean(s.get(("supervised", BUDGETS[1]), []))
    best = max(METHODS[1:], key=lambda m: mean(s.get((m, BUDGETS[1]), [])) if s.get((m, BUDGETS[1])) else -1)
    gain2 = max(mean(s.get((m, BUDGETS[0]), [])) for m in METHODS[1:]) - mean(s.get(("supervised", BUDGETS[0]), []))
    print(f"\nbest semi-supervised method with 4 labelled: {best}")
    print(f"RESULT semi_gain_4labelled={(mean(s.get((best, BUDGETS[1]), [])) - sup) * 100:.2f} "
          f"semi_gain_2labelled={gain2 * 100:.2f} best_method={best}")


if __name__ == "__main__":
    main()
