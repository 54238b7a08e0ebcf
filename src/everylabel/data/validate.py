"""Dataset validation: :func:`validate_manifest` lists every problem of a dataset at once, each message naming the
case and the file.

Shallow checks read no file (missing files, undeclared classes in tags, partial classes, points and boxes); deep
checks read every image and label file through the same code as :func:`~everylabel.data.manifest.load_case`, so a
dataset that validates also loads.
"""

from __future__ import annotations

import numpy as np

from everylabel.annotations.kinds import Annotations, Kind
from everylabel.data.io import split_key
from everylabel.data.manifest import Manifest, _assemble, _dense, _read_case_image, _roi, _sparse


def _differences(values: dict[str, tuple[int, str]], what: str, unit: str) -> list[str]:
    """One message when cases disagree on a value (``values``: case id -> (value, image file))."""
    groups: dict[int, list[str]] = {}
    for cid, (value, _) in values.items():
        groups.setdefault(value, []).append(cid)
    if len(groups) <= 1:
        return []
    parts = [f"{value}{unit} in {len(ids)} case(s), e.g. case '{ids[0]}' ({values[ids[0]][1]})"
             for value, ids in sorted(groups.items())]
    return [f"cases differ in {what}: " + "; ".join(parts)]


def validate_manifest(manifest: Manifest, deep: bool = True) -> list[str]:
    """List every problem of a dataset (an empty list means it is usable).

    Shallow checks: no cases, missing files, undeclared classes in tags / partial classes / points / boxes.
    Deep checks (``deep=True``) read every file: unreadable files, NaN/Inf, image/label shape, spacing and affine
    mismatches (NIfTI), label values outside the declared classes (ignore value excepted), boxes and points
    outside the image, channel-count and dimensionality differences between cases. Each message names the case
    and the file.
    """
    problems: list[str] = []
    if not manifest.cases:
        problems.append(f"{manifest.source}: the dataset has no cases")
    expected = manifest.extra.get("num_training")
    if expected is not None:
        n_train = len(manifest.split("train"))
        if n_train != int(expected):
            problems.append(f"{manifest.source}: numTraining is {expected} but {n_train} training cases were found")
    ndims: dict[str, tuple[int, str]] = {}
    channels: dict[str, tuple[int, str]] = {}
    for case in manifest.cases:
        where = f"case '{case.id}'"
        missing = set()
        for role, path in case.files:
            if not split_key(path)[0].is_file():
                problems.append(f"{where}: {role} file not found: {split_key(path)[0]}")
                missing.add(path)
        sparse: dict | None = None
        try:
            sparse = _sparse(manifest, case)
        except ValueError as err:
            problems.append(str(err))
        for cls in list(case.classes or []) + list(case.masks_per_class or {}):
            try:
                manifest.class_index(cls)
            except ValueError as err:
                problems.append(f"{where}: {err} in {manifest.source}")
        if not deep or any(p in missing for p in case.images):
            continue
        try:
            image, meta = _read_case_image(manifest, case)
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        ndims[case.id] = (len(meta.shape), meta.path)
        channels[case.id] = (image.shape[0], meta.path)
        if manifest.channel_names and image.shape[0] != len(manifest.channel_names):
            problems.append(f"{where}: image {meta.path} has {image.shape[0]} channel(s), the dataset declares "
                            f"{len(manifest.channel_names)} ({', '.join(manifest.channel_names)})")
        notes: list[str] = []
        dense: dict | None = None
        dense_files = [p for r, p in case.files if r == "mask" or r == "scribble" or r.startswith("mask of")]
        if not any(p in missing for p in dense_files):
            try:
                dense = _dense(manifest, case, meta, notes)
            except ValueError as err:
                problems.append(str(err) if str(err).startswith("case") else f"{where}: {err}")
        roi = None
        if case.valid is not None and case.valid not in missing:
            try:
                roi = _roi(case, meta, notes)
            except ValueError as err:
                problems.append(str(err) if str(err).startswith("case") else f"{where}: {err}")
        problems += notes
        if dense:
            ann = _assemble(case, dense, {}, roi)
            problems += ann.validate(meta.shape, manifest.num_classes, where=f"{where} ({', '.join(dense_files)})")
            if ann.dense_kind == Kind.PARTIAL and ann.valid is not None:
                extra = set(np.unique(ann.labels[ann.valid]).tolist()) - set(ann.classes)
            elif ann.dense_kind == Kind.PARTIAL:
                extra = set(np.unique(ann.labels).tolist()) - set(ann.classes)
            else:
                extra = set()
            if extra:
                problems.append(f"{where} ({', '.join(dense_files)}): partial mask holds classes {sorted(extra)} "
                                f"outside its declared classes {list(ann.classes)}")
        if sparse:
            problems += Annotations(**sparse).validate(meta.shape, manifest.num_classes,
                                                       where=f"{where} (in {manifest.source})")
    problems += _differences(ndims, "dimensionality", "D")
    problems += _differences(channels, "channel count", " channel(s)")
    return problems


__all__ = ["validate_manifest"]
