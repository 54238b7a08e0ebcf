from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import yaml
from PIL import Image

from everylabel.annotations.kinds import Kind
from everylabel.data.manifest import CaseSpec, Manifest, load_case, load_dataset, load_manifest
from everylabel.data.validate import validate_manifest

H, W = 8, 10


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def _write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def dataset(tmp_path):
    """A tiny 2D dataset under tmp_path/data and a manifest in tmp_path/manifests pointing to it."""
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(3):
        _png(data / "img" / f"{i}.png", rng.integers(0, 255, size=(H, W)))
    mask = np.zeros((H, W), np.uint8)
    mask[2:5, 3:7] = 255
    mask[0, 0] = 99  # ignore value
    _png(data / "lab" / "0.png", mask)
    fov = np.ones((H, W), np.uint8) * 255
    fov[:, 0] = 0
    _png(data / "fov" / "0.png", fov)
    tumour = np.zeros((H, W), np.uint8)
    tumour[1:3, 1:3] = 1
    organ = np.zeros((H, W), np.uint8)
    organ[1:6, 1:6] = 255
    _png(data / "pc" / "organ.png", organ)
    _png(data / "pc" / "tumour.png", tumour)
    scribble = np.full((H, W), 9, np.uint8)
    scribble[4, 2:8] = 1
    scribble[7, :] = 0
    _png(data / "scr" / "2.png", scribble)
    manifest = {
        "name": "toy",
        "root": "../data",
        "labels": {0: "background", 1: "organ", 2: "tumour"},
        "ignore_value": 99,
        "label_mapping": {255: 1},
        "channel_names": ["gray"],
        "cases": [
            {"id": "a", "images": ["img/0.png"], "mask": "lab/0.png", "valid": "fov/0.png"},
            {"id": "b", "images": "img/1.png", "masks_per_class": {"organ": "pc/organ.png", 2: "pc/tumour.png"},
             "split": "val", "tags": {"tumour": True, "organ": False}},
            {"id": "c", "images": ["img/2.png"], "scribble": "scr/2.png", "unlabelled_value": 9, "split": "test",
             "points": [[1, 2, "organ"], [3.5, 4, 0]], "boxes": [[0, 0, 4, 5, 2]], "tags": ["organ"]},
            {"id": "d", "images": ["img/2.png"], "split": "unlabelled"},
        ],
    }
    (tmp_path / "manifests").mkdir()
    return _write(tmp_path / "manifests" / "toy.yaml", manifest), manifest


def test_load_manifest_fields(dataset):
    path, _ = dataset
    m = load_manifest(path)
    assert m.name == "toy" and m.num_classes == 3 and m.ignore_value == 99
    assert m.root == path.parent.parent / "data" and m.source == str(path)
    assert [c.id for c in m.cases] == ["a", "b", "c", "d"]
    assert [c.id for c in m.split("train")] == ["a"] and [c.id for c in m.split("unlabelled")] == ["d"]
    assert m.cases[0].images == [str(m.root / "img" / "0.png")]
    assert m.cases[1].images == [str(m.root / "img" / "1.png")]
    assert m.label_mapping == {255: 1} and m.spatial_dims == 2
    assert validate_manifest(m) == []
    assert load_dataset(path).cases == m.cases


def test_load_case_mask_with_ignore_and_fov(dataset):
    m = load_manifest(dataset[0])
    image, ann, meta = load_case(m, m.cases[0])
    assert image.shape == (1, H, W) and image.dtype == np.float32 and meta.spacing == (1.0, 1.0)
    assert ann.dense_kind == Kind.MASK and ann.kinds == {Kind.MASK}
    assert ann.labels.dtype == np.int64 and ann.labels[3, 4] == 1 and ann.labels.sum() == 12
    assert not ann.roi[:, 0].any() and ann.roi[:, 1:].all()
    assert not ann.valid[0, 0] and not ann.valid[:, 0].any() and ann.valid[1:, 1:].all()
    assert ann.extra["case_id"] == "a"


def test_load_case_masks_per_class_tags_scribble_points_boxes(dataset):
    m = load_manifest(dataset[0])
    _, ann, _ = load_case(m, m.cases[1])
    assert ann.dense_kind == Kind.MASK and ann.valid is None
    assert ann.labels[1, 1] == 2 and ann.labels[4, 4] == 1 and ann.labels[7, 7] == 0  # tumour overwrites organ
    np.testing.assert_array_equal(ann.tags, [-1, 0, 1])

    _, ann, _ = load_case(m, m.cases[2])
    assert ann.dense_kind == Kind.SCRIBBLE
    assert ann.valid.sum() == 6 + W and ann.labels[4, 2] == 1 and ann.labels[7, 0] == 0
    np.testing.assert_array_equal(ann.points, [[1, 2], [3.5, 4]])
    np.testing.assert_array_equal(ann.point_labels, [1, 0])
    np.testing.assert_array_equal(ann.boxes, [[0, 0, 4, 5]])
    np.testing.assert_array_equal(ann.box_labels, [2])
    np.testing.assert_array_equal(ann.tags, [-1, 1, -1])
    assert ann.kinds == {Kind.SCRIBBLE, Kind.POINTS, Kind.BOXES, Kind.TAGS}

    _, ann, _ = load_case(m, m.cases[3])
    assert ann.is_unlabelled


def test_partial_masks(dataset):
    path, raw = dataset
    raw["cases"] = [
        {"id": "explicit", "images": ["img/0.png"], "mask": "pc/tumour.png", "classes": ["tumour"],
         "label_mapping": {1: 2}},
        {"id": "implicit", "images": ["img/1.png"], "masks_per_class": {"tumour": "pc/tumour.png"}},
    ]
    m = load_manifest(_write(path, raw))
    _, ann, _ = load_case(m, m.cases[0])
    assert ann.dense_kind == Kind.PARTIAL and ann.classes == (0, 2) and ann.labels.max() == 2
    _, ann, _ = load_case(m, m.cases[1])
    assert ann.dense_kind == Kind.PARTIAL and ann.classes == (0, 2)
    assert validate_manifest(m) == []


def test_unknown_keys_suggest_nearest(dataset):
    path, raw = dataset
    raw["lables"] = raw.pop("labels")
    raw["cases"][0]["imgaes"] = raw["cases"][0].pop("images")
    raw["cases"][1]["colour"] = 1
    with pytest.raises(ValueError) as err:
        load_manifest(_write(path, raw))
    text = str(err.value)
    assert f"{path}: unknown key 'lables'; did you mean 'labels'?" in text
    assert "case 'a': unknown key 'imgaes'; did you mean 'images'?" in text
    assert "case 'b': unknown key 'colour'; valid keys: id, images" in text


def test_manifest_structure_errors(dataset):
    path, raw = dataset
    raw["labels"] = {0: "background", 2: "tumour"}
    raw["cases"][1]["id"] = "a"
    raw["cases"][2]["split"] = "tset"
    raw["cases"][3]["mask"] = "lab/0.png"
    raw["cases"][3]["scribble"] = "scr/2.png"
    with pytest.raises(ValueError) as err:
        load_manifest(_write(path, raw))
    text = str(err.value)
    assert "class indices must be 0..N-1 without gaps" in text
    assert "case id 'a' appears more than once" in text
    assert "unknown split 'tset'" in text and "did you mean 'test'?" in text
    assert "case 'd': a case has one dense annotation, got mask, scribble" in text
    with pytest.raises(ValueError, match="manifest file not found"):
        load_manifest(path.parent / "missing.yaml")


def test_json_manifest_with_string_keys(tmp_path):
    _png(tmp_path / "x.png", np.zeros((4, 4)))
    _png(tmp_path / "y.png", np.full((4, 4), 3))
    (tmp_path / "m.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "fg"}, "label_mapping": {"3": "1"},
        "cases": [{"id": "x", "images": ["x.png"], "mask": "y.png"}]}))
    m = load_manifest(tmp_path / "m.json")
    assert m.name == "m" and m.labels == {0: "background", 1: "fg"} and m.label_mapping == {3: 1}
    assert load_case(m, m.cases[0])[1].labels.min() == 1


def test_spacing_override(dataset):
    path, raw = dataset
    raw["spacing"] = [0.5, 0.25]
    raw["cases"][1]["spacing"] = [2, 3]
    raw["cases"][2]["spacing"] = [1, 2, 3]
    m = load_manifest(_write(path, raw))
    assert load_case(m, m.cases[0])[2].spacing == (0.5, 0.25)
    assert load_case(m, m.cases[1])[2].spacing == (2.0, 3.0)
    with pytest.raises(ValueError, match=r"case 'c': spacing override \(1.0, 2.0, 3.0\) has 3 values"):
        load_case(m, m.cases[2])


def test_scribble_needs_an_unlabelled_value(dataset):
    path, raw = dataset
    raw.pop("ignore_value")
    del raw["cases"][2]["unlabelled_value"]
    m = load_manifest(_write(path, raw))
    with pytest.raises(ValueError, match="case 'c': scribble .* needs 'unlabelled_value'"):
        load_case(m, m.cases[2])


def test_validate_lists_every_problem(dataset, tmp_path):
    path, raw = dataset
    data = tmp_path / "data"
    _png(data / "lab" / "bad.png", np.full((H, W), 7))
    _png(data / "lab" / "small.png", np.zeros((4, 4)))
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(data / "img" / "rgb.png")
    nib.save(nib.Nifti1Image(np.zeros((H, W, 3), np.float32), np.eye(4)), str(data / "img" / "vol.nii.gz"))
    np.save(data / "img" / "nan.npy", np.full((H, W), np.nan))
    (data / "lab" / "corrupt.png").write_bytes(b"\x89PNG garbage")
    raw["cases"] = [
        {"id": "missing", "images": ["img/0.png"], "mask": "lab/nope.png"},
        {"id": "out_of_range", "images": ["img/0.png"], "mask": "lab/bad.png"},
        {"id": "bad_box", "images": ["img/1.png"], "boxes": [[0, 0, 20, 5, 1], [3, 3, 2, 5, 1]]},
        {"id": "bad_point", "images": ["img/1.png"], "points": [[-1, 2, 1]]},
        {"id": "bad_tag", "images": ["img/1.png"], "tags": ["liver"]},
        {"id": "bad_shape", "images": ["img/1.png"], "mask": "lab/small.png"},
        {"id": "rgb", "images": ["img/rgb.png"]},
        {"id": "volume", "images": ["img/vol.nii.gz"]},
        {"id": "no_image", "images": ["img/nope.png"], "classes": ["liver"], "mask": "lab/0.png"},
        {"id": "nan", "images": ["img/nan.npy"]},
        {"id": "corrupt", "images": ["img/0.png"], "mask": "lab/corrupt.png"},
    ]
    m = load_manifest(_write(path, raw))
    problems = validate_manifest(m)
    text = "\n".join(problems)
    assert "case 'missing': mask file not found" in text and "nope.png" in text
    assert "case 'out_of_range' (" in text and "bad.png): label values [7] outside the declared classes 0..2" in text
    assert "case 'bad_box' (in " in text and "box 0 [0.0, 0.0, 20.0, 5.0] lies outside the image" in text
    assert "box 1 [3.0, 3.0, 2.0, 5.0] has min >= max" in text
    assert "case 'bad_point' (in " in text and "points outside the image" in text
    assert "case 'bad_tag': tags name undeclared classes ['liver']" in text
    assert "case 'bad_shape': mask" in text and "small.png has shape (4, 4), the image" in text
    assert "case 'rgb': image" in text and "has 3 channel(s), the dataset declares 1 (gray)" in text
    assert "cases differ in dimensionality: 2D in 8 case(s)" in text and "3D in 1 case(s), e.g. case 'volume'" in text
    assert "cases differ in channel count" in text
    assert "case 'no_image': image channel 0 file not found" in text
    assert "case 'no_image': class 'liver' is not declared" in text
    assert "case 'nan': " in text and "nan.npy: image holds 80 NaN/Inf values" in text
    assert "case 'corrupt': " in text and "corrupt.png: cannot read png file" in text
    shallow = validate_manifest(m, deep=False)
    assert any("lab/nope.png" in p for p in shallow) and not any("outside" in p for p in shallow)


def test_validate_nifti_spacing_mismatch_and_empty(tmp_path):
    img = np.zeros((4, 5, 6), np.float32)
    nib.save(nib.Nifti1Image(img, np.diag([1.0, 1.0, 2.0, 1.0])), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(img.astype(np.uint8), np.diag([1.0, 1.0, 3.0, 1.0])), str(tmp_path / "lab.nii.gz"))
    m = Manifest(name="t", labels={0: "background", 1: "fg"}, source="t.yaml",
                 cases=[CaseSpec(id="x", images=[str(tmp_path / "img.nii.gz")], mask=str(tmp_path / "lab.nii.gz"))])
    problems = validate_manifest(m)
    assert len(problems) == 1 and "case 'x': mask" in problems[0]
    assert "spacing (1.0, 1.0, 3.0), the image" in problems[0] and "(1.0, 1.0, 2.0)" in problems[0]
    assert validate_manifest(Manifest(name="e", labels={0: "bg"}, source="e.yaml")) == [
        "e.yaml: the dataset has no cases"]


def test_load_dataset_rejects_other_paths(tmp_path):
    with pytest.raises(ValueError, match="give a manifest file .* or an nnU-Net v2 raw folder"):
        load_dataset(tmp_path)


def test_bad_values_are_reported(dataset):
    path, raw = dataset
    raw["spacing"] = 0.5
    raw["label_mapping"] = {255: "vessel"}
    raw["cases"][0]["label_threshold"] = "high"
    with pytest.raises(ValueError) as err:
        load_manifest(_write(path, raw))
    text = str(err.value)
    assert "spacing must be a list of numbers, got 0.5" in text
    assert "label_mapping entry 255: 'vessel' must map an integer to an integer" in text
    assert "case 'a': label_threshold must be a number, got 'high'" in text
