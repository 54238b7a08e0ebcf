"""Evaluate a folder of predictions against reference label files or a manifest's masks.

Cases are matched by case id; every missing or extra case is listed at once before anything is computed. Spacing
is read from the reference files (NIfTI zooms), and a manifest's valid-region mask (e.g. DRIVE's field of view)
restricts the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from everylabel.metrics import (
    DEFAULT_METRICS,
    case_records,
    summarize,
    summary_markdown,
    write_case_csv,
    write_summary_json,
)


@dataclass
class RefCase:
    case_id: str
    mask: str
    valid: str | None = None
    key: str | None = None
    mapping: dict | None = None
    threshold: float | None = None
    spacing: tuple[float, ...] | None = None
    """the manifest's spacing override (distances in mm for files that store no spacing, e.g. HDF5)"""


def _files_by_id(folder: Path) -> dict[str, Path]:
    from everylabel.data.io import IMAGE_SUFFIXES, case_id_from_filename

    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name.lower().endswith(tuple(IMAGE_SUFFIXES)) and not f.name.startswith("."):
            cid = case_id_from_filename(f.name)
            if cid in out:
                raise ValueError(f"{folder}: two files for case {cid!r}: {out[cid].name} and {f.name}")
            out[cid] = f
    return out


def reference_cases(ref: str | Path, split: str | None = None) -> tuple[list[RefCase], dict[int, str] | None]:
    """Reference label files: from a folder (one file per case id) or from a manifest (cases with a mask)."""
    ref = Path(ref)
    if ref.is_dir() and not (ref / "dataset.json").is_file():
        return [RefCase(cid, str(p)) for cid, p in _files_by_id(ref).items()], None
    from everylabel.data.manifest import load_dataset

    m = load_dataset(ref)
    cases = []
    for c in m.cases:
        if split is not None and c.split != split:
            continue
        if c.mask is None:
            continue
        cases.append(RefCase(c.id, c.mask, c.valid, c.label_key, *m.label_options(c), spacing=m.spacing_for(c)))
    return cases, dict(m.labels)


def evaluate(pred: str | Path, ref: str | Path, out: str | Path | None = None, *,
             metrics: list[str] | tuple[str, ...] = DEFAULT_METRICS, class_names: dict[int, str] | None = None,
             include_background: bool = False, split: str | None = None, nsd_tolerance: float = 1.0,
             convention: str = "default", progress: bool = False) -> dict:
    """Evaluate predictions in ``pred`` (folder) against ``ref`` (folder or manifest).

    Writes ``cases.csv``, ``summary.json`` and ``summary.md`` into ``out`` when given.

    Returns:
        The summary dict (see :func:`everylabel.metrics.summarize`), with ``records`` added.

    Raises:
        ValueError: listing every prediction without a reference and every reference without a prediction.
    """
    from everylabel.data.io import read_label
    from everylabel.data.manifest import with_spacing

    pred = Path(pred)
    if not pred.is_dir():
        raise ValueError(f"--pred {pred} is not a folder of predictions")
    preds = _files_by_id(pred)
    refs, manifest_names = reference_cases(ref, split)
    ref_ids = {r.case_id for r in refs}
    missing = sorted(ref_ids - set(preds))
    extra = sorted(set(preds) - ref_ids)
    if missing or extra or not refs:
        msg = []
        if not refs:
            msg.append(f"{ref} holds no reference masks")
        if missing:
            msg.append(f"{len(missing)} case(s) have a reference but no prediction in {pred}: {', '.join(missing)}")
        if extra:
            msg.append(f"{len(extra)} prediction(s) in {pred} have no reference in {ref}: {', '.join(extra)}")
        raise ValueError("; ".join(msg))
    records = []
    names_all: dict[int, str] | None = class_names or manifest_names
    iterator = refs
    if progress:
        from rich.progress import track

        iterator = track(refs, description="evaluate")
    for r in iterator:
        ref_lab, meta = read_label(r.mask, key=r.key, mapping=r.mapping, threshold=r.threshold)
        pred_lab, pmeta = read_label(preds[r.case_id])
        if pred_lab.shape != ref_lab.shape:
            raise ValueError(f"case {r.case_id}: prediction {preds[r.case_id].name} has shape {pred_lab.shape} but "
                             f"the reference {r.mask} has {ref_lab.shape}")
        if meta.format == "nifti" and pmeta.format == "nifti" and not np.allclose(meta.spacing, pmeta.spacing,
                                                                                 rtol=1e-4):
            raise ValueError(f"case {r.case_id}: prediction spacing {pmeta.spacing} differs from the reference "
                             f"{meta.spacing}")
        valid = None
        if r.valid is not None:
            valid = read_label(r.valid, threshold=0)[0] > 0
        names = names_all
        if names is None:
            present = sorted(set(np.unique(ref_lab).tolist()) | set(np.unique(pred_lab).tolist()) | {0, 1})
            names = {int(c): f"class_{c}" for c in present}
        use = {k: v for k, v in names.items() if include_background or k != 0}
        spacing = tuple(with_spacing(meta, r.spacing, r.case_id).spacing)  # the manifest's override, if any
        records.extend(case_records(pred_lab, ref_lab, r.case_id, use, valid=valid, spacing=spacing,
                                    metrics=list(metrics), nsd_tolerance=nsd_tolerance, convention=convention))
    summary = summarize(records)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_case_csv(records, out / "cases.csv")
        write_summary_json(summary, out / "summary.json")
        from everylabel.engine.checkpoint import atomic_write_text

        atomic_write_text(out / "summary.md", summary_markdown(summary))
    summary["records"] = records
    return summary
