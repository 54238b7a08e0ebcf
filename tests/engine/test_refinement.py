"""Iterative pseudo-label refinement: component-size and confidence filters, round folders, manifests, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from everylabel.annotations.kinds import Kind
from everylabel.data.io import read_label_raw
from everylabel.data.manifest import Manifest, load_case, load_manifest
from everylabel.data.synthetic import make_dataset
from everylabel.data.validate import validate_manifest
from everylabel.engine import refinement
from everylabel.engine.refinement import (
    choose_ignore_value,
    component_sizes,
    filter_pseudo_labels,
    refine,
    size_bounds,
)
from everylabel.experiments.config import load_config

TINY = ["network.features=[8, 16]", "data.patch_size=[16, 16]", "data.batch_size=2", "train.steps=2",
        "train.log_every=1", "data.val_fraction=0.2"]


def _squares(shape, squares, cls=1):
    labels = np.zeros(shape, dtype=np.int64)
    for r, c, h, w in squares:
        labels[r:r + h, c:c + w] = cls
    return labels


def test_component_filter_removes_planted_too_small_and_too_large_components():
    reference = _squares((20, 20), [(0, 0, 3, 3), (10, 0, 3, 4), (0, 10, 4, 4)])  # sizes 9, 12, 16
    bounds = size_bounds(component_sizes(reference, 2), size_std=2.0)
    mean, std = np.mean([9, 12, 16]), np.std([9, 12, 16])
    assert bounds[1] == pytest.approx((mean - 2 * std, mean + 2 * std))
    predicted = _squares((24, 24), [(0, 0, 2, 2), (5, 5, 3, 4), (12, 12, 6, 6)])  # sizes 4 (small), 12, 36 (large)
    probs = np.stack([predicted == 0, predicted == 1]).astype(np.float64) * 0.9 + 0.05  # confidence 0.95
    probs[:, 23, 0] = 0.5  # one unsure background voxel
    labels, keep, info = filter_pseudo_labels(probs, tau=0.9, bounds=bounds)
    assert np.array_equal(labels, predicted)
    assert not keep[0:2, 0:2].any() and not keep[12:18, 12:18].any() and keep[5:8, 5:9].all()
    assert not keep[23, 0]
    assert info == {"voxels": 576, "kept": 576 - 4 - 36 - 1, "low_confidence": 1, "components_removed": 2}
    # sizes are physical: with voxels of volume 4 the reference bounds (in voxels) admit only the 4-voxel square
    _, keep, _ = filter_pseudo_labels(probs, tau=0.9, bounds=bounds, voxel_volume=4.0)
    assert keep[0:2, 0:2].all() and not keep[5:8, 5:9].any()
    assert size_bounds({1: [5.0]}) == {}  # a single component has no spread: no filter for that class


def test_ignore_value_avoids_raw_label_values():
    assert choose_ignore_value(Manifest(name="m", labels={0: "bg", 1: "fg"})) == 255
    assert choose_ignore_value(Manifest(name="m", labels={0: "bg", 1: "fg"}, label_mapping={255: 1})) == 254
    assert choose_ignore_value(Manifest(name="m", labels={0: "bg", 1: "fg"}, ignore_value=7)) == 7
    with pytest.raises(ValueError, match="ignore_value 1 is also a class index"):
        choose_ignore_value(Manifest(name="m", labels={0: "bg", 1: "fg"}, ignore_value=1))


@pytest.fixture(scope="module")
def semi(tmp_path_factory):
    """5 masks (one becomes the validation case) + 2 unlabelled 32 x 32 cases."""
    root = tmp_path_factory.mktemp("refine")
    data = make_dataset(root, n_train=7, n_test=0, shape=(32, 32), seed=2)
    cases = []
    for i, img in enumerate(sorted((data / "imagesTr").iterdir())):
        cid = img.name[: -len("_0000.png")]
        case = {"id": cid, "images": [f"imagesTr/{img.name}"]}
        if i < 5:
            case["mask"] = f"labelsTr/{cid}.png"
        else:
            case["split"] = "unlabelled"
        cases.append(case)
    path = data / "semi.yaml"
    path.write_text(yaml.safe_dump({"name": "semi", "labels": {0: "background", 1: "vessel", 2: "organ"},
                                    "cases": cases}))
    return path


def test_two_rounds_write_runs_pseudo_labels_and_manifests_then_resume_skips(semi, tmp_path, monkeypatch):
    out = tmp_path / "refine"
    result = refine(semi, out, load_config(None, TINY), rounds=2, tau=0.5, progress=False)
    assert [r["round"] for r in result["rounds"]] == [0, 1] and not any(r["skipped"] for r in result["rounds"])
    unlabelled = {"synth_005", "synth_006"}
    for r, rec in enumerate(result["rounds"]):
        rdir = out / f"round_{r}"
        for name in ("run/checkpoints/best.pt", "run/metrics.json", "manifest.yaml", "round.json",
                     "pseudo/synth_005.png", "pseudo/synth_006.png"):
            assert (rdir / name).is_file(), name
        assert rec["pseudo_cases"] == 2 and 0 <= rec["kept_fraction"] <= 1 and rec["ignore_value"] == 255
        assert rec["val_dice"] is not None and np.isfinite(rec["val_dice"])
        kept = sum(c["kept"] for c in rec["cases"]) / sum(c["voxels"] for c in rec["cases"])
        assert rec["kept_fraction"] == pytest.approx(kept)

        manifest = load_manifest(rdir / "manifest.yaml")
        assert validate_manifest(manifest, deep=True) == []
        splits = {c.id: c.split for c in manifest.cases}
        assert list(splits.values()).count("val") == 1 and "unlabelled" not in splits.values()
        for case in manifest.cases:
            if case.id not in unlabelled:
                continue
            raw, _ = read_label_raw(rdir / "pseudo" / f"{case.id}.png")
            assert raw.shape == (32, 32) and set(np.unique(raw).tolist()) <= {0, 1, 2, 255}
            _, ann, _ = load_case(manifest, case)
            assert splits[case.id] == "train" and ann.kinds == {Kind.MASK}
            valid = np.ones(raw.shape, bool) if ann.valid is None else ann.valid
            assert np.array_equal(valid, raw != 255)  # filtered-out voxels are not annotated, not background
    # round 1 trained on round 0's manifest: the pseudo-labelled cases are training masks there
    info = json.loads((out / "round_1" / "run" / "run.json").read_text())
    assert unlabelled <= set(info["train_cases"]) and info["val_cases"] == json.loads(
        (out / "round_0" / "run" / "run.json").read_text())["val_cases"]
    assert json.loads((out / "refinement.json").read_text())["manifest"] == str(out / "round_1" / "manifest.yaml")

    stamp = (out / "round_0" / "round.json").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("a finished round was trained again")

    monkeypatch.setattr(refinement, "train", no_training)
    again = refine(semi, out, load_config(None, TINY), rounds=2, tau=0.5, progress=False)
    assert all(r["skipped"] for r in again["rounds"])
    assert (out / "round_0" / "round.json").stat().st_mtime_ns == stamp


def test_bad_arguments(semi, tmp_path):
    cfg = load_config(None, TINY)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        refine(semi, tmp_path, cfg, rounds=0)
    with pytest.raises(ValueError, match=r"tau must be in \[0, 1\)"):
        refine(semi, tmp_path, cfg, tau=1.0)
    labelled_only = tmp_path / "labelled.yaml"
    data = yaml.safe_load(semi.read_text())
    data["cases"] = [c for c in data["cases"] if c.get("split") != "unlabelled"]
    for c in data["cases"]:
        c["images"] = [str(semi.parent / p) for p in c["images"]]
        c["mask"] = str(semi.parent / c["mask"])
    labelled_only.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="no unlabelled case to pseudo-label"):
        refine(labelled_only, tmp_path / "r", cfg)


def test_cli_refine_runs_a_round_and_reports_it(semi, tmp_path):
    from click.testing import CliRunner

    from everylabel.cli import main

    out = tmp_path / "cli"
    args = ["refine", "--data", str(semi), "--out", str(out), "--rounds", "1", "--tau", "0.5", "--no-progress"]
    res = CliRunner().invoke(main, args + [x for o in TINY for x in ("--set", o)])
    assert res.exit_code == 0, res.output
    assert "round 0: 2 pseudo-labelled case(s)" in res.output
    assert (out / "round_0" / "manifest.yaml").is_file()
    bad = CliRunner().invoke(main, args + ["--set", "method.nam=x"])
    assert bad.exit_code != 0 and "did you mean 'name'" in bad.output
