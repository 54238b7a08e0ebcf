"""Cheap labels on LA_heart_h5 (issue 4): full masks vs tight 2D boxes vs 3D boxes vs points vs scribbles vs tags,
and 2 masks + boxes vs 2 masks. See benchmarks/sweeps/la_weak.yaml for the rows and la_base.yaml for the setup
(2.5D slice training, same network, steps and seeds for every row; 3D Dice on the 4 test volumes, 3 seeds).

The DRIVE part of the issue (scribbles: partial CE alone vs partial CE + CRF) is ``--drive``: the 20 DRIVE training
images get simulated scribbles; partial CE vs partial CE + CRF, 3 seeds, Dice on the 20 test images in the FOV.

Usage:
  python benchmarks/la_weak.py [--out DIR] [--jobs 2] [--no-run] [--drive] [--report] [--tune]
Ends with: RESULT boxes2d_over_full=<Dice ratio> scribbles_crf_over_full=<ratio> crf_gain=<Dice points, DRIVE>
mixed_gain=<Dice points of 2 masks + boxes over 2 masks> scribbles_crf_untuned_over_full=<ratio>
scribbles_crf_over_full is the CRF setting chosen on 4 held-out training volumes (la_scribbles_tune.yaml:
sigma_xy 15 voxels); scribbles_crf_untuned_over_full the first setting (sigma_xy 5), kept for the record.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sweeps import LA_DIR, add_run_options, failed, fmt, mean, run_sweep, scores  # noqa: E402

ROWS = [("full masks", "supervised", "allmasks"), ("tight 2D boxes (every slice)", "weak_crf", "boxes2d"),
        ("3D boxes (per-slice extent)", "weak_crf", "boxes3d"), ("points + CRF", "weak_crf", "points"),
        ("scribbles + CRF", "weak_crf", "scribbles"),
        ("scribbles + CRF + entropy (0.1)", "weak_crf_entropy", "scribbles"),
        ("scribbles + CRF, sigma_xy 15 (tuned on held-out training volumes)", "weak_crf_xy15", "scribbles"),
        ("tags only", "weak_crf", "tags"),
        ("2 masks + tight 2D boxes", "weak_crf", "2masks_boxes2d"),
        ("2 masks only", "supervised", "2masks_unlabelled")]
DRIVE_ROWS = [("scribbles, partial CE", "weak", "scribbles"), ("scribbles, partial CE + CRF", "weak_crf", "scribbles")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=LA_DIR, help="sweep directory (shared by the LA sweeps)")
    ap.add_argument("--drive", action="store_true", help="also run the DRIVE scribbles CE vs CE + CRF sweep")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--tune", action="store_true",
                    help="first run/print la_scribbles_tune.yaml (CRF settings scored on 4 held-out training volumes)")
    add_run_options(ap)
    args = ap.parse_args()
    if args.tune:
        tune = scores(run_sweep("la_scribbles_tune", args.out.parent / "la_tune", args.jobs, not args.no_run))
        print("\nTuning (la_scribbles_tune.yaml): scribbles, 12 training volumes, Dice (%) on 4 held-out training "
              "volumes\n\n| CRF setting | Dice (%) |\n|---|---:|")
        for (method, _), v in sorted(tune.items(), key=lambda kv: -mean(kv[1])):
            print(f"| {method} | {fmt(v)} |")
    sweep_dir = run_sweep("la_weak", args.out, args.jobs, not args.no_run)
    s = scores(sweep_dir)
    full = mean(s.get(("supervised", "allmasks"), []))
    print("\nLA_heart_h5, 16 training volumes, 4 test volumes; 3D Dice (%) mean ± std over seeds\n")
    print("| annotation | method | Dice (%) | / full masks |\n|---|---|---:|---:|")
    for label, method, proto in ROWS:
        v = s.get((method, proto), [])
        print(f"| {label} | {method} | {fmt(v)} | {mean(v) / full:.3f} |" if v else f"| {label} | {method} | n/a | |")
    for line in failed(sweep_dir):
        print("FAILED", line)
    crf_gain = float("nan")
    if args.drive:
        drive_dir = run_sweep("drive_scribbles", args.out.parent / "drive_scribbles", args.jobs, not args.no_run)
        d = scores(drive_dir)
        print("\nDRIVE, 20 training images with simulated scribbles, Dice (%) on the 20 test images in the FOV\n")
        print("| annotation | Dice (%) |\n|---|---:|")
        for label, method, proto in DRIVE_ROWS:
            print(f"| {label} | {fmt(d.get((method, proto), []))} |")
        crf_gain = (mean(d.get(("weak_crf", "scribbles"), [])) - mean(d.get(("weak", "scribbles"), []))) * 100
    if args.report:
        from everylabel.experiments.report import write_report

        print(f"report: {write_report(sweep_dir)['html']}")
    mixed = (mean(s.get(("weak_crf", "2masks_boxes2d"), [])) - mean(s.get(("supervised", "2masks_unlabelled"), [])))
    print(f"RESULT boxes2d_over_full={mean(s.get(('weak_crf', 'boxes2d'), [])) / full:.3f} "
          f"scribbles_crf_over_full={mean(s.get(('weak_crf_xy15', 'scribbles'), [])) / full:.3f} "
          f"crf_gain={crf_gain:.2f} mixed_gain={mixed * 100:.2f} "
          f"scribbles_crf_untuned_over_full={mean(s.get(('weak_crf', 'scribbles'), [])) / full:.3f}")


if __name__ == "__main__":
    main()
