"""Annotation cost: units counted on hand-made label maps, prices, and pricing a simulated manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from everylabel.annotations import Kind, simulate, simulate_manifest
from everylabel.annotations.cost import (
    CostModel,
    annotation_cost,
    cost_model_from_dict,
    count_pieces,
    pick_slice_axis,
    price_manifest,
    price_simulation,
)
from everylabel.annotations.kinds import Annotations


def _labels_2d() -> np.ndarray:
    """Two objects of class 1, one of class 2 (3 objects)."""
    lab = np.zeros((20, 24), dtype=np.int64)
    lab[2:6, 2:6] = 1
    lab[10:14, 2:8] = 1
    lab[4:16, 12:20] = 2
    return lab


def test_count_pieces_2d_by_hand():
    lab = _labels_2d()
    assert count_pieces(lab) == 3
    assert count_pieces(lab, include_background=True) == 4
    region = np.zeros(lab.shape, bool)
    region[:8] = True  # cuts off the second class-1 object; class 2 is still touched
    assert count_pieces(lab, region) == 2
    diagonal = np.zeros((4, 4), np.int64)
    diagonal[0, 0] = diagonal[1, 1] = 1  # 8-connected: one stroke
    assert count_pieces(diagonal) == 1


def test_mask_cost_2d_and_overrides():
    ann = Annotations(labels=_labels_2d(), dense_kind=Kind.MASK)
    assert annotation_cost(ann) == {"mask": 3 * 78.0}
    assert annotation_cost(ann, CostModel(mask=10.0, case=5.0)) == {"mask": 30.0, "case": 5.0}
    assert annotation_cost(ann, kinds=["erode"], model=CostModel(noisy_mask_factor=0.5)) == {"erode": 3 * 39.0}
    partial = simulate(_labels_2d(), "partial", 0, drop=[2])
    assert partial.dense_kind == Kind.PARTIAL
    assert annotation_cost(partial) == {"partial": 2 * 78.0}


def test_3d_mask_is_priced_per_slice_along_the_coarsest_axis():
    lab = np.zeros((6, 8, 10), np.int64)
    lab[1:3, 1:4, 2:7] = 1    # 2 slices along axis 0, 5 along axis 2
    lab[4, 5:7, 5:7] = 2      # 1 slice along axis 0, 2 along axis 2
    ann = Annotations(labels=lab, dense_kind=Kind.MASK)
    assert pick_slice_axis(3, (1.0, 1.0, 5.0), CostModel()) == 2
    assert pick_slice_axis(3, (5.0, 1.0, 1.0), CostModel()) == 0
    assert pick_slice_axis(3, None, CostModel()) == 2
    assert pick_slice_axis(3, (5.0, 1.0, 1.0), CostModel(slice_axis=1)) == 1
    assert pick_slice_axis(2, (5.0, 1.0), CostModel()) is None
    assert annotation_cost(ann, spacing=(1.0, 1.0, 5.0)) == {"mask": (5 + 2) * 78.0}
    assert annotation_cost(ann, spacing=(5.0, 1.0, 1.0)) == {"mask": (2 + 1) * 78.0}
    # a dense organ mask over 150 slices costs hours, as the literature says
    organ = np.zeros((4, 4, 150), np.int64)
    organ[1:3, 1:3, :] = 1
    hours = annotation_cost(Annotations(labels=organ, dense_kind=Kind.MASK))["mask"] / 3600
    assert 3.0 < hours < 3.5


def test_coordinate_kinds():
    lab = _labels_2d()
    boxes = simulate(lab, "boxes", 0)
    assert annotation_cost(boxes) == {"boxes": 3 * 10.0}
    points = simulate(lab, "points", 0, points_per_object=2)
    assert annotation_cost(points) == {"points": pytest.approx(6 * 2.4)}
    tags = simulate(lab, "tags", 0, num_classes=4)  # 3 foreground classes judged, background not
    assert annotation_cost(tags) == {"tags": 3 * 1.0}
    box_3d = Annotations(boxes=np.array([[0, 0, 0, 4, 4, 4.0], [0, 0, 2, 4, 4, 3.0]]), box_labels=np.array([1, 1]))
    assert annotation_cost(box_3d) == {"boxes": 10.0 * 2.0 + 10.0}  # a 3D box and a one-slice box
    assert annotation_cost(box_3d, kinds=["slice_boxes"]) == {"slice_boxes": 30.0}
    assert annotation_cost(Annotations()) == {}


def test_scribbles_and_sparse():
    lab = _labels_2d()
    scribble = Annotations(labels=np.where(lab > 0, lab, 0), valid=np.zeros(lab.shape, bool),
                           dense_kind=Kind.SCRIBBLE)
    scribble.valid[3, 2:6] = True      # class 1, object 1
    scribble.valid[11, 2:8] = True     # class 1, object 2
    scribble.valid[8, 13:19] = True    # class 2
    scribble.valid[18, 0:10] = True    # background
    assert annotation_cost(scribble) == {"scribbles": 4 * 10.0}
    sparse = simulate(lab, "sparse", 0, axes=0, slices={0: [3, 12]})  # rows 3 and 12
    # row 3: one class-1 run and nothing else (class 2 starts at row 4); row 12: one class-1 run, one class-2 run
    assert annotation_cost(sparse, kinds=["sparse"]) == {"sparse": 3 * 78.0}


def test_cost_model_from_dict_errors():
    assert cost_model_from_dict({"mask": 120, "slice_axis": 0}) == CostModel(mask=120.0, slice_axis=0)
    with pytest.raises(ValueError, match="unknown key 'boxes' in cost; did you mean 'box'"):
        cost_model_from_dict({"boxes": 7})
    with pytest.raises(ValueError, match=r"cost.point must be a number of seconds >= 0, got -1"):
        cost_model_from_dict({"point": -1})
    with pytest.raises(ValueError, match="slice_axis must be 0, 1, 2 or null"):
        cost_model_from_dict({"slice_axis": 3})


@pytest.fixture
def manifest_path(tmp_path):
    """Five 2D cases: four train (each with the three objects of _labels_2d, shifted) and one test."""
    cases = []
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for i, split in enumerate(["train"] * 4 + ["test"]):
        Image.fromarray((np.random.default_rng(i).random((20, 24)) * 255).astype(np.uint8)).save(
            tmp_path / "img" / f"{i}.png")
        Image.fromarray(np.roll(_labels_2d(), i, axis=1).astype(np.uint8)).save(tmp_path / "lab" / f"{i}.png")
        cases.append({"id": f"c{i}", "images": [f"img/{i}.png"], "mask": f"lab/{i}.png", "split": split})
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({"name": "toy", "labels": {0: "background", 1: "a", 2: "b"}, "cases": cases}))
    return path


def test_price_manifest_of_full_masks(manifest_path):
    priced = price_manifest(manifest_path)
    assert sorted(priced["cases"]) == ["c0", "c1", "c2", "c3"]  # the test case is not priced
    assert priced["seconds"] == 4 * 3 * 78.0 and priced["by_kind"] == {"mask": 4 * 3 * 78.0}
    with pytest.raises(ValueError, match=r"cases \['nope'\] are not in"):
        price_manifest(manifest_path, case_ids=["nope"])


def test_price_simulation_of_a_budget_protocol(manifest_path, tmp_path):
    protocol = {"assign": [{"kind": "mask", "count": 1}, {"kind": "points", "count": 1}], "rest": "boxes"}
    out = simulate_manifest(manifest_path, tmp_path / "sim", protocol, seed=0)
    priced = price_simulation(out.parent)
    records = json.loads((out.parent / "simulation.json").read_text())["cases"]
    kinds = {cid: [s if isinstance(s, str) else s["kind"] for s in r["steps"]]
             for cid, r in records.items() if "steps" in r}
    assert sorted(kinds) == ["c0", "c1", "c2", "c3"]
    assert sorted(map(tuple, kinds.values())) == [("boxes",), ("boxes",), ("mask",), ("points",)]
    expected = 78.0 * 3 + 2.4 * 3 + 2 * 10.0 * 3
    assert priced["seconds"] == pytest.approx(expected)
    assert priced["full_mask_seconds"] == 4 * 3 * 78.0
    assert priced["cost_fraction"] == pytest.approx(expected / (4 * 3 * 78.0))
    assert priced["n_masks"] == 1 and priced["n_cases"] == 4
    assert priced["kinds"] == {"mask": 1, "points": 1, "boxes": 2}
    full = price_simulation(simulate_manifest(manifest_path, tmp_path / "full", {"kind": "mask"}).parent)
    assert full["cost_fraction"] == 1.0 and full["n_masks"] == 4
    none = price_simulation(simulate_manifest(manifest_path, tmp_path / "none", {"kind": "unlabelled"}).parent)
    assert none["seconds"] == 0.0 and none["cost_fraction"] == 0.0 and none["n_masks"] == 0
    with pytest.raises(ValueError, match="is not a simulated dataset"):
        price_simulation(tmp_path)
