"""What does each annotation buy on LA_heart_h5 (issue 7): methods x label budgets x 3 seeds, priced.

See benchmarks/sweeps/la_budgets.yaml: 16 training volumes, 1 / 2 / 4 / 8 / all with full masks, the rest with
tight per-slice 2D boxes, scribbles or nothing; supervised, multi-label deep supervision, mean teacher, weak + CRF.
Annotation cost from everylabel.annotations.cost (defaults: 78 s per object outline per slice, 10 s per box,
10 s per scribble stroke). Prints the method x budget table (3D test Dice, mean ± std over seeds, with the cost as a
fraction of all masks) and writes the sweep's HTML/Markdown report.

"Best mix" = among the runs that are not all-masks, the (method, protocol) with the highest mean Dice whose cost is
at most ``--max-cost`` (default 0.15) of the all-masks cost; if none is that cheap, the highest Dice overall.

Usage:
  python benchmarks/la_budgets.py [--out DIR] [--jobs 2] [--no-run] [--max-cost 0.15]
Ends with: RESULT best_mix_over_full=<Dice ratio> best_mix_cost_fraction=<cost of that mix / cost of all masks>
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sweeps import LA_DIR, add_run_options, failed, fmt, mean, run_sweep  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=LA_DIR, help="sweep directory (shared by the LA sweeps)")
    ap.add_argument("--max-cost", type=float, default=0.15)
    add_run_options(ap)
    args = ap.parse_args()
    sweep_dir = run_sweep("la_budgets", args.out, args.jobs, not args.no_run)

    from everylabel.experiments.report import protocol_order, sweep_rows, write_report
    from everylabel.experiments.results import run_score

    rows = [r for r in sweep_rows(sweep_dir) if r["status"] == "ok"]
    dice: dict[tuple[str, str], list[float]] = {}
    cost: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        dice.setdefault((r["method"], r["protocol"]), []).append(run_score(r, "dice"))
        cost.setdefault((r["method"], r["protocol"]), []).append(r["cost_fraction"])
    protocols = protocol_order(rows)
    methods = sorted({m for m, _ in dice})
    print("\nLA_heart_h5, 16 training volumes, 4 test volumes: 3D Dice (%) mean ± std over seeds [cost / all masks]\n")
    print("| protocol | cost | " + " | ".join(methods) + " |\n|---|---:|" + "---:|" * len(methods))
    for p in protocols:
        c = [statistics.mean(v) for (m, q), v in cost.items() if q == p]
        print(f"| {p} | {statistics.mean(c):.3f} | " + " | ".join(fmt(dice.get((m, p), [])) for m in methods) + " |")
    for line in failed(sweep_dir):
        print("FAILED", line)
    print(f"report: {write_report(sweep_dir)['html']}")

    full = mean(dice.get(("supervised", "allmasks"), []))
    mixes = [(k, mean(v), mean(cost[k])) for k, v in dice.items() if k[1] != "allmasks"]
    cheap = [x for x in mixes if x[2] <= args.max_cost] or mixes
    (method, protocol), d, c = max(cheap, key=lambda x: x[1])
    print(f"\nbest mix at <= {args.max_cost:.0%} of the all-masks cost: {method} on {protocol}: Dice {d:.4f} vs "
          f"{full:.4f} with all masks, cost fraction {c:.3f}")
    print(f"RESULT best_mix_over_full={d / full:.3f} best_mix_cost_fraction={c:.3f}")


if __name__ == "__main__":
    main()
