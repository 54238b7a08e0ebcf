"""Run a checked-in sweep file with ``everylabel sweep`` and read its results back (the LA benchmarks use it).

The sweep directory defaults to ``$EVERYLABEL_BENCH_DIR/<sweep name>`` (default ``/tmp/everylabel_bench``, outside
the repository); a re-run skips
finished runs, so an interrupted benchmark continues where it stopped. The LA sweeps share one directory
(``$EVERYLABEL_BENCH_DIR/la``) so that runs common to them (same config, protocol, seed) are trained once.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

SWEEPS = Path(__file__).resolve().parent / "sweeps"
BENCH_DIR = Path(os.environ.get("EVERYLABEL_BENCH_DIR", "/tmp/everylabel_bench"))
LA_DIR = BENCH_DIR / "la"


def run_sweep(name: str, out: Path | None = None, jobs: int = 1, run: bool = True) -> Path:
    """``everylabel sweep benchmarks/sweeps/<name>.yaml --out OUT`` (failures are recorded, not raised).

    With ``run=False`` nothing trains: the sweep's run list is written (so the tables read this sweep's finished
    runs) and the tables show what has finished so far.
    """
    out = out or BENCH_DIR / name
    if not run:
        from everylabel.experiments import sweep as sw

        spec = sw.load_sweep(SWEEPS / f"{name}.yaml")
        sw.prepare(spec, sw.expand(spec), out)
        return out
    cmd = [sys.executable, "-m", "everylabel", "sweep", str(SWEEPS / f"{name}.yaml"), "--out", str(out),
           "--jobs", str(jobs)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=False)
    return out


def add_run_options(ap) -> None:
    """``--jobs`` and ``--no-run`` of the sweep benchmarks."""
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at the same time (2 on 2 cores: one thread each, ~1.3x the throughput of one run)")
    ap.add_argument("--no-run", action="store_true", help="train nothing; print the tables of the finished runs")


def scores(sweep_dir: Path, metric: str = "dice") -> dict[tuple[str, str], list[float]]:
    """(method, protocol) -> per-seed run scores (mean over the test cases' foreground classes) of the finished runs
    of the sweep last started in ``sweep_dir``."""
    from everylabel.experiments.report import sweep_rows
    from everylabel.experiments.results import run_score

    out: dict[tuple[str, str], list[float]] = {}
    for row in (r for r in sweep_rows(sweep_dir) if r["status"] == "ok"):
        out.setdefault((row["method"], row["protocol"]), []).append(run_score(row, metric))
    return out


def failed(sweep_dir: Path) -> list[str]:
    from everylabel.experiments.report import sweep_rows

    return [f"{r['name']}: {str(r.get('error'))[:200]}" for r in sweep_rows(sweep_dir) if r["status"] != "ok"]


def fmt(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * scale:.2f} ± {sd * scale:.2f} (n={len(values)})"


def mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")
