"""Iterative pseudo-label refinement: train, pseudo-label the unlabelled cases, filter, retrain with them as masks.

Liu et al. (DALI 2021, as cited in issue 5): rounds of

1. train on the current dataset (round 0: the input; round r: the manifest written by round r - 1);
2. predict every unlabelled case with the round's model;
3. filter the prediction: a voxel keeps its pseudo-label only if its probability exceeds ``tau``, and a connected
   component of a foreground class is dropped if its size (physical volume) lies outside mean +- ``size_std`` std
   of the component sizes of that class in the labelled training masks; dropped voxels are *not annotated*
   (the manifest's ignore value), not background;
4. write the pseudo-labels in the input's format (``data.io.write_label``) and a new manifest: a copy of the input
   with the unlabelled cases turned into mask cases pointing at them.

Layout of ``out_dir``::

    round_0/run/            training run (config, checkpoints, metrics, log)
    round_0/pseudo/         one label file per unlabelled case (ignore value where filtered out)
    round_0/manifest.yaml   the dataset of round 1
    round_0/round.json      the round's report, written last: a round that has it is skipped on re-run
    round_1/...
    refinement.json         every round's report

Choices: each round trains from scratch (the rounds differ in data only); components are measured on the argmax
map before the confidence filter (so an object's uncertain rim does not split or shrink it); component statistics
come from the full masks of the training split (not the validation cases); the validation cases stay fixed across
rounds (the input's ``val`` split, or the cases the trainer held out in round 0, written as ``val`` afterwards), so
pseudo-labelled cases are never validated against.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from everylabel.engine.checkpoint import atomic_write_json, atomic_write_text
from everylabel.engine.predictor import InputCase, Predictor, output_name
from everylabel.engine.trainer import split_cases, train
from everylabel.experiments.config import Config, replace_config

log = logging.getLogger("everylabel")


# ------------------------------------------------------------------------------------------------- filtering


def _components(mask: np.ndarray, connectivity: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Connected-component labels of a boolean map and the voxel count of each (index 0 = background)."""
    from skimage.measure import label

    comp = label(mask, connectivity=connectivity or mask.ndim)
    return comp, np.bincount(comp.ravel())


def component_sizes(labels: np.ndarray, num_classes: int, *, valid: np.ndarray | None = None,
                    voxel_volume: float = 1.0, connectivity: int | None = None) -> dict[int, list[float]]:
    """Sizes (voxel count x ``voxel_volume``) of the connected components of every foreground class.

    Args:
        labels: integer label map ``S``.
        valid: optional boolean map: voxels outside count as no class.
        connectivity: scikit-image connectivity (1..ndim; default ndim, i.e. 8 / 26 neighbours).
    """
    out: dict[int, list[float]] = {}
    for k in range(1, num_classes):
        mask = labels == k
        if valid is not None:
            mask &= valid
        _, counts = _components(mask, connectivity)
        out[k] = [float(c) * voxel_volume for c in counts[1:]]
    return out


def size_bounds(sizes: dict[int, list[float]], size_std: float = 2.0) -> dict[int, tuple[float, float]]:
    """Per class ``(mean - size_std * std, mean + size_std * std)`` of its component sizes.

    Classes with fewer than two components get no bounds (there is no spread to judge by).
    """
    if size_std <= 0:
        raise ValueError(f"size_std must be > 0, got {size_std}")
    out = {}
    for k, values in sizes.items():
        if len(values) >= 2:
            mean, std = float(np.mean(values)), float(np.std(values))
            out[k] = (mean - size_std * std, mean + size_std * std)
    return out


def filter_pseudo_labels(probs: np.ndarray, *, tau: float = 0.9, bounds: dict[int, tuple[float, float]] | None = None,
                         voxel_volume: float = 1.0, connectivity: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pseudo-labels of one case and where they are kept.

    Args:
        probs: (N, *S) class probabilities.
        tau: a voxel is kept only if its largest probability is > ``tau``.
        bounds: class -> (low, high) admissible component size (see :func:`size_bounds`); components of that class
            outside the interval are dropped. Classes without bounds keep all components.
        voxel_volume: physical volume of one voxel (sizes are compared in the units of ``bounds``).
        connectivity: scikit-image connectivity of the components.

    Returns:
        ``(labels, keep, info)``: int64 argmax labels ``S``, bool ``S`` map of kept voxels, and counts
        (``voxels``, ``kept``, ``low_confidence``, ``components_removed``).
    """
    probs = np.asarray(probs)
    labels = probs.argmax(0).astype(np.int64)
    confident = probs.max(0) > tau
    in_range = np.ones(labels.shape, dtype=bool)
    removed = 0
    for k, (lo, hi) in (bounds or {}).items():
        comp, counts = _components(labels == k, connectivity)
        sizes = counts * voxel_volume
        bad = np.nonzero((sizes < lo) | (sizes > hi))[0]
        bad = bad[bad > 0]
        if len(bad):
            in_range &= ~np.isin(comp, bad)
            removed += len(bad)
    keep = confident & in_range
    info = {"voxels": int(labels.size), "kept": int(keep.sum()), "low_confidence": int((~confident).sum()),
            "components_removed": int(removed)}
    return labels, keep, info


# ------------------------------------------------------------------------------------------------- manifests


def _has_annotation(case) -> bool:
    return any(getattr(case, k) is not None for k in ("mask", "masks_per_class", "scribble", "points", "boxes",
                                                      "tags"))


def unlabelled_cases(manifest, train_split: str = "train") -> list:
    """The cases to pseudo-label: the ``unlabelled`` split plus training cases without any annotation."""
    return [c for c in manifest.cases if c.split == "unlabelled" or (c.split == train_split and
                                                                     not _has_annotation(c))]


def _raw_label_values(manifest, case) -> set[int]:
    from everylabel.data.io import read_label_raw

    values: set[int] = set()
    for path in [case.mask, *(case.masks_per_class or {}).values(), case.scribble]:
        if path is not None:
            raw, _ = read_label_raw(path, key=case.label_key)
            values |= {int(v) for v in np.unique(raw)}
    return values


def choose_ignore_value(manifest) -> int:
    """The raw value that marks filtered-out voxels in pseudo-label files (the manifest's ``ignore_value``).

    The input's own ignore value if it has one; otherwise the largest value in 255..N (N = number of classes) that no
    label file of the input can hold as a label: not a ``label_mapping`` key and not present in any thresholded
    label file (such files are read to check).

    Raises:
        ValueError: the input's ignore value is a class index, or no free value exists.
    """
    n = manifest.num_classes
    if manifest.ignore_value is not None:
        if 0 <= manifest.ignore_value < n:
            raise ValueError(f"{manifest.source}: ignore_value {manifest.ignore_value} is also a class index, so "
                             "pseudo-label files (which hold class indices) would be misread")
        return int(manifest.ignore_value)
    taken: set[int] = set(manifest.label_mapping or {})
    for case in manifest.cases:
        mapping, threshold = manifest.label_options(case)
        taken |= set(mapping or {})
        if threshold is not None:
            taken |= _raw_label_values(manifest, case)
    for value in range(max(255, n), n - 1, -1):
        if value not in taken:
            return value
    raise ValueError(f"{manifest.source}: every value {n}..255 is used by a label file; cannot choose an ignore "
                     "value for pseudo-labels")


def _manifest_header(manifest, ignore_value: int, note: str) -> dict:
    data: dict = {"name": manifest.name,
                  "description": f"{manifest.description}; {note}" if manifest.description else note,
                  "modality": manifest.modality, "labels": dict(manifest.labels), "ignore_value": int(ignore_value)}
    if manifest.channel_names:
        data["channel_names"] = list(manifest.channel_names)
    if manifest.spacing is not None:
        data["spacing"] = list(manifest.spacing)
    return data


def write_round_manifest(manifest, path: Path, pseudo: dict[str, Path], *, ignore_value: int, val_ids: set[str],
                         cfg: Config, note: str) -> Path:
    """Copy of ``manifest`` with the cases in ``pseudo`` (id -> label file) turned into training mask cases.

    Cases in ``val_ids`` get the validation split; every other case keeps its split and annotations. Paths are
    written relative to the manifest's folder.
    """
    import yaml

    from everylabel.annotations.protocol import case_entry
    from everylabel.annotations.simulate_common import to_builtin

    out_dir = path.parent.absolute()
    entries = []
    for case in manifest.cases:
        if case.id in pseudo:
            entry = case_entry(manifest, case, out_dir, True, dense=False, sparse=False)
            entry["mask"] = Path(pseudo[case.id]).absolute().relative_to(out_dir).as_posix()
            entry["split"] = cfg.data.train_split
        else:
            entry = case_entry(manifest, case, out_dir, True)
            if case.id in val_ids:
                entry["split"] = cfg.data.val_split
        entries.append(entry)
    data = _manifest_header(manifest, ignore_value, note)
    data["cases"] = entries
    atomic_write_text(path, yaml.safe_dump(to_builtin(data), sort_keys=False, default_flow_style=None))
    return path


# ------------------------------------------------------------------------------------------------- rounds


def labelled_size_bounds(manifest, cases: list, *, size_std: float, connectivity: int | None) -> dict:
    """:func:`size_bounds` of the component sizes (physical volume) in the full masks of ``cases``."""
    from everylabel.annotations.kinds import Kind
    from everylabel.data.manifest import load_case

    sizes: dict[int, list[float]] = {k: [] for k in range(1, manifest.num_classes)}
    for case in cases:
        if case.mask is None and not case.masks_per_class:
            continue
        _, ann, meta = load_case(manifest, case)
        if ann.dense_kind != Kind.MASK:
            continue
        found = component_sizes(ann.labels, manifest.num_classes, valid=ann.valid,
                                voxel_volume=float(np.prod(meta.spacing)), connectivity=connectivity)
        for k, v in found.items():
            sizes[k] += v
    return size_bounds(sizes, size_std)


def _pseudo_label_case(predictor: Predictor, manifest, case, out_dir: Path, *, tau: float, bounds: dict,
                       ignore_value: int, connectivity: int | None) -> tuple[Path, dict]:
    from everylabel.data.io import image_suffix, write_label
    from everylabel.data.manifest import load_case

    image, _, meta = load_case(manifest, case)
    probs = predictor.predict_array(image, tuple(meta.spacing)).numpy()
    labels, keep, info = filter_pseudo_labels(probs, tau=tau, bounds=bounds,
                                              voxel_volume=float(np.prod(meta.spacing)), connectivity=connectivity)
    labels[~keep] = ignore_value
    path = out_dir / output_name(InputCase(case.id, list(case.images), case.image_key))
    target = f"{path}::{case.label_key}" if image_suffix(path) in (".h5", ".hdf5") else path
    write_label(target, labels, meta)
    return Path(str(target)), {"case": case.id, "file": str(target), **info}


def refine(data: str | Path, out_dir: str | Path, cfg: Config, *, rounds: int = 2, tau: float = 0.9,
           size_std: float | None = 2.0, connectivity: int | None = None, checkpoint: str = "best",
           progress: bool = True) -> dict:
    """Iterative pseudo-label refinement (see the module docstring) of the dataset at ``data`` into ``out_dir``.

    Args:
        data: manifest file or nnU-Net raw folder with unlabelled cases (split ``unlabelled``, or training cases
            without annotation).
        out_dir: output folder; ``round_<r>/`` per round. A round whose ``round.json`` exists is skipped, an
            interrupted round resumes its training from the last checkpoint.
        cfg: the training configuration of every round (rounds after the first train with
            ``data.labelled_fraction=None``, as no unlabelled case is left, and ``data.val_fraction=0``, as the
            validation cases are fixed in the manifest).
        rounds: number of train -> pseudo-label rounds (>= 1).
        tau: per-voxel confidence threshold in [0, 1).
        size_std: width of the admissible component-size interval in standard deviations; None = no size filter.
        connectivity: scikit-image connectivity of components (default: full, 8 / 26 neighbours).
        checkpoint: "best" or "last" model of each round for predicting.
        progress: show training progress bars.

    Returns:
        ``{"rounds": [report per round], "manifest": last manifest, "run_dir": last run}``; a round's report holds
        ``round``, ``run_dir``, ``pseudo_dir``, ``manifest``, ``pseudo_cases``, ``kept_fraction``, ``val_dice``
        (best validation Dice of the round's run, None without validation cases), ``ignore_value``, ``cases``
        (per case counts) and ``skipped`` (True when it was read from a previous call). Also written to
        ``out_dir/refinement.json``.

    Raises:
        ValueError: bad arguments, or no case to pseudo-label.
    """
    from everylabel.data.manifest import load_dataset

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not 0 <= tau < 1:
        raise ValueError(f"tau must be in [0, 1), got {tau}")
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    manifest = load_dataset(data)
    targets = unlabelled_cases(manifest, cfg.data.train_split)
    if not targets:
        raise ValueError(f"{manifest.source}: no unlabelled case to pseudo-label (split 'unlabelled', or a "
                         f"{cfg.data.train_split!r} case without annotation)")
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    target_ids = {c.id for c in targets}
    train_specs, val_specs = split_cases(manifest, cfg)
    val_ids = {c.id for c in val_specs}
    labelled = [c for c in train_specs if c.id not in target_ids]
    later_cfg = replace_config(cfg, data={"labelled_fraction": None, "val_fraction": 0.0})

    records: list[dict] = []
    source: Path = Path(data)
    bounds = ignore_value = None
    for r in range(rounds):
        rdir = out_dir / f"round_{r}"
        done = rdir / "round.json"
        if done.is_file():
            rec = {**json.loads(done.read_text()), "skipped": True}
            records.append(rec)
            source = Path(rec["manifest"])
            log.info("refinement round %d already finished; skipped", r)
            continue
        if bounds is None:
            bounds = {} if size_std is None else labelled_size_bounds(manifest, labelled, size_std=size_std,
                                                                      connectivity=connectivity)
            ignore_value = choose_ignore_value(manifest)
        run_dir = rdir / "run"
        metrics_path = run_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        if not metrics.get("completed"):
            metrics = train(source, run_dir, cfg if r == 0 else later_cfg, progress=progress,
                            resume=(run_dir / "checkpoints" / "last.pt").is_file())
            if not metrics["completed"]:
                log.info("refinement round %d stopped before the end of training; re-run to resume", r)
                break
        predictor = Predictor(run_dir, checkpoint)
        pseudo_dir = rdir / "pseudo"
        pseudo_dir.mkdir(parents=True, exist_ok=True)
        files, per_case = {}, []
        for case in targets:
            path, info = _pseudo_label_case(predictor, manifest, case, pseudo_dir, tau=tau, bounds=bounds,
                                            ignore_value=ignore_value, connectivity=connectivity)
            files[case.id] = Path(str(path).split("::")[0])
            per_case.append(info)
        manifest_path = write_round_manifest(manifest, rdir / "manifest.yaml", files, ignore_value=ignore_value,
                                             val_ids=val_ids, cfg=cfg,
                                             note=f"pseudo-labels of refinement round {r} (tau {tau}, size_std "
                                                  f"{size_std})")
        voxels = sum(c["voxels"] for c in per_case)
        rec = {"round": r, "run_dir": str(run_dir), "pseudo_dir": str(pseudo_dir), "manifest": str(manifest_path),
               "pseudo_cases": len(per_case), "kept_fraction": sum(c["kept"] for c in per_case) / max(1, voxels),
               "val_dice": metrics.get("best_val_dice"), "tau": tau, "size_std": size_std,
               "size_bounds": {str(k): list(v) for k, v in bounds.items()}, "ignore_value": ignore_value,
               "cases": per_case}
        atomic_write_json(done, rec)
        records.append({**rec, "skipped": False})
        source = manifest_path
        log.info("refinement round %d: %d cases pseudo-labelled, %.1f %% of voxels kept, val Dice %s", r,
                 rec["pseudo_cases"], 100 * rec["kept_fraction"], rec["val_dice"])
    result = {"rounds": records, "manifest": str(source),
              "run_dir": records[-1]["run_dir"] if records else None}
    atomic_write_json(out_dir / "refinement.json", result)
    return result
