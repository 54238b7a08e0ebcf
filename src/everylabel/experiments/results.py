"""The results store of a sweep: one JSON file per run in ``SWEEP_DIR/results/``, each written atomically.

One file per run means concurrent writers (``--jobs N`` on one machine, a SLURM job array on many machines writing
to one shared folder) never touch the same file, and ``os.replace`` of a temporary file in the same folder means a
reader sees either no file or a complete one, never a half-written one. Temporary files start with a dot and are
never read.

A row (the JSON object of one run) holds:

- identity: ``name`` (the run directory's name), ``run_hash`` (everything the sweep file sets for the run),
  ``config_hash`` (the training config's difference from the defaults), ``method``, ``protocol``,
  ``protocol_family``, ``seed``, ``fold``, ``folds``;
- the resolved ``config`` and the ``overrides`` that made it (base + method + seed), the ``protocol_spec``;
- the budget: ``n_masks`` (training cases that kept their full mask), ``n_train_cases``, ``kinds`` (cases per
  annotation kind), ``cost_seconds``, ``full_mask_seconds``, ``cost_fraction`` and ``cost`` (by kind, the prices);
- ``status``: ``"ok"`` or ``"failed"`` (then ``error`` and ``traceback``); ``wall_seconds``, ``started``,
  ``finished``, ``host``, ``code`` (package version and git commit);
- ``metrics`` (names) and ``cases``: the per-(case, class) records of
  :func:`everylabel.metrics.case_records` for the test cases, and ``summary`` (per metric the run's score, see
  :func:`run_score`); ``train`` (steps, seconds); ``paths`` (run, prediction and reference folders, relative to the
  sweep folder).

Undefined metric values (NaN) are written as ``null`` (strict JSON) and read back as NaN by :func:`cases_frame`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from everylabel._atomic import atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)

RESULTS_DIR = "results"
SCHEMA_VERSION = 1
RUN_KEYS = ("name", "status", "method", "protocol", "protocol_family", "seed", "fold", "folds", "n_masks",
            "n_train_cases", "cost_seconds", "full_mask_seconds", "cost_fraction", "config_hash", "run_hash",
            "wall_seconds", "error")
"""Scalar keys of a row, the columns of :func:`runs_frame` (besides one column per metric)."""


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def results_dir(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / RESULTS_DIR


def result_path(sweep_dir: str | Path, name: str) -> Path:
    """Where the row of run ``name`` lives."""
    return results_dir(sweep_dir) / f"{name}.json"


def write_result(sweep_dir: str | Path, row: dict) -> Path:
    """Write one run's row atomically (temporary file + ``os.replace``); NaN and infinities become ``null``."""
    if not row.get("name"):
        raise ValueError("a result row needs a 'name'")
    path = result_path(sweep_dir, row["name"])
    text = json.dumps(_json_safe({"schema": SCHEMA_VERSION, **row}), indent=1, allow_nan=False) + "\n"
    atomic_write_text(path, text)
    return path


def read_result(path: str | Path) -> dict:
    """One row; ValueError naming the file when it is not a result."""
    path = Path(path)
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable result file ({e})") from e
    if not isinstance(row, dict) or "name" not in row or "status" not in row:
        raise ValueError(f"{path}: not a result row (needs 'name' and 'status')")
    return row


def load_results(sweep_dir: str | Path, status: str | None = None) -> list[dict]:
    """Every row under ``SWEEP_DIR/results/`` (optionally only one status), sorted by run name.

    Raises:
        ValueError: the folder does not exist, or a file in it is not a result (each named).
    """
    folder = results_dir(sweep_dir)
    if not folder.is_dir():
        raise ValueError(f"{sweep_dir} has no {RESULTS_DIR}/ folder; is it a sweep directory?")
    rows, bad = [], []
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            rows.append(read_result(path))
        except ValueError as e:
            bad.append(str(e))
    if bad:
        raise ValueError("unreadable result files:\n  - " + "\n  - ".join(bad))
    return [r for r in rows if status is None or r["status"] == status]


def is_finished(sweep_dir: str | Path, name: str) -> bool:
    """Whether run ``name`` has a row with status ``"ok"``."""
    path = result_path(sweep_dir, name)
    if not path.is_file():
        return False
    try:
        return read_result(path)["status"] == "ok"
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------------- scores


def _number(value) -> float:
    return math.nan if value is None else float(value)


def case_scores(row: dict, metric: str = "dice") -> dict[str, float]:
    """Per test case: the mean of ``metric`` over its foreground classes (undefined values excluded; NaN when none
    is defined).

    Raises:
        ValueError: the run did not record ``metric``.
    """
    values: dict[str, list[float]] = {}
    for rec in row.get("cases") or []:
        if metric not in rec:
            raise ValueError(f"run {row.get('name')!r} has no metric {metric!r}; it has {row.get('metrics')}")
        if int(rec.get("class", 1)) == 0:
            continue
        values.setdefault(str(rec["case"]), []).append(_number(rec[metric]))
    out = {}
    for case, vals in values.items():
        arr = np.asarray(vals, dtype=np.float64)
        out[case] = float(arr[~np.isnan(arr)].mean()) if (~np.isnan(arr)).any() else math.nan
    return out


def run_score(row: dict, metric: str = "dice") -> float:
    """A run's score: the mean over test cases of :func:`case_scores` (cases with no defined value excluded)."""
    arr = np.asarray(list(case_scores(row, metric).values()), dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def metric_names(rows: list[dict]) -> list[str]:
    """Metrics recorded by the runs, in first-seen order."""
    names: list[str] = []
    for row in rows:
        names.extend(m for m in row.get("metrics") or [] if m not in names)
    return names


# ------------------------------------------------------------------------------------------------------- pandas


def runs_frame(rows_or_dir):
    """pandas DataFrame with one row per run: :data:`RUN_KEYS` and one column per metric (:func:`run_score`)."""
    import pandas as pd

    rows = load_results(rows_or_dir) if isinstance(rows_or_dir, (str, Path)) else rows_or_dir
    metrics = metric_names(rows)
    table = []
    for row in rows:
        entry = {k: row.get(k) for k in RUN_KEYS}
        for m in metrics:
            entry[m] = run_score(row, m) if row["status"] == "ok" and m in (row.get("metrics") or []) else math.nan
        table.append(entry)
    frame = pd.DataFrame(table, columns=[*RUN_KEYS, *metrics])
    for col in ("cost_seconds", "full_mask_seconds", "cost_fraction", "wall_seconds", *metrics):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def cases_frame(rows_or_dir):
    """pandas DataFrame with one row per (run, case, class) of the finished runs; undefined values are NaN."""
    import pandas as pd

    rows = load_results(rows_or_dir) if isinstance(rows_or_dir, (str, Path)) else rows_or_dir
    table = []
    metrics = metric_names(rows)
    for row in rows:
        if row["status"] != "ok":
            continue
        head = {k: row.get(k) for k in ("name", "method", "protocol", "protocol_family", "seed", "fold", "n_masks",
                                        "cost_seconds", "cost_fraction")}
        for rec in row.get("cases") or []:
            table.append({**head, **rec})
    frame = pd.DataFrame(table)
    for m in metrics:
        if m in frame:
            frame[m] = pd.to_numeric(frame[m], errors="coerce")
    return frame


__all__ = ["RESULTS_DIR", "RUN_KEYS", "atomic_write_bytes", "atomic_write_text", "case_scores", "cases_frame",
           "is_finished", "load_results", "metric_names", "read_result", "result_path", "results_dir", "run_score",
           "runs_frame", "write_result"]
