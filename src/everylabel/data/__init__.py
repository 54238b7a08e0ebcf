"""Readers and writers (NIfTI, PNG/TIF/GIF/JPG, HDF5), dataset manifests and nnU-Net raw folders."""

from __future__ import annotations

from everylabel.data.io import (
    IMAGE_SUFFIXES,
    ImageMeta,
    case_id_from_filename,
    map_labels,
    read_image,
    read_label,
    read_label_raw,
    write_image,
    write_label,
)
from everylabel.data.manifest import (
    SPLITS,
    CaseSpec,
    Manifest,
    load_case,
    load_dataset,
    load_manifest,
)
from everylabel.data.nnunet import load_nnunet_raw
from everylabel.data.validate import validate_manifest

__all__ = [
    "IMAGE_SUFFIXES",
    "SPLITS",
    "CaseSpec",
    "ImageMeta",
    "Manifest",
    "case_id_from_filename",
    "load_case",
    "load_dataset",
    "load_manifest",
    "load_nnunet_raw",
    "map_labels",
    "read_image",
    "read_label",
    "read_label_raw",
    "validate_manifest",
    "write_image",
    "write_label",
]
