from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from everylabel.annotations.kinds import Kind
from everylabel.data.manifest import load_case, load_dataset
from everylabel.data.nnunet import load_nnunet_raw
from everylabel.data.validate import validate_manifest

SHAPE = (6, 5, 4)


def _dataset_json(folder, **entries):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(entries))


def _nii(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))


@pytest.fixture
def ct_dataset(tmp_path):
    """Two-channel 3D NIfTI dataset: 2 training cases, 1 test case, an ignore label."""
    folder = tmp_path / "Dataset001_Toy"
    _dataset_json(folder, channel_names={"0": "CT", "1": "PET"},
                  labels={"background": 0, "spleen": 1, "liver": 2, "ignore": 3},
                  numTraining=2, file_ending=".nii.gz", name="Toy")
    rng = np.random.default_rng(0)
    for cid in ("toy_001", "toy_002"):
        for ch in range(2):
            _nii(folder / "imagesTr" / f"{cid}_{ch:04d}.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
        lab = rng.integers(0, 3, size=SHAPE).astype(np.uint8)
        lab[0, 0, 0] = 3
        _nii(folder / "labelsTr" / f"{cid}.nii.gz", lab)
    for ch in range(2):
        _nii(folder / "imagesTs" / f"toy_101_{ch:04d}.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
    return folder


def test_nifti_dataset(ct_dataset):
    m = load_dataset(ct_dataset)
    assert m.name == "Toy" and m.modality == "CT" and m.channel_names == ["CT", "PET"]
    assert m.labels == {0: "background", 1: "spleen", 2: "liver"} and m.ignore_value == 3
    assert [(c.id, c.split) for c in m.cases] == [("toy_001", "train"), ("toy_002", "train"), ("toy_101", "test")]
    assert m.cases[0].images[1].endswith("imagesTr/toy_001_0001.nii.gz")
    assert m.cases[2].mask is None
    assert validate_manifest(m) == []
    image, ann, meta = load_case(m, m.cases[0])
    assert image.shape == (2, *SHAPE) and meta.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert ann.dense_kind == Kind.MASK and not ann.valid[0, 0, 0] and ann.valid.sum() == np.prod(SHAPE) - 1
    assert load_case(m, m.cases[2])[1].is_unlabelled
    assert load_dataset(ct_dataset / "dataset.json").cases == m.cases


def test_missing_label_channel_and_count_are_reported(ct_dataset):
    (ct_dataset / "labelsTr" / "toy_002.nii.gz").unlink()
    (ct_dataset / "imagesTr" / "toy_001_0001.nii.gz").unlink()
    _nii(ct_dataset / "labelsTr" / "toy_003.nii.gz", np.zeros(SHAPE, np.uint8))
    problems = validate_manifest(load_nnunet_raw(ct_dataset))
    text = "\n".join(problems)
    assert "case 'toy_002': mask file not found" in text and "labelsTr/toy_002.nii.gz" in text
    assert "case 'toy_001': image channel 1 file not found" in text and "toy_001_0001.nii.gz" in text
    assert "case 'toy_003': image channel 0 file not found" in text
    assert "numTraining is 2 but 3 training cases were found" in text


def test_rgb_png_dataset(tmp_path):
    folder = tmp_path / "Dataset002_Rgb"
    _dataset_json(folder, channel_names={"0": "R", "1": "G", "2": "B"}, labels={"background": 0, "vessel": 1},
                  numTraining=2, file_ending=".png")
    (folder / "imagesTr").mkdir()
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(1)
    for cid in ("drive_21", "drive_22"):
        Image.fromarray(rng.integers(0, 255, size=(7, 9, 3), dtype=np.uint8)).save(
            folder / "imagesTr" / f"{cid}_0000.png")
        Image.fromarray(rng.integers(0, 2, size=(7, 9), dtype=np.uint8)).save(folder / "labelsTr" / f"{cid}.png")
    m = load_nnunet_raw(folder)
    assert m.modality == "other" and [len(c.images) for c in m.cases] == [1, 1]
    assert validate_manifest(m) == []
    image, ann, _ = load_case(m, m.cases[1])
    assert image.shape == (3, 7, 9) and ann.labels.shape == (7, 9)
    assert m.spatial_dims == 2


def test_region_labels_and_bad_dataset_json(tmp_path):
    folder = tmp_path / "Dataset003_Brats"
    _dataset_json(folder, channel_names={"0": "T1", "1": "T2"}, file_ending=".nii.gz", numTraining=0,
                  labels={"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
                  regions_class_order=[1, 2, 3])
    m = load_nnunet_raw(folder)
    assert m.labels == {0: "background", 1: "label_1", 2: "label_2", 3: "enhancing tumor"}
    assert m.extra["regions"]["tumor core"] == [2, 3]
    assert validate_manifest(m) == [f"{folder}: the dataset has no cases"]

    _dataset_json(folder, channel_names={"0": "T1"}, file_ending="nii.gz", labels={"background": 0})
    with pytest.raises(ValueError, match="'file_ending' must be a suffix"):
        load_nnunet_raw(folder)
    _dataset_json(folder, channel_names={"0": "T1"}, file_ending=".nii.gz", labels={"background": 0, "a": 2})
    with pytest.raises(ValueError, match=r"labels must be consecutive integers 0..N-1 .* got \[0, 2\]"):
        load_nnunet_raw(folder)
    with pytest.raises(ValueError, match="no dataset.json"):
        load_nnunet_raw(tmp_path)
