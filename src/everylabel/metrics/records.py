"""Per-case records, summaries with explicit undefined counts, and their CSV / JSON / Markdown files.

A record is one row per (case, class): ``case``, ``class``, ``class_name``, ``empty`` (which masks are empty:
``"none"``, ``"pred"``, ``"ref"`` or ``"both"``, the usual reason for an undefined value), ``pred_voxels``,
``ref_voxels`` and one key per metric. Undefined metric values are NaN in records; summaries exclude them from
means and standard deviations and count them in ``n_undefined``, so that nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from everylabel._atomic import atomic_write_text
from everylabel.metrics._utils import Array, as_numpy, binary_numpy
from everylabel.metrics.compute import DEFAULT_METRICS, compute_metrics, empty_status

__all__ = ["RECORD_KEYS", "case_records", "summarize", "summary_markdown", "write_case_csv", "write_summary_json"]

RECORD_KEYS = ("case", "class", "class_name", "empty", "pred_voxels", "ref_voxels")
"""Keys of a record that are not metrics."""


def case_records(
    pred_labelmap: Array,
    ref_labelmap: Array,
    case_id: str,
    class_names: Mapping[int, str],
    valid: Array | None = None,
    spacing: float | Sequence[float] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    nsd_tolerance: float = 1.0,
    convention: str = "default",
    connectivity: int | None = None,
) -> list[dict[str, Any]]:
    """Evaluates one case: one record per class in ``class_names``.

    Args:
        pred_labelmap: predicted label map ``(*S)`` of integer class indices (spatial axes only: pass
            ``pred[b, 0]`` for a batch ``(B, 1, *S)``).
        ref_labelmap: reference label map ``(*S)``.
        case_id: identifier written to the ``case`` column.
        class_names: class index -> name; a record is made for each entry (include 0 to evaluate background).
        valid: optional binary region ``(*S)``; voxels outside it are ignored (also in ``empty`` and the voxel
            counts).
        spacing: voxel spacing per axis for surface metrics.
        metrics: metric names, see ``compute_metrics``.
        nsd_tolerance: NSD tolerance in the units of ``spacing``.
        convention: surface convention, see ``compute_metrics``.
        connectivity: component connectivity for topology and lesion metrics, see ``compute_metrics``.

    Returns:
        A list of dicts with keys ``RECORD_KEYS`` followed by ``metrics``.
    """
    pred = as_numpy(pred_labelmap, "pred_labelmap")
    ref = as_numpy(ref_labelmap, "ref_labelmap")
    if pred.shape != ref.shape:
        raise ValueError(f"pred_labelmap and ref_labelmap must have the same shape, got {pred.shape} and {ref.shape}.")
    if not class_names:
        raise ValueError("class_names must name at least one class, got an empty mapping.")
    region = None if valid is None else binary_numpy(valid, "valid")
    if region is not None and region.shape != pred.shape:
        raise ValueError(f"valid must have the shape of the label maps {pred.shape}, got {region.shape}.")
    records = []
    for index, name in class_names.items():
        p, r = pred == index, ref == index
        p_in, r_in = (p, r) if region is None else (p & region, r & region)
        row: dict[str, Any] = {
            "case": str(case_id),
            "class": int(index),
            "class_name": str(name),
            "empty": empty_status(p_in, r_in),
            "pred_voxels": int(np.count_nonzero(p_in)),
            "ref_voxels": int(np.count_nonzero(r_in)),
        }
        row.update(
            compute_metrics(
                p,
                r,
                spacing=spacing,
                metrics=metrics,
                nsd_tolerance=nsd_tolerance,
                convention=convention,
                valid=valid,
                connectivity=connectivity,
            )
        )
        records.append(row)
    return records


def _metric_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for row in records:
        keys.extend(k for k in row if k not in RECORD_KEYS and k not in keys)
    return keys


def _stats(values: Iterable[float], fill: float | None = None) -> dict[str, float | int]:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    undefined = np.isnan(arr)
    used = arr[~undefined] if fill is None else np.where(undefined, fill, arr)
    return {
        "mean": float(used.mean()) if used.size else math.nan,
        "std": float(used.std()) if used.size else math.nan,
        "n_defined": int(arr.size - undefined.sum()),
        "n_undefined": int(undefined.sum()),
    }


def summarize(
    records: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] | None = None,
    undefined_value: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Summarises records: per metric the mean, std and undefined count overall and per class.

    Definitions (NaN values are excluded from every mean and std, unless ``undefined_value`` names the metric,
    and are always counted in ``n_undefined``):
        - ``mean``, ``std`` (population std): over all defined (case, class) values, background included if
          it was recorded.
        - ``per_class[name]``: ``mean``, ``std``, ``n_defined``, ``n_undefined`` over the cases of that class.
        - ``foreground_mean``: the mean of the per-class means of classes other than 0 (nnU-Net's
          ``foreground_mean``), NaN if no foreground class has a defined value.

    Args:
        records: rows from ``case_records`` (any mapping with ``class``/``class_name`` and metric keys).
        metrics: metric names to summarise; None for every non-``RECORD_KEYS`` key found.
        undefined_value: optional worst case per metric (e.g. ``{"dice": 0.0, "hd95": 373.0}``): undefined
            values of these metrics enter means and stds as that value (recorded as ``undefined_value`` in the
            metric's entry); they are still counted in ``n_undefined``.

    Returns:
        ``{"n_cases", "n_records", "classes", "metrics": {name: {"mean", "std", "n_defined", "n_undefined",
        "foreground_mean", "per_class": {class_name: {...}}}}}``.
    """
    fills = dict(undefined_value or {})
    names = list(metrics) if metrics is not None else _metric_keys(records)
    classes: dict[str, int] = {}
    for row in records:
        classes.setdefault(str(row.get("class_name", row.get("class"))), int(row.get("class", -1)))
    summary: dict[str, Any] = {
        "n_cases": len({row.get("case") for row in records}),
        "n_records": len(records),
        "classes": classes,
        "metrics": {},
    }
    unknown = [m for m in fills if m not in names]
    if unknown:
        raise ValueError(f"undefined_value names metrics {unknown} that are not summarised; summarised: {names}.")
    for m in names:
        missing = [i for i, row in enumerate(records) if m not in row]
        if missing:
            raise ValueError(f"metric {m!r} is missing from record(s) {missing[:5]}.")
        fill = fills.get(m)
        entry: dict[str, Any] = _stats((row[m] for row in records), fill)
        per_class = {
            cname: _stats((row[m] for row in records if str(row.get("class_name", row.get("class"))) == cname), fill)
            for cname in classes
        }
        fg_means = [s["mean"] for cname, s in per_class.items() if classes[cname] != 0 and not math.isnan(s["mean"])]
        entry["foreground_mean"] = float(np.mean(fg_means)) if fg_means else math.nan
        entry["per_class"] = per_class
        if fill is not None:
            entry["undefined_value"] = float(fill)
        summary["metrics"][m] = entry
    return summary


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def write_case_csv(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Writes records as CSV atomically (temporary file in the same folder, then ``os.replace``).

    Columns are ``RECORD_KEYS`` present in the records, then the metrics in first-seen order. Undefined values
    are written as ``nan``; floats use ``repr`` so they read back exactly.

    Returns:
        The path written.
    """
    if not records:
        raise ValueError("records is empty: nothing to write.")
    columns = [k for k in RECORD_KEYS if any(k in row for row in records)] + _metric_keys(records)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in records:
        writer.writerow({k: _csv_value(row.get(k, "")) for k in columns})
    return atomic_write_text(path, buffer.getvalue())


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_summary_json(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Writes a summary as JSON atomically; NaN is written as ``null`` (strict JSON).

    Returns:
        The path written.
    """
    return atomic_write_text(path, json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def summary_markdown(summary: Mapping[str, Any], digits: int = 4) -> str:
    """Formats a summary as a Markdown table: one row per metric.

    Columns: metric, mean ± std, foreground mean, one mean per class, and undefined / total.

    Args:
        summary: output of ``summarize``.
        digits: decimals shown.

    Returns:
        The table as a string ending in a newline.
    """
    class_names = list(summary.get("classes", {}))
    header = ["metric", "mean ± std", "foreground mean", *class_names, "undefined"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, entry in summary["metrics"].items():
        total = entry["n_defined"] + entry["n_undefined"]
        cells = [
            name,
            f"{_fmt(entry['mean'], digits)} ± {_fmt(entry['std'], digits)}",
            _fmt(entry["foreground_mean"], digits),
            *(_fmt(entry["per_class"][c]["mean"], digits) for c in class_names),
            f"{entry['n_undefined']}/{total}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
