"""Dataset manifests: one YAML/JSON file listing every case, its image channels and whatever annotation it has.

A manifest names the classes once and then lists cases; each case may carry a dense mask, one binary mask per
class, a scribble file, points, boxes, image-level tags, a partial mask (with the classes it covers), a valid
region (field of view), or nothing at all (an unlabelled case). :func:`load_case` turns a case into an image
``(C, *S)`` and a typed :class:`~everylabel.annotations.kinds.Annotations`;
:func:`~everylabel.data.validate.validate_manifest` lists every problem of a dataset at once.

Example (paths are relative to ``root``, which is relative to the manifest's folder)::

    name: drive
    root: ../../../shared/data/DRIVE
    labels: {0: background, 1: vessel}
    label_mapping: {255: 1}
    cases:
      - id: drive_21
        images: [training/images/21_training.tif]
        mask: training/1st_manual/21_manual1.gif
        valid: training/mask/21_training_mask.gif
        split: train

Splits: ``train``, ``val``, ``test`` (held out, evaluated against its annotation) and ``unlabelled`` (images with
no ground truth at all, e.g. ISBI 2012's test slices: usable for semi-supervised training, never evaluated).
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path

import numpy as np

from everylabel.annotations.kinds import TAG_UNKNOWN, Annotations, Kind
from everylabel.data.io import ImageMeta, map_labels, read_image, read_label_raw, split_key

SPLITS = ("train", "val", "test", "unlabelled")

MANIFEST_KEYS = ("name", "description", "root", "modality", "channel_names", "labels", "ignore_value", "spacing",
                 "label_mapping", "label_threshold", "image_key", "label_key", "cases")
CASE_KEYS = ("id", "images", "mask", "masks_per_class", "scribble", "unlabelled_value", "points", "boxes", "tags",
             "classes", "valid", "split", "image_key", "label_key", "label_mapping", "label_threshold", "spacing")


@dataclass
class CaseSpec:
    """One case of a manifest. File paths are absolute (HDF5 paths may end in ``::dataset``).

    Attributes:
        id: unique case identifier.
        images: one file per channel.
        mask: dense label map (MASK, or PARTIAL when ``classes`` is given).
        masks_per_class: class -> binary file (value > ``label_threshold``, or nonzero without one, marks the class;
            ``label_mapping`` does not apply); combined into one label map, later entries overwrite earlier ones.
            PARTIAL when the files do not cover every foreground class.
        scribble: sparse label file; pixels equal to ``unlabelled_value`` or the manifest's ``ignore_value`` are
            unannotated.
        unlabelled_value: value meaning "unannotated" in the scribble file.
        points: ``[[c_0, ..., c_{d-1}, label], ...]`` in voxel coordinates (label: class index or name).
        boxes: ``[[min_0, ..., min_{d-1}, max_0, ..., max_{d-1}, label], ...]`` in voxels, max exclusive.
        tags: class names (or indices) present, as a list, or a dict name -> present (True) / absent (False);
            unspecified classes are unknown.
        classes: for a partial mask, the classes it covers (background is always added).
        valid: valid-region / field-of-view file (nonzero = valid); sets ``roi`` and restricts ``valid``.
        split: "train", "val", "test" or "unlabelled".
        image_key: HDF5 dataset of the image.
        label_key: HDF5 dataset of the label files.
        label_mapping: raw value -> class for this case's label files (falls back to the manifest's).
        label_threshold: raw value > threshold -> 1 (falls back to the manifest's).
        spacing: voxel spacing override in array axis order (falls back to the manifest's, then the file's).
    """

    id: str
    images: list[str]
    mask: str | None = None
    masks_per_class: dict[int | str, str] | None = None
    scribble: str | None = None
    unlabelled_value: int | None = None
    points: list | None = None
    boxes: list | None = None
    tags: dict[str, bool] | list[str] | None = None
    classes: list[str | int] | None = None
    valid: str | None = None
    split: str = "train"
    image_key: str = "image"
    label_key: str = "label"
    label_mapping: dict[int, int] | None = None
    label_threshold: float | None = None
    spacing: list[float] | None = None

    @property
    def files(self) -> list[tuple[str, str]]:
        """Every file of the case as ``(role, path)``."""
        out = [(f"image channel {i}", p) for i, p in enumerate(self.images)]
        out += [(role, p) for role, p in (("mask", self.mask), ("scribble", self.scribble), ("valid", self.valid))
                if p is not None]
        out += [(f"mask of class {c}", p) for c, p in (self.masks_per_class or {}).items()]
        return out


@dataclass
class Manifest:
    """A dataset: class names, defaults and cases.

    Attributes:
        name: dataset name.
        labels: class index -> name, contiguous from 0 (background).
        ignore_value: raw file value (before ``label_mapping``) meaning "not annotated" in mask and scribble
            files, or None.
        cases: the cases, in file order.
        root: folder the case paths were resolved against.
        modality: "CT" enables CT intensity normalisation; anything else is treated as non-CT.
        channel_names: one name per image channel.
        spacing: default spacing override (array axis order), or None to use the files' spacing.
        label_mapping: default raw value -> class mapping for label files.
        label_threshold: default threshold for label files (value > threshold -> 1).
        source: path of the manifest file (or nnU-Net folder).
        description: free text.
        extra: format-specific details (e.g. nnU-Net ``file_ending``, ``regions``).
    """

    name: str
    labels: dict[int, str]
    ignore_value: int | None = None
    cases: list[CaseSpec] = field(default_factory=list)
    root: Path = field(default_factory=Path)
    modality: str = "other"
    channel_names: list[str] = field(default_factory=list)
    spacing: tuple[float, ...] | None = None
    label_mapping: dict[int, int] | None = None
    label_threshold: float | None = None
    source: str = ""
    description: str = ""
    extra: dict = field(default_factory=dict)
    _spatial_dims: int | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.labels)

    @property
    def spatial_dims(self) -> int:
        """2 or 3, read (once) from the first case's image."""
        if self._spatial_dims is None:
            if not self.cases:
                raise ValueError(f"{self.source}: the dataset has no cases, so its dimensionality is unknown")
            _, meta = read_image(self.cases[0].images, key=self.cases[0].image_key)
            self._spatial_dims = len(meta.shape)
        return self._spatial_dims

    def split(self, name: str) -> list[CaseSpec]:
        """The cases of one split ("train", "val", "test" or "unlabelled")."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return [c for c in self.cases if c.split == name]

    def label_options(self, case: CaseSpec) -> tuple[dict[int, int] | None, float | None]:
        """The (label_mapping, label_threshold) that apply to a case's label files: its own, else the manifest's."""
        return (_setting(case.label_mapping, self.label_mapping), _setting(case.label_threshold, self.label_threshold))

    def spacing_for(self, case: CaseSpec) -> tuple[float, ...] | None:
        """The voxel spacing override of a case (its own, else the manifest's), or None to use the files' spacing.

        Every reader of a case's images or labels must apply it: HDF5 and PNG files store no spacing, and a model
        trained at the declared spacing but predicted at the file's (1.0) would be resampled by the wrong factor.
        """
        spacing = _setting(case.spacing, self.spacing)
        return None if spacing is None else tuple(float(s) for s in spacing)

    def class_index(self, cls: int | str) -> int:
        """Index of a class given by index or name; ValueError if it is not declared."""
        if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
            if int(cls) in self.labels:
                return int(cls)
        elif isinstance(cls, str):
            by_name = {v: k for k, v in self.labels.items()}
            if cls in by_name:
                return by_name[cls]
            if cls.lstrip("-").isdigit() and int(cls) in self.labels:
                return int(cls)
        declared = ", ".join(f"{k}={v}" for k, v in self.labels.items())
        raise ValueError(f"class {cls!r} is not declared (classes: {declared})")


# ------------------------------------------------------------------------------------------------------ parsing


def _unknown_keys(data: dict, valid: tuple[str, ...], where: str) -> list[str]:
    out = []
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
            out.append(f"{where}: unknown key {key!r}; {hint}")
    return out


def _int_dict(data, what: str, where: str, errors: list[str], int_values: bool = False) -> dict | None:
    """``data`` with integer keys (JSON gives strings); values made integers too when ``int_values``."""
    if data is None:
        return None
    if not isinstance(data, dict):
        errors.append(f"{where}: {what} must be a mapping, got {type(data).__name__}")
        return None
    out = {}
    for k, v in data.items():
        try:
            out[int(k)] = int(v) if int_values else v
        except (TypeError, ValueError):
            errors.append(f"{where}: {what} entry {k!r}: {v!r} must map an integer to "
                          f"{'an integer' if int_values else 'a name'}")
    return out


def _number(value, what: str, where: str, errors: list[str], kind: type = float, sequence: bool = False):
    """``kind(value)`` (or a list of them when ``sequence``); None stays None."""
    if value is None:
        return None
    try:
        if sequence != isinstance(value, (list, tuple)):
            raise TypeError
        return [kind(v) for v in value] if sequence else kind(value)
    except (TypeError, ValueError):
        expected = "a list of numbers" if sequence else ("a number" if kind is float else "an integer")
        errors.append(f"{where}: {what} must be {expected}, got {value!r}")
        return None


def _resolve(root: Path, path: str | None) -> str | None:
    if path is None:
        return None
    file, key = split_key(str(path))
    file = Path(os.path.normpath(root / file.expanduser()))
    return str(file) + (f"::{key}" if key else "")


def _parse_labels(raw, where: str, errors: list[str]) -> dict[int, str]:
    if isinstance(raw, list):
        raw = dict(enumerate(raw))
    labels = _int_dict(raw, "labels", where, errors)
    if not labels:
        errors.append(f"{where}: 'labels' must map class indices to names, e.g. {{0: background, 1: tumour}}")
        return {0: "background"}
    labels = {k: str(v) for k, v in sorted(labels.items())}
    if sorted(labels) != list(range(len(labels))):
        errors.append(f"{where}: class indices must be 0..N-1 without gaps (0 = background), got {sorted(labels)}")
    if len(set(labels.values())) != len(labels):
        errors.append(f"{where}: class names must be unique, got {list(labels.values())}")
    return labels


def _parse_case(raw, index: int, root: Path, defaults: dict, where: str, errors: list[str]) -> CaseSpec | None:
    if not isinstance(raw, dict):
        errors.append(f"{where}: case #{index} must be a mapping, got {type(raw).__name__}")
        return None
    cid = raw.get("id")
    here = f"{where}: case {cid!r}" if cid is not None else f"{where}: case #{index}"
    errors += _unknown_keys(raw, CASE_KEYS, here)
    if cid is None or str(cid) == "":
        errors.append(f"{here}: missing 'id'")
        return None
    images = raw.get("images")
    images = [images] if isinstance(images, str) else images
    if not images or not isinstance(images, list):
        errors.append(f"{here}: 'images' must be a file or a list of files (one per channel)")
        return None
    dense = [k for k in ("mask", "masks_per_class", "scribble") if raw.get(k) is not None]
    if len(dense) > 1:
        errors.append(f"{here}: a case has one dense annotation, got {', '.join(dense)}")
    if raw.get("classes") is not None and not (raw.get("mask") or raw.get("masks_per_class")):
        errors.append(f"{here}: 'classes' describes a partial mask, but the case has no mask")
    split = raw.get("split", "train")
    if split not in SPLITS:
        close = difflib.get_close_matches(str(split), SPLITS, n=1)
        errors.append(f"{here}: unknown split {split!r}; expected one of {SPLITS}"
                      + (f" (did you mean {close[0]!r}?)" if close else ""))
    for key, rows, min_len in (("points", raw.get("points"), 2), ("boxes", raw.get("boxes"), 3)):
        if rows is not None and (not isinstance(rows, list) or
                                 not all(isinstance(r, list) and len(r) >= min_len for r in rows)):
            errors.append(f"{here}: '{key}' must be a list of [coordinates..., label] rows")
    tags = raw.get("tags")
    if tags is not None and not isinstance(tags, (list, dict)):
        errors.append(f"{here}: 'tags' must be a list of present classes or a mapping class -> true/false")
    per_class = raw.get("masks_per_class")
    if per_class is not None and not isinstance(per_class, dict):
        errors.append(f"{here}: 'masks_per_class' must map classes to files")
        per_class = None
    mapping = _int_dict(raw.get("label_mapping"), "label_mapping", here, errors, int_values=True)
    spacing = _number(raw.get("spacing"), "spacing", here, errors, sequence=True)
    return CaseSpec(
        id=str(cid),
        images=[_resolve(root, p) for p in images],
        mask=_resolve(root, raw.get("mask")),
        masks_per_class={(int(k) if str(k).isdigit() else k): _resolve(root, v) for k, v in per_class.items()}
        if per_class else None,
        scribble=_resolve(root, raw.get("scribble")),
        unlabelled_value=_number(raw.get("unlabelled_value"), "unlabelled_value", here, errors, int),
        points=raw.get("points"),
        boxes=raw.get("boxes"),
        tags=tags,
        classes=raw.get("classes"),
        valid=_resolve(root, raw.get("valid")),
        split=str(split),
        image_key=str(raw.get("image_key", defaults["image_key"])),
        label_key=str(raw.get("label_key", defaults["label_key"])),
        label_mapping=mapping or None,
        label_threshold=_number(raw.get("label_threshold"), "label_threshold", here, errors),
        spacing=spacing,
    )


def load_manifest(path: str | Path) -> Manifest:
    """Load a YAML (``.yaml``/``.yml``) or JSON manifest.

    Raises:
        ValueError: the file cannot be parsed, or has unknown keys (with the nearest valid key suggested), bad
            labels, duplicate case ids or malformed cases; every such problem is listed in one message.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: manifest file not found")
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ValueError(f"{path}: a manifest must be .yaml, .yml or .json")
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot parse manifest ({err})") from err
    if not isinstance(data, dict):  # a bad user file, not a programming error: ValueError as everywhere else
        raise ValueError(f"{path}: a manifest must be a mapping with keys such as 'labels' and 'cases'")  # noqa: TRY004
    where = str(path)
    errors = _unknown_keys(data, MANIFEST_KEYS, where)
    labels = _parse_labels(data.get("labels"), where, errors)
    root = Path(os.path.normpath(path.parent.absolute() / Path(str(data.get("root", "."))).expanduser()))
    defaults = {"image_key": data.get("image_key", "image"), "label_key": data.get("label_key", "label")}
    raw_cases = data.get("cases", [])
    if not isinstance(raw_cases, list):
        errors.append(f"{where}: 'cases' must be a list")
        raw_cases = []
    cases = [c for i, raw in enumerate(raw_cases) if (c := _parse_case(raw, i, root, defaults, where, errors))]
    seen: set[str] = set()
    for c in cases:
        if c.id in seen:
            errors.append(f"{where}: case id {c.id!r} appears more than once")
        seen.add(c.id)
    ignore = _number(data.get("ignore_value"), "ignore_value", where, errors, int)
    mapping = _int_dict(data.get("label_mapping"), "label_mapping", where, errors, int_values=True)
    spacing = _number(data.get("spacing"), "spacing", where, errors, sequence=True)
    threshold = _number(data.get("label_threshold"), "label_threshold", where, errors)
    if errors:
        raise ValueError("invalid manifest:\n  " + "\n  ".join(errors))
    return Manifest(
        name=str(data.get("name", path.stem)),
        labels=labels,
        ignore_value=ignore,
        cases=cases,
        root=root,
        modality=str(data.get("modality", "other")),
        channel_names=[str(c) for c in data.get("channel_names", [])],
        spacing=tuple(spacing) if spacing is not None else None,
        label_mapping=mapping or None,
        label_threshold=threshold,
        source=str(path),
        description=str(data.get("description", "")),
    )


def load_dataset(path: str | Path) -> Manifest:
    """Load a dataset from a manifest file (``.yaml``/``.yml``/``.json``) or an nnU-Net v2 raw folder.

    Raises:
        ValueError: ``path`` is neither of the two accepted forms.
    """
    path = Path(path)
    if path.is_dir() and (path / "dataset.json").is_file():
        from everylabel.data.nnunet import load_nnunet_raw

        return load_nnunet_raw(path)
    if path.is_file() and path.name == "dataset.json":
        from everylabel.data.nnunet import load_nnunet_raw

        return load_nnunet_raw(path.parent)
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml", ".json"):
        return load_manifest(path)
    raise ValueError(f"{path}: not a dataset; give a manifest file (.yaml, .yml or .json) or an nnU-Net v2 raw "
                     "folder containing dataset.json, imagesTr/ and labelsTr/")


# ------------------------------------------------------------------------------------------------------ loading


def _setting(case_value, manifest_value):
    return case_value if case_value is not None else manifest_value


def _read_case_image(manifest: Manifest, case: CaseSpec) -> tuple[np.ndarray, ImageMeta]:
    image, meta = read_image(case.images, key=case.image_key)
    return image, with_spacing(meta, manifest.spacing_for(case), case.id)


def with_spacing(meta: ImageMeta, spacing: tuple[float, ...] | None, case_id: str) -> ImageMeta:
    """``meta`` with its spacing replaced by a manifest override (unchanged when ``spacing`` is None)."""
    if spacing is None:
        return meta
    if len(spacing) != len(meta.shape):
        raise ValueError(f"case '{case_id}': spacing override {tuple(spacing)} has {len(spacing)} values, the "
                         f"image {meta.path} has {len(meta.shape)} spatial axes")
    return dc_replace(meta, spacing=tuple(float(s) for s in spacing))


def _grid_problems(case: CaseSpec, role: str, label_meta: ImageMeta, image_meta: ImageMeta) -> list[str]:
    """Shape, spacing and affine mismatches between a label file and the image (the shape one is fatal)."""
    where = f"case '{case.id}': {role} {label_meta.path}"
    if label_meta.shape != image_meta.shape:
        return [f"{where} has shape {label_meta.shape}, the image {image_meta.path} has {image_meta.shape}"]
    out = []
    if label_meta.format == "nifti" and image_meta.format == "nifti":
        if not np.allclose(label_meta.spacing, image_meta.spacing, rtol=1e-4, atol=1e-5):
            out.append(f"{where} has spacing {label_meta.spacing}, the image {image_meta.path} has "
                       f"{image_meta.spacing}")
        elif not np.allclose(label_meta.affine, image_meta.affine, atol=1e-3):
            out.append(f"{where} has a different affine (origin/orientation) from the image {image_meta.path}")
    return out


def _read_grid_label(case: CaseSpec, role: str, path: str, key: str, image_meta: ImageMeta,
                     notes: list[str]) -> np.ndarray:
    raw, meta = read_label_raw(path, key=key)
    problems = _grid_problems(case, role, meta, image_meta)
    if problems and meta.shape != image_meta.shape:
        raise ValueError(problems[0])
    notes += problems
    return raw


def _dense(manifest: Manifest, case: CaseSpec, image_meta: ImageMeta, notes: list[str]) -> dict:
    """Dense fields of the Annotations (labels, valid, dense_kind, classes) from mask / per-class / scribble."""
    mapping, threshold = manifest.label_options(case)
    ignore = manifest.ignore_value
    all_classes = set(manifest.labels)
    if case.mask is not None:
        raw = _read_grid_label(case, "mask", case.mask, case.label_key, image_meta, notes)
        invalid = raw == ignore if ignore is not None else None
        labels = map_labels(raw, mapping=mapping, threshold=threshold, where=f"case '{case.id}': mask {case.mask}")
        covered = {0} | {manifest.class_index(c) for c in case.classes} if case.classes is not None else all_classes
    elif case.masks_per_class is not None:
        labels = np.zeros(image_meta.shape, dtype=np.int64)
        invalid = np.zeros(image_meta.shape, dtype=bool) if ignore is not None else None
        covered = {0}
        for cls, path in case.masks_per_class.items():
            index = manifest.class_index(cls)
            raw = _read_grid_label(case, f"mask of class {cls}", path, case.label_key, image_meta, notes)
            if invalid is not None:
                invalid |= raw == ignore
            labels[(raw > threshold) if threshold is not None else (raw != 0)] = index
            covered.add(index)
        if case.classes is not None:
            covered = {0} | {manifest.class_index(c) for c in case.classes}
    elif case.scribble is not None:
        raw = _read_grid_label(case, "scribble", case.scribble, case.label_key, image_meta, notes)
        unannotated = [v for v in (case.unlabelled_value, ignore) if v is not None]
        if not unannotated:
            raise ValueError(f"case '{case.id}': scribble {case.scribble} needs 'unlabelled_value' (case) or "
                             "'ignore_value' (manifest) to tell annotated from unannotated pixels")
        invalid = np.isin(raw, unannotated)
        labels = map_labels(np.where(invalid, 0, raw), mapping=mapping, threshold=threshold,
                            where=f"case '{case.id}': scribble {case.scribble}")
        labels[invalid] = 0
        return {"labels": labels, "valid": ~invalid, "dense_kind": Kind.SCRIBBLE}
    else:
        return {}
    valid = None
    if invalid is not None and invalid.any():
        labels[invalid] = 0
        valid = ~invalid
    if covered >= all_classes:
        return {"labels": labels, "valid": valid, "dense_kind": Kind.MASK}
    return {"labels": labels, "valid": valid, "dense_kind": Kind.PARTIAL, "classes": tuple(sorted(covered))}


def _sparse(manifest: Manifest, case: CaseSpec) -> dict:
    """Points, boxes and tags of the Annotations (no file reading)."""
    out: dict = {}
    if case.points:
        out["points"] = np.asarray([[float(v) for v in row[:-1]] for row in case.points], dtype=np.float64)
        out["point_labels"] = np.asarray([manifest.class_index(row[-1]) for row in case.points], dtype=np.int64)
    if case.boxes:
        if any((len(row) - 1) % 2 for row in case.boxes):
            raise ValueError(f"case '{case.id}': each box must be [min..., max..., label] with as many max as min "
                             "values")
        out["boxes"] = np.asarray([[float(v) for v in row[:-1]] for row in case.boxes], dtype=np.float64)
        out["box_labels"] = np.asarray([manifest.class_index(row[-1]) for row in case.boxes], dtype=np.int64)
    if case.tags is not None:
        tags = np.full(manifest.num_classes, TAG_UNKNOWN, dtype=np.int64)
        items = case.tags.items() if isinstance(case.tags, dict) else ((name, True) for name in case.tags)
        undeclared = []
        for name, present in items:
            try:
                tags[manifest.class_index(name)] = int(bool(present))
            except ValueError:
                undeclared.append(name)
        if undeclared:
            raise ValueError(f"case '{case.id}': tags name undeclared classes {undeclared} (declared: "
                             f"{list(manifest.labels.values())}) in {manifest.source}")
        out["tags"] = tags
    return out


def _roi(case: CaseSpec, image_meta: ImageMeta, notes: list[str]) -> np.ndarray | None:
    if case.valid is None:
        return None
    return _read_grid_label(case, "valid", case.valid, "valid", image_meta, notes) != 0


def _assemble(case: CaseSpec, dense: dict, sparse: dict, roi: np.ndarray | None) -> Annotations:
    ann = Annotations(**dense, **sparse, roi=roi, extra={"case_id": case.id, "split": case.split})
    if roi is not None and ann.labels is not None:
        ann.valid = roi if ann.valid is None else ann.valid & roi
    return ann


def load_case(manifest: Manifest, case: CaseSpec) -> tuple[np.ndarray, Annotations, ImageMeta]:
    """Read one case: image float32 ``(C, *S)``, its :class:`Annotations` and the image meta.

    Dense kinds: ``mask`` -> MASK (PARTIAL with ``classes``), ``masks_per_class`` -> MASK or PARTIAL,
    ``scribble`` -> SCRIBBLE. Pixels holding the manifest's ``ignore_value`` get ``valid == False`` (and label
    0); the ``valid`` file sets ``roi`` and restricts ``valid`` to it. Tags are -1 (unknown) unless given.

    Raises:
        ValueError: a file is missing or unreadable, a label file is not in the image grid, or a class is not
            declared. Use :func:`~everylabel.data.validate.validate_manifest` to list every problem at once.
    """
    image, meta = _read_case_image(manifest, case)
    notes: list[str] = []
    ann = _assemble(case, _dense(manifest, case, meta, notes), _sparse(manifest, case), _roi(case, meta, notes))
    return image, ann, meta


__all__ = ["SPLITS", "CaseSpec", "Manifest", "load_case", "load_dataset", "load_manifest"]
