"""Shared helpers of the accuracy benchmarks: subset manifests, one cached train -> predict -> evaluate run,
mean +- std tables.

Every run writes ``<workdir>/<name>/result.json`` when it finishes; a re-run of a benchmark with the same
``--workdir`` skips finished runs (so a long benchmark survives a kill), and ``--fresh`` starts over.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "examples" / "manifests"


def subset_manifest(manifest: Path, out: Path, splits: dict[str, str], drop_others: bool = True) -> Path:
    """Write a copy of ``manifest`` whose cases get the splits in ``splits`` (case id -> split).

    Cases not in ``splits`` are dropped (``drop_others``) or keep their split. ``root`` becomes absolute so the
    copy can live anywhere.
    """
    data = yaml.safe_load(Path(manifest).read_text())
    root = Path(data.get("root", "."))
    if not root.is_absolute():
        data["root"] = str((Path(manifest).parent / root).resolve())
    cases = []
    for case in data["cases"]:
        if case["id"] in splits:
            case = dict(case, split=splits[case["id"]])
        elif drop_others:
            continue
        cases.append(case)
    data["cases"] = cases
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def case_ids(manifest: Path, split: str) -> list[str]:
    data = yaml.safe_load(Path(manifest).read_text())
    return [c["id"] for c in data["cases"] if c.get("split", "train") == split]


def run_once(name: str, data: Path, overrides: list[str], workdir: Path, *, metrics=("dice",),
             eval_ref: Path | None = None, tta: bool = True, fresh: bool = False) -> dict:
    """Train ``data`` with ``overrides``, predict its test split, evaluate; cached in ``workdir/name/result.json``.

    Returns:
        ``{"name", "overrides", "steps", "train_min", "metrics": {metric: foreground mean}, "cases": [...]}``.
    """
    from everylabel.engine.evaluation import evaluate
    from everylabel.engine.predictor import predict
    from everylabel.engine.trainer import train
    from everylabel.experiments.config import load_config

    run = workdir / name
    done = run / "result.json"
    if done.is_file() and not fresh:
        return json.loads(done.read_text())
    if run.exists():
        import shutil

        shutil.rmtree(run)
    t0 = time.perf_counter()
    m = train(data, run / "train", load_config(None, overrides), progress=False)
    train_s = time.perf_counter() - t0
    predict(run / "train", data, run / "pred", progress=False, split="test", tta=tta)
    summary = evaluate(run / "pred", eval_ref or data, run / "eval", split="test", metrics=tuple(metrics))
    result = {
        "name": name, "overrides": overrides, "steps": m["steps"], "train_min": train_s / 60,
        "metrics": {k: summary["metrics"][k]["foreground_mean"] for k in metrics},
        "cases": [{k: r.get(k) for k in ("case", "class", *metrics)} for r in summary["records"]],
    }
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float))
    os.replace(tmp, done)
    return result


def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    vals = [v * scale for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.{digits}f} ± {sd:.{digits}f}"


def mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.mean(vals) if vals else float("nan")
