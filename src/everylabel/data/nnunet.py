"""Read an nnU-Net v2 raw dataset folder as it is, as a :class:`~everylabel.data.manifest.Manifest`.

Layout (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 2021; dataset format of nnU-Net v2)::

    DatasetXXX_Name/
      dataset.json            channel_names, labels, numTraining, file_ending
      imagesTr/{case}_{XXXX}{file_ending}   one file per channel
      labelsTr/{case}{file_ending}
      imagesTs/{case}_{XXXX}{file_ending}   optional, no labels (split "test")

``labels`` maps names to integers (``{"background": 0, "spleen": 1}``). An ``"ignore"`` entry becomes the
manifest's ``ignore_value``. Region-based labels (a name mapped to a list of integers) are read as their base
integer labels; the regions are kept in ``manifest.extra["regions"]``. 2D natural images (``.png``, ``.bmp``,
``.jpg``, ``.tif`` without per-channel files) hold all RGB channels in one ``_0000`` file, as in nnU-Net's
``NaturalImage2DIO``. A missing label or channel file is kept in the case list so that
:func:`~everylabel.data.validate.validate_manifest` reports it (nnU-Net requires every training label).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from everylabel.data.manifest import CaseSpec, Manifest

_NATURAL_ENDINGS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
_KNOWN_KEYS = ("channel_names", "modality", "labels", "numTraining", "file_ending", "name", "description",
               "reference", "licence", "license", "release", "tensorImageSize", "overwrite_image_reader_writer",
               "regions_class_order", "dataset", "numTest", "dim", "converted_by")


def _case_ids(folder: Path, ending: str, channel_suffix: bool) -> dict[str, set[int]]:
    """Case id -> channel indices present in ``folder`` (labels: channel set {0})."""
    pattern = re.compile(r"^(.+)_(\d{4})$") if channel_suffix else re.compile(r"^(.+)$")
    out: dict[str, set[int]] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(ending) or path.name.startswith("."):
            continue
        match = pattern.match(path.name[: -len(ending)])
        if match:
            out.setdefault(match.group(1), set()).add(int(match.group(2)) if channel_suffix else 0)
    return out


def _parse_labels(raw: dict, where: str) -> tuple[dict[int, str], int | None, dict[str, list[int]] | None]:
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{where}: 'labels' must map names to integers, e.g. {{\"background\": 0, \"spleen\": 1}}")
    ignore = None
    names: dict[int, str] = {}
    regions: dict[str, list[int]] = {}
    for name, value in raw.items():
        if name == "ignore":
            if not isinstance(value, int):
                raise ValueError(f"{where}: the 'ignore' label must be one integer, got {value!r}")
            ignore = value
        elif isinstance(value, (list, tuple)):
            regions[name] = [int(v) for v in value]
        elif isinstance(value, int):
            names[value] = name
        else:
            raise ValueError(f"{where}: label {name!r} must be an integer or a list of integers, got {value!r}")
    if regions:
        for name, values in regions.items():
            if len(values) == 1:
                names.setdefault(values[0], name)
        for value in sorted({v for values in regions.values() for v in values} | {0}):
            names.setdefault(value, "background" if value == 0 else f"label_{value}")
    labels = dict(sorted(names.items()))
    if sorted(labels) != list(range(len(labels))):
        raise ValueError(f"{where}: labels must be consecutive integers 0..N-1 (0 = background), got {sorted(labels)}")
    return labels, ignore, regions or None


def load_nnunet_raw(folder: str | Path) -> Manifest:
    """Read an nnU-Net v2 raw dataset folder (``dataset.json``, ``imagesTr``, ``labelsTr``, ``imagesTs``).

    Args:
        folder: the ``DatasetXXX_Name`` folder.

    Returns:
        A manifest with training cases (split "train", labelled) and test cases (split "test", unlabelled).
        ``modality`` is "CT" when channel 0 is named CT. Case ids are nnU-Net's identifiers.

    Raises:
        ValueError: ``dataset.json`` is missing or malformed.
    """
    folder = Path(folder).absolute()
    where = str(folder / "dataset.json")
    if not (folder / "dataset.json").is_file():
        raise ValueError(f"{folder}: not an nnU-Net raw dataset (no dataset.json)")
    try:
        info = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: cannot parse ({err})") from err
    channel_names = info.get("channel_names", info.get("modality"))
    if not isinstance(channel_names, dict) or not channel_names:
        raise ValueError(f"{where}: 'channel_names' must map channel indices to names, e.g. {{\"0\": \"CT\"}}")
    channels = [str(channel_names[k]) for k in sorted(channel_names, key=int)]
    ending = info.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise ValueError(f"{where}: 'file_ending' must be a suffix such as \".nii.gz\" or \".png\", got {ending!r}")
    labels, ignore, regions = _parse_labels(info.get("labels"), where)

    def channel_files(sub: str, cid: str, present: set[int]) -> list[str]:
        one_file = ending.lower() in _NATURAL_ENDINGS and len(channels) > 1 and present == {0}
        n = 1 if one_file else len(channels)
        return [str(folder / sub / f"{cid}_{i:04d}{ending}") for i in range(n)]

    cases: list[CaseSpec] = []
    if isinstance(info.get("dataset"), dict):  # explicit file lists, paths relative to the dataset folder
        for cid, entry in info["dataset"].items():
            cases.append(CaseSpec(id=str(cid), images=[str(folder / p) for p in entry["images"]],
                                  mask=str(folder / entry["label"]) if entry.get("label") else None))
    else:
        train = _case_ids(folder / "imagesTr", ending, channel_suffix=True)
        train_labels = _case_ids(folder / "labelsTr", ending, channel_suffix=False)
        for cid in sorted(set(train) | set(train_labels)):
            cases.append(CaseSpec(id=cid, images=channel_files("imagesTr", cid, train.get(cid, set())),
                                  mask=str(folder / "labelsTr" / f"{cid}{ending}")))
        for cid, present in sorted(_case_ids(folder / "imagesTs", ending, channel_suffix=True).items()):
            if any(c.id == cid for c in cases):
                raise ValueError(f"{folder}: case id {cid!r} is in both imagesTr and imagesTs")
            cases.append(CaseSpec(id=cid, images=channel_files("imagesTs", cid, present), split="test"))
    if ending.lower() in (".tif", ".tiff"):  # nnU-Net's Tiff3DIO keeps spacing in a {case}.json sidecar
        for case in cases:
            sidecar = Path(case.mask or case.images[0]).with_name(f"{case.id}.json")
            if sidecar.is_file():
                case.spacing = [float(s) for s in json.loads(sidecar.read_text(encoding="utf-8"))["spacing"]]
    extra = {"file_ending": ending, "num_training": info.get("numTraining"), "format": "nnunet_v2"}
    if regions:
        extra["regions"] = regions
        extra["regions_class_order"] = info.get("regions_class_order")
    unknown = [k for k in info if k not in _KNOWN_KEYS]
    if unknown:
        extra["unknown_keys"] = unknown
    return Manifest(
        name=str(info.get("name", folder.name)),
        labels=labels,
        ignore_value=ignore,
        cases=cases,
        root=folder,
        modality="CT" if channels[0].strip().lower() == "ct" else (channels[0] if len(channels) == 1 else "other"),
        channel_names=channels,
        source=str(folder),
        description=str(info.get("description", "")),
        extra=extra,
    )


__all__ = ["load_nnunet_raw"]
