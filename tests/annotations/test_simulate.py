"""Simulated annotations: boxes, points, tags, scribbles, partial, sparse and noisy masks, and whole manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import ndimage
from skimage.measure import label as cc_label
from skimage.measure import regionprops

from everylabel.annotations import (
    SIMULATORS,
    Kind,
    elastic_control_points,
    elastic_displacement,
    merge_annotations,
    replay,
    simulate,
    simulate_manifest,
    warp_labels,
)
from everylabel.data.manifest import load_case, load_manifest
from everylabel.data.validate import validate_manifest


def _labels_2d() -> np.ndarray:
    """Three objects of class 1 (one C-shaped), one of class 2, background elsewhere."""
    lab = np.zeros((48, 64), dtype=np.int64)
    lab[5:20, 5:30] = 1
    lab[30:44, 8:26] = 1
    lab[34:40, 12:26] = 0  # C shape: the centroid lies outside
    lab[8:40, 40:58] = 2
    lab[2, 60] = 1  # a one-voxel object
    return lab


def _labels_3d() -> np.ndarray:
    z, y, x = np.ogrid[:24, :28, :32]
    lab = np.zeros((24, 28, 32), dtype=np.int64)
    lab[((z - 12) ** 2 + (y - 12) ** 2 / 2 + (x - 10) ** 2) < 40] = 1  # ellipsoid: per-slice boxes are not tight
    lab[4:10, 18:25, 20:29] = 2
    return lab


ALL_PARAMS = {"partial": {"drop": [2]}}


# ----------------------------------------------------------------------------------------------------- boxes


@pytest.mark.parametrize("make", [_labels_2d, _labels_3d])
def test_tight_boxes_equal_component_bounding_boxes(make):
    lab = make()
    ann = simulate(lab, "boxes", 0)
    expected = []
    for cls in (1, 2):
        for region in regionprops(cc_label(lab == cls, connectivity=lab.ndim)):
            expected.append((cls, tuple(float(v) for v in region.bbox)))
    got = [(int(c), tuple(b.tolist())) for c, b in zip(ann.box_labels, ann.boxes)]
    assert sorted(got) == sorted(expected)
    for cls, box in zip(ann.box_labels, ann.boxes):  # IoU with the component's own bounding box is 1
        lo, hi = box[: lab.ndim].astype(int), box[lab.ndim:].astype(int)
        inside = lab[tuple(slice(a, b) for a, b in zip(lo, hi))] == cls
        assert inside.any()
        assert all(inside.any(axis=tuple(i for i in range(lab.ndim) if i != a))[[0, -1]].all() for a in range(lab.ndim))
    assert ann.kinds == {Kind.BOXES}
    assert ann.validate(lab.shape, 3) == []


def test_connectivity_changes_components():
    lab = np.zeros((10, 10), dtype=np.int64)
    lab[2, 2] = lab[3, 3] = 1  # diagonal neighbours
    assert len(simulate(lab, "boxes", connectivity=2).boxes) == 1
    assert len(simulate(lab, "boxes", connectivity=1).boxes) == 2
    with pytest.raises(ValueError, match="connectivity must be 1..2"):
        simulate(lab, "boxes", connectivity=3)


def test_loose_boxes_contain_tight_boxes_and_stay_in_image():
    lab = _labels_2d()
    tight = simulate(lab, "boxes").boxes
    for seed in range(5):
        loose = simulate(lab, "boxes", seed, margin=3, margin_fraction=0.1, jitter=3).boxes
        assert np.all(loose[:, :2] <= tight[:, :2]) and np.all(loose[:, 2:] >= tight[:, 2:])
        assert np.all(loose[:, :2] >= 0) and np.all(loose[:, 2:] <= np.asarray(lab.shape))
    grown = simulate(lab, "boxes", margin=2).boxes
    interior = np.all(tight[:, :2] >= 2, axis=1) & np.all(tight[:, 2:] <= np.asarray(lab.shape) - 2, axis=1)
    np.testing.assert_array_equal(grown[interior], tight[interior] + [-2, -2, 2, 2])
    jittered = [simulate(lab, "boxes", s, jitter=4).boxes for s in range(3)]
    assert not np.array_equal(jittered[0], jittered[1])
    with pytest.raises(ValueError, match="margin must be >= 0"):
        simulate(lab, "boxes", margin=-1)


def test_one_box_per_class():
    ann = simulate(_labels_2d(), "boxes", per_component=False)
    assert ann.box_labels.tolist() == [1, 2]
    np.testing.assert_array_equal(ann.boxes[0], [2, 5, 44, 61])


def test_slice_boxes_carry_the_3d_box_in_plane_extent():
    lab = _labels_3d()
    ann = simulate(lab, "slice_boxes", axis=0)
    obj = ann.box_labels == 1
    boxes = ann.boxes[obj]
    zs = np.flatnonzero((lab == 1).any(axis=(1, 2)))
    assert boxes[:, 0].tolist() == zs.tolist() and np.all(boxes[:, 3] - boxes[:, 0] == 1)
    box3d = regionprops((lab == 1).astype(int))[0].bbox
    np.testing.assert_array_equal(boxes[:, [1, 2, 4, 5]], np.tile([box3d[1], box3d[2], box3d[4], box3d[5]],
                                                                   (len(boxes), 1)))
    tight_per_slice = [regionprops((lab[z] == 1).astype(int))[0].bbox for z in zs]
    assert any(t != (box3d[1], box3d[2], box3d[4], box3d[5]) for t in tight_per_slice)  # not tight on every slice
    assert ann.validate(lab.shape, 3) == []
    loose = simulate(lab, "slice_boxes", 1, axis=2, margin=2)
    assert np.all(loose.boxes[:, 5] - loose.boxes[:, 2] == 1)
    with pytest.raises(ValueError, match="3D label map"):
        simulate(_labels_2d(), "slice_boxes")


# ------------------------------------------------------------------------------------------------- tags, points


def test_tags():
    lab = _labels_2d()
    assert simulate(lab, "tags").tags.tolist() == [1, 1, 1]
    assert simulate(np.where(lab == 2, 0, lab), "tags", num_classes=4).tags.tolist() == [1, 1, 0, 0]
    assert simulate(np.ones((4, 4), dtype=int), "tags").tags.tolist() == [0, 1]  # no background voxel
    with pytest.raises(ValueError, match="num_classes=2 but the label map holds class 2"):
        simulate(lab, "tags", num_classes=2)


@pytest.mark.parametrize("placement", ["centroid", "interior", "random"])
def test_points_lie_inside_their_objects(placement):
    lab = _labels_2d()
    ann = simulate(lab, "points", 3, points_per_object=3, background_points=5, placement=placement,
                   background_distance=2)
    idx = tuple(ann.points.astype(int).T)
    np.testing.assert_array_equal(lab[idx], ann.point_labels)
    assert (ann.point_labels == 0).sum() == 5
    background = ann.points[ann.point_labels == 0].astype(int)
    assert ndimage.distance_transform_edt(lab == 0)[tuple(background.T)].min() >= 2
    assert len(np.unique(ann.points, axis=0)) == len(ann.points)
    # 4 objects: 3 points each except the one-voxel object
    assert (ann.point_labels > 0).sum() == 3 * 3 + 1
    assert ann.validate(lab.shape, 3) == []


def test_centroid_outside_a_c_shaped_object_is_snapped_inside():
    lab = np.zeros((20, 20), dtype=np.int64)
    lab[2:18, 2:18] = 1
    lab[6:14, 6:18] = 0  # C shape: its centroid is in the notch
    ann = simulate(lab, "points", placement="centroid")
    assert lab[tuple(ann.points[0].astype(int))] == 1
    voxels = np.argwhere(lab == 1)
    distances = np.linalg.norm(voxels - voxels.mean(0), axis=1)
    assert np.isclose(np.linalg.norm(ann.points[0] - voxels.mean(0)), distances.min())


def test_points_keep_distance_from_boundary():
    lab = np.zeros((30, 30), dtype=np.int64)
    lab[5:25, 5:25] = 1
    ann = simulate(lab, "points", 0, placement="random", points_per_object=10, boundary_distance=4)
    assert np.all((ann.points >= 8) & (ann.points <= 21))


# ------------------------------------------------------------------------------------------------- scribbles


def test_scribbles_lie_inside_their_objects_and_background():
    lab = _labels_2d()
    ann = simulate(lab, "scribbles", 0, brush_radius=1.5, background_margin=3)
    assert ann.dense_kind == Kind.SCRIBBLE and ann.valid.any()
    np.testing.assert_array_equal(ann.labels[ann.valid], lab[ann.valid])
    assert np.all(ann.labels[~ann.valid] == 0)
    components = cc_label(lab > 0, connectivity=2)
    for index in range(1, components.max() + 1):  # every object is scribbled
        assert (ann.valid & (components == index)).any()
    background = ann.valid & (ann.labels == 0)
    assert background.any()
    assert ndimage.distance_transform_edt(lab == 0)[background].min() > 3
    assert ann.validate(lab.shape, 3) == []


def test_scribble_fraction_keeps_contiguous_pieces():
    lab = np.zeros((40, 60), dtype=np.int64)
    lab[15:24, 5:55] = 1  # a bar: its skeleton is a line
    full = simulate(lab, "scribbles", background=False)
    part = simulate(lab, "scribbles", 4, fraction=0.3, background=False)
    n_full, n_part = full.valid.sum(), part.valid.sum()
    assert abs(n_part - 0.3 * n_full) <= 1
    assert cc_label(part.valid, connectivity=2).max() == 1  # one contiguous piece
    assert np.all(part.valid <= full.valid)
    two = simulate(lab, "scribbles", 4, fraction=0.3, pieces=2, background=False)
    assert cc_label(two.valid, connectivity=2).max() <= 2
    wide = simulate(lab, "scribbles", 4, fraction=0.3, brush_radius=2, background=False)
    assert wide.valid.sum() > n_part and np.all(lab[wide.valid] == 1)
    with pytest.raises(ValueError, match="fraction and background_fraction must be in"):
        simulate(lab, "scribbles", fraction=0)


def test_scribbles_3d():
    lab = _labels_3d()
    for params in ({}, {"slice_axis": 0, "fraction": 0.5, "brush_radius": 1}):
        ann = simulate(lab, "scribbles", 0, **params)
        np.testing.assert_array_equal(ann.labels[ann.valid], lab[ann.valid])
        assert set(np.unique(ann.labels[ann.valid]).tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="slice_axis"):
        simulate(_labels_2d(), "scribbles", slice_axis=0)


# ----------------------------------------------------------------------------------------- partial and sparse


def test_partial_merges_dropped_classes_into_background():
    lab = _labels_2d()
    ann = simulate(lab, "partial", drop=[2])
    assert ann.dense_kind == Kind.PARTIAL and ann.classes == (0, 1)
    np.testing.assert_array_equal(ann.labels, np.where(lab == 2, 0, lab))
    assert ann.extra["simulation"]["result"]["dropped"] == [2]
    random = simulate(lab, "partial", 0, drop_count=1, num_classes=4)
    dropped = random.extra["simulation"]["result"]["dropped"]
    assert len(dropped) == 1 and 0 in random.classes and set(random.classes) | set(dropped) == {0, 1, 2, 3}
    always = simulate(lab, "partial", 0, drop_probability=1.0)
    assert len(always.classes) == 2  # keep_at_least_one
    nothing = simulate(lab, "partial", drop=[])
    assert nothing.dense_kind == Kind.MASK and nothing.classes is None
    with pytest.raises(ValueError, match="exactly one of drop, drop_count, drop_probability"):
        simulate(lab, "partial", drop=[1], drop_count=1)
    with pytest.raises(ValueError, match=r"not foreground classes 1..2"):
        simulate(lab, "partial", drop=[0])


def test_sparse_annotates_planes_only():
    lab = _labels_2d()
    ann = simulate(lab, "sparse", axes=0, num_slices=4)
    rows = ann.extra["simulation"]["result"]["slices"][0]
    assert rows == [6, 18, 30, 42]
    assert ann.dense_kind == Kind.MASK
    np.testing.assert_array_equal(np.flatnonzero(ann.valid.all(axis=1)), rows)
    assert ann.valid.sum() == 4 * lab.shape[1]
    np.testing.assert_array_equal(ann.labels[ann.valid], lab[ann.valid])
    assert np.all(ann.labels[~ann.valid] == 0)
    vol = _labels_3d()
    multi = simulate(vol, "sparse", 2, axes=[0, 2], num_slices=3, placement="random", extent="foreground")
    chosen = multi.extra["simulation"]["result"]["slices"]
    assert set(chosen) == {0, 2} and all(len(v) == 3 for v in chosen.values())
    expected = np.zeros(vol.shape, dtype=bool)
    expected[chosen[0]] = True
    expected[:, :, chosen[2]] = True
    np.testing.assert_array_equal(multi.valid, expected)
    assert all(vol[i].any() for i in chosen[0])  # within the foreground's extent
    explicit = simulate(vol, "sparse", slices={1: [3, 7]})
    assert explicit.valid[:, [3, 7]].all() and explicit.valid.sum() == 2 * 24 * 32
    with pytest.raises(ValueError, match="axes must be distinct axis indices 0..1"):
        simulate(lab, "sparse", axes=2)


# ------------------------------------------------------------------------------------------------------ noise


def test_elastic_field_matches_zoom_of_the_control_grid():
    control = elastic_control_points(2, 3.0, 0)
    field = elastic_displacement((41, 50), control)
    zoomed = np.stack([ndimage.zoom(control[a], (41 / 3, 50 / 3), order=3, mode="mirror", grid_mode=False)
                       for a in range(2)])
    np.testing.assert_allclose(field, zoomed, atol=1e-9)
    np.testing.assert_allclose(field[:, 20, 0], control[:, 1, 0])  # control points sit on the field


def test_elastic_warp_displacement_has_the_documented_magnitude():
    shape, sigma = (61, 61), 4.0
    index = np.arange(np.prod(shape)).reshape(shape)
    grid = np.indices(shape)
    squares, lengths = [], []
    for seed in range(40):
        control = elastic_control_points(2, sigma, seed)
        source = np.stack(np.unravel_index(warp_labels(index, control), shape))  # warped coordinate grid
        moved = (source - grid)[:, 15:-15, 15:-15]  # away from clamping at the border
        field = elastic_displacement(shape, control)[:, 15:-15, 15:-15]
        assert np.abs(moved - field).max() <= 0.5 + 1e-9  # nearest-neighbour rounding only
        squares.append((field ** 2).mean())
        lengths.append(np.linalg.norm(moved, axis=0).mean())
    assert np.sqrt(np.mean(squares)) == pytest.approx(0.80 * sigma, rel=0.25)  # per-axis RMS (docstring)
    assert np.mean(lengths) == pytest.approx(sigma, rel=0.3)  # mean displacement length about sigma in 2D
    lab = _labels_2d()
    ann = simulate(lab, "elastic", 0, sigma=3.0)
    assert ann.dense_kind == Kind.MASK and ann.labels.shape == lab.shape
    assert 0.5 < (ann.labels == 2).sum() / (lab == 2).sum() < 1.5 and not np.array_equal(ann.labels, lab)
    np.testing.assert_array_equal(simulate(lab, "elastic", 0, sigma=0.0).labels, lab)


def test_elastic_3d_smoke():
    vol = _labels_3d()
    ann = simulate(vol, "elastic", 0, sigma=2.0)
    assert ann.labels.shape == vol.shape and set(np.unique(ann.labels).tolist()) <= {0, 1, 2}
    assert abs(int((ann.labels == 1).sum()) - int((vol == 1).sum())) < 0.5 * (vol == 1).sum()


@pytest.mark.parametrize("distance,axis", [(3, 0), (-4, 1), (2, 2)])
def test_shift_moves_the_centroid_by_n(distance, axis):
    vol = _labels_3d()
    ann = simulate(vol, "shift", distance=distance, axis=axis)
    for cls in (1, 2):
        before = np.argwhere(vol == cls).mean(0)
        after = np.argwhere(ann.labels == cls).mean(0)
        expected = before.copy()
        expected[axis] += distance
        np.testing.assert_allclose(after, expected)
    random = simulate(vol, "shift", 5, distance=2, axis=None, random_sign=True)
    result = random.extra["simulation"]["result"]
    assert result["axis"] in (0, 1, 2) and abs(result["distance"]) == 2


def test_erosion_and_dilation_change_the_area_in_the_right_direction():
    lab = np.zeros((40, 40), dtype=np.int64)
    lab[5:25, 5:35] = 1
    lab[30:36, 10:20] = 2
    eroded = simulate(lab, "erode", radius=1).labels
    dilated = simulate(lab, "dilate", radius=1).labels
    for cls in (1, 2):
        assert (eroded == cls).sum() < (lab == cls).sum() < (dilated == cls).sum()
    assert (eroded == 1).sum() == 18 * 28  # a rectangle loses one voxel on each side
    assert np.all(eroded[lab == 0] == 0) and np.all(dilated[lab > 0] == lab[lab > 0])
    only = simulate(lab, "erode", radius=2, classes=[2]).labels
    np.testing.assert_array_equal(only == 1, lab == 1)
    vol = _labels_3d()
    assert (simulate(vol, "dilate", radius=1.5).labels > 0).sum() > (vol > 0).sum()


def test_crop_removes_the_part_beyond_a_plane():
    lab = np.zeros((40, 40), dtype=np.int64)
    lab[10:30, 5:15] = 1
    ann = simulate(lab, "crop", fraction=0.25, axis=0, side="max")
    np.testing.assert_array_equal(np.flatnonzero((ann.labels == 1).any(axis=1)), np.arange(10, 25))
    low = simulate(lab, "crop", fraction=0.5, axis=1, side="min")
    np.testing.assert_array_equal(np.flatnonzero((low.labels == 1).any(axis=0)), np.arange(10, 15))
    assert simulate(lab, "crop", 0, side="random").extra["simulation"]["result"]["sides"][0] in ("min", "max")


# --------------------------------------------------------------------------------- determinism and dispatcher


def _same(a, b) -> bool:
    fields = ("labels", "valid", "boxes", "box_labels", "points", "point_labels", "tags", "classes")
    return all(np.array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f))) if getattr(a, f) is not None
               else getattr(b, f) is None for f in fields)


@pytest.mark.parametrize("kind", sorted(set(SIMULATORS) - {"slice_boxes"}))
def test_every_simulator_is_deterministic_recorded_and_replayable(kind):
    lab = _labels_2d()
    params = dict(ALL_PARAMS.get(kind, {}))
    rng_params = {"boxes": {"jitter": 2}, "points": {"placement": "random", "points_per_object": 2},
                  "scribbles": {"fraction": 0.4}, "partial": {"drop_count": 1}, "sparse": {"placement": "random"},
                  "crop": {"side": "random"}, "shift": {"axis": None}}
    params = rng_params.get(kind, params)
    a = simulate(lab, kind, np.random.default_rng(7), **params)
    b = simulate(lab, kind, 7, **params)
    assert _same(a, b)
    record = json.loads(json.dumps(a.extra["simulation"]))  # JSON-safe, and replay works from JSON
    assert record["kind"] == kind and set(params) <= set(record["params"])
    assert _same(replay(lab, record), a)
    assert _same(replay(lab, b.extra["simulation"]), a)


def test_3d_smoke_every_simulator():
    vol = _labels_3d()
    for kind in SIMULATORS:
        ann = simulate(vol, kind, 0, **ALL_PARAMS.get(kind, {}))
        assert ann.validate(vol.shape, 3) == [], kind
        assert _same(replay(vol, ann.extra["simulation"]), ann)


def test_dispatcher_errors_name_the_valid_choices():
    lab = _labels_2d()
    with pytest.raises(ValueError, match=r"unknown simulated annotation kind 'scribble' \(did you mean 'scribbles'\?\)"
                                         r"; valid kinds: mask, unlabelled, boxes"):
        simulate(lab, "scribble")
    with pytest.raises(ValueError, match="simulator 'boxes' has no parameter 'margins'; did you mean 'margin'"):
        simulate(lab, "boxes", margins=2)
    with pytest.raises(ValueError, match="expected a 2D or 3D label map"):
        simulate(np.zeros(5, dtype=int), "tags")
    with pytest.raises(ValueError, match="rng must be"):
        simulate(lab, "tags", "seed")


def test_merge_annotations():
    lab = _labels_2d()
    merged = merge_annotations([simulate(lab, "boxes"), simulate(lab, "tags"), simulate(lab, "scribbles", 0)])
    assert merged.kinds == {Kind.BOXES, Kind.TAGS, Kind.SCRIBBLE}
    assert [r["kind"] for r in merged.extra["simulation"]] == ["boxes", "tags", "scribbles"]
    with pytest.raises(ValueError, match="cannot combine 'scribbles' and 'partial'"):
        merge_annotations([simulate(lab, "scribbles", 0), simulate(lab, "partial", drop=[1])])


# --------------------------------------------------------------------------------------------------- manifests


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


@pytest.fixture
def manifest_path(tmp_path):
    """Four 2D cases (two train, one val, one test) with masks stored as 0/255/128 plus an ignore value 99."""
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    truth = _labels_2d()
    raw = np.select([truth == 1, truth == 2], [255, 128], 0)
    cases = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        _png(data / "img" / f"{i}.png", rng.integers(0, 255, size=truth.shape))
        mask = np.roll(raw, i, axis=1)
        if i == 0:
            mask[0, :3] = 99  # not annotated
        _png(data / "lab" / f"{i}.png", mask)
        cases.append({"id": f"c{i}", "images": [f"img/{i}.png"], "mask": f"lab/{i}.png", "split": split})
    manifest = {"name": "toy", "root": "../data", "labels": {0: "background", 1: "organ", 2: "tumour"},
                "ignore_value": 99, "label_mapping": {255: 1, 128: 2}, "cases": cases}
    path = tmp_path / "manifests" / "toy.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def test_simulate_manifest_scribbles(manifest_path, tmp_path):
    protocol = {"kind": "scribbles", "params": {"fraction": 0.5, "brush_radius": 1}}
    out = simulate_manifest(manifest_path, tmp_path / "sim", protocol, seed=3)
    new = load_manifest(out)
    assert validate_manifest(new) == []
    source = load_manifest(manifest_path)
    for old_case, new_case in zip(source.cases, new.cases):
        _, truth, _ = load_case(source, old_case)
        _, ann, _ = load_case(new, new_case)
        if old_case.split == "train":
            assert ann.dense_kind == Kind.SCRIBBLE and new_case.unlabelled_value == 255
            np.testing.assert_array_equal(ann.labels[ann.valid], truth.labels[ann.valid])
            assert not (ann.valid & ~truth.valid).any() if truth.valid is not None else True
        else:  # val and test untouched
            assert ann.dense_kind == Kind.MASK and new_case.mask == old_case.mask
            np.testing.assert_array_equal(ann.labels, truth.labels)
    record = json.loads((tmp_path / "sim" / "simulation.json").read_text())
    assert record["seed"] == 3 and record["protocol"] == protocol
    assert record["cases"]["c0"]["steps"][0]["params"]["fraction"] == 0.5
    assert record["cases"]["c3"]["status"] == "unchanged"
    # the record replays the written scribble exactly
    _, truth, _ = load_case(source, source.cases[1])
    again = replay(truth.labels, record["cases"]["c1"]["steps"][0])
    _, ann, _ = load_case(new, new.cases[1])
    np.testing.assert_array_equal(again.valid, ann.valid)


def test_simulate_manifest_full_protocol_and_determinism(manifest_path, tmp_path):
    protocol = {"default": [{"kind": "partial", "drop": [2]}, {"kind": "boxes", "margin": 1}, {"kind": "tags"}],
                "cases": {"c1": {"kind": "sparse", "params": {"num_slices": 3}}, "c2": "elastic"}}
    out = simulate_manifest(manifest_path, tmp_path / "a", protocol, seed=1)
    new = load_manifest(out)
    assert validate_manifest(new) == []
    source = load_manifest(manifest_path)
    kinds = {c.id: load_case(new, c)[1] for c in new.cases}
    assert kinds["c0"].kinds == {Kind.PARTIAL, Kind.BOXES, Kind.TAGS} and kinds["c0"].classes == (0, 1)
    assert not (kinds["c0"].labels == 2).any() and (kinds["c0"].labels == 1).any()
    _, truth, _ = load_case(source, source.cases[0])
    np.testing.assert_array_equal(kinds["c0"].boxes, simulate(truth.labels, "boxes", margin=1).boxes)
    assert kinds["c0"].tags.tolist() == [1, 1, 1]
    assert kinds["c1"].dense_kind == Kind.SCRIBBLE and kinds["c1"].valid.sum() == 3 * 64
    assert kinds["c2"].dense_kind == Kind.MASK and new.cases[2].mask.endswith("c2_elastic.png")
    assert kinds["c3"].dense_kind == Kind.MASK and new.cases[3].mask == source.cases[3].mask
    text = (tmp_path / "a" / "manifest.yaml").read_text()
    assert "label_mapping" in text  # kept for the original mask files only
    again = simulate_manifest(manifest_path, tmp_path / "b", protocol, seed=1)
    assert again.read_text() == text
    for name in ("c0_partial.png", "c1_sparse.png", "c2_elastic.png"):
        a = np.asarray(Image.open(tmp_path / "a" / "labels" / name))
        b = np.asarray(Image.open(tmp_path / "b" / "labels" / name))
        np.testing.assert_array_equal(a, b)
    other = simulate_manifest(manifest_path, tmp_path / "c", protocol, seed=2)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "a" / "labels" / "c2_elastic.png")),
                              np.asarray(Image.open(tmp_path / "c" / "labels" / "c2_elastic.png")))
    assert load_manifest(other).cases[0].boxes == new.cases[0].boxes  # boxes without jitter do not depend on seed


def test_simulate_manifest_keeps_ignored_voxels_unannotated(manifest_path, tmp_path):
    out = simulate_manifest(manifest_path, tmp_path / "sim", {"kind": "erode", "radius": 1})
    new = load_manifest(out)
    _, ann, _ = load_case(new, new.cases[0])
    assert ann.valid is not None and not ann.valid[0, :3].any() and ann.valid.sum() == ann.valid.size - 3


def test_simulate_manifest_absolute_paths_and_splits(manifest_path, tmp_path):
    out = simulate_manifest(manifest_path, tmp_path / "abs", {"default": "points", "splits": ["train", "val"]},
                            relative=False)
    new = load_manifest(out)
    assert validate_manifest(new) == []
    raw = yaml.safe_load(out.read_text())
    assert all(p.startswith("/") for c in raw["cases"] for p in c["images"])
    kinds = [load_case(new, c)[1].kinds for c in new.cases]
    assert kinds[:3] == [{Kind.POINTS}] * 3 and kinds[3] == {Kind.MASK}


def test_simulate_manifest_errors(manifest_path, tmp_path):
    with pytest.raises(ValueError, match=r"protocol names cases \['nope'\]"):
        simulate_manifest(manifest_path, tmp_path / "x", {"cases": {"nope": "mask"}})
    with pytest.raises(ValueError, match="unknown simulated annotation kind 'box'"):
        simulate_manifest(manifest_path, tmp_path / "x", {"kind": "box"})
    with pytest.raises(ValueError, match=r"protocol: unknown keys \['defaults'\]"):
        simulate_manifest(manifest_path, tmp_path / "x", {"defaults": {"kind": "boxes"}})
    with pytest.raises(ValueError, match="unlabelled_value 2 is a class index"):
        simulate_manifest(manifest_path, tmp_path / "x", {"kind": "scribbles"}, unlabelled_value=2)
    with pytest.raises(ValueError, match=r"protocol: unknown splits \['training'\]"):
        simulate_manifest(manifest_path, tmp_path / "x", {"default": "tags", "splits": ["training"]})
    with pytest.raises(ValueError, match="'unlabelled' cannot be combined"):
        simulate_manifest(manifest_path, tmp_path / "x", {"default": ["unlabelled", "tags"]})


def test_boxes_per_slice_are_tight_on_every_slice_and_replay():
    from scipy import ndimage

    from everylabel.annotations.simulate import replay

    labels = np.zeros((6, 12, 10), np.int64)
    labels[1:5, 2:9, 3:7] = 1
    labels[2, 2:4, 3:5] = 0  # slice 2 of axis 0 gets a smaller, shifted object
    labels[3, 10:12, 8:10] = 1  # and slice 3 a second component
    ann = simulate(labels, "boxes", 0, slice_axis=0)
    assert ann.boxes.shape[1] == 6
    expected = []
    for k in range(labels.shape[0]):
        comp, _ = ndimage.label(labels[k], np.ones((3, 3)))
        for sl in ndimage.find_objects(comp):
            expected.append([k, sl[0].start, sl[1].start, k + 1, sl[0].stop, sl[1].stop])
    assert sorted(ann.boxes.astype(int).tolist()) == sorted(expected)
    again = replay(labels, ann.extra["simulation"])
    assert np.array_equal(again.boxes, ann.boxes)
    with pytest.raises(ValueError, match="3D label map"):
        simulate(labels[0], "boxes", 0, slice_axis=0)
