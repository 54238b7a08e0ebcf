"""Integration on the real datasets in ../shared/data: 2D RGB (DRIVE), 3D NIfTI CT (spleen), 3D HDF5 (LA heart).

A few training steps of a tiny network, then prediction in the input's format and geometry, then evaluation.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from everylabel.data.io import read_label
from everylabel.data.manifest import load_manifest
from everylabel.engine.evaluation import evaluate
from everylabel.engine.predictor import predict
from everylabel.engine.trainer import train
from everylabel.experiments.config import load_config

pytestmark = pytest.mark.realdata
MANIFESTS = Path(__file__).resolve().parents[2] / "examples" / "manifests"
TINY = ["network.features=[8, 16, 32]", "train.log_every=1", "train.val_every=1000", "data.val_fraction=0",
        "inference.sw_batch_size=4"]


def _subset(manifest: Path, ids: list[str], out: Path, keep_masks: bool = True) -> Path:
    """A manifest with only some cases (absolute paths), written to ``out``."""
    m = load_manifest(manifest)
    cases = []
    for c in m.cases:
        if c.id not in ids:
            continue
        d = {"id": c.id, "images": list(c.images), "split": "train", "image_key": c.image_key,
             "label_key": c.label_key}
        if keep_masks and c.mask:
            d["mask"] = c.mask
        if c.valid:
            d["valid"] = c.valid
        cases.append(d)
    doc = {"name": m.name, "labels": dict(m.labels), "modality": m.modality, "cases": cases}
    for key in ("label_mapping", "label_threshold", "spacing"):
        if getattr(m, key) is not None:
            doc[key] = getattr(m, key) if key != "spacing" else list(m.spacing)
    out.write_text(yaml.safe_dump(doc))
    return out


def test_drive_rgb_train_predict_evaluate_in_fov(shared_dataset, tmp_path):
    shared_dataset("DRIVE")
    train_m = _subset(MANIFESTS / "drive.yaml", ["drive_21", "drive_22"], tmp_path / "train.yaml")
    test_m = _subset(MANIFESTS / "drive.yaml", ["drive_01", "drive_02"], tmp_path / "test.yaml")
    run = tmp_path / "run"
    train(train_m, run, load_config(None, TINY + ["train.steps=3", "data.patch_size=[64, 64]",
                                                  "data.batch_size=2"]), progress=False)
    outs = predict(run, test_m, tmp_path / "pred", progress=False)
    assert sorted(p.name for p in outs) == ["drive_01.tif", "drive_02.tif"]
    lab, meta = read_label(outs[0])
    assert lab.shape == (584, 565)
    summary = evaluate(tmp_path / "pred", test_m, metrics=("dice", "recall"))
    assert summary["n_cases"] == 2 and np.isfinite(summary["metrics"]["dice"]["mean"])


def test_nifti_ct_prediction_keeps_affine_and_shape(shared_dataset, tmp_path):
    shared_dataset("ivadomed_data_testing")
    manifest = MANIFESTS / "ivadomed_ct_spleen.yaml"
    run = tmp_path / "run"
    train(manifest, run, load_config(None, TINY + ["train.steps=2", "data.patch_size=[32, 32, 16]",
                                                   "data.batch_size=1"]), progress=False)
    plan = yaml.safe_load((run / "plan.json").read_text())
    assert plan["preprocess"]["normalization"] == ["ct"], "CT modality must use nnU-Net's CT normalisation"
    outs = predict(run, manifest, tmp_path / "pred", progress=False)
    assert [p.name for p in outs] == ["sub-spleen2.nii.gz"]
    src = nib.load(load_manifest(manifest).cases[0].images[0])
    out = nib.load(outs[0])
    assert out.shape == src.shape
    assert np.allclose(out.affine, src.affine)
    assert np.allclose(out.header.get_zooms(), src.header.get_zooms())


def test_hdf5_3d_train_and_predict(shared_dataset, tmp_path):
    shared_dataset("LA_heart_h5")
    manifest = MANIFESTS / "la_heart.yaml"
    m = load_manifest(manifest)
    train_ids = [c.id for c in m.cases if c.split == "train"][:2]
    test_id = [c.id for c in m.cases if c.split == "test"][0]
    train_m = _subset(manifest, train_ids, tmp_path / "train.yaml")
    test_m = _subset(manifest, [test_id], tmp_path / "test.yaml", keep_masks=False)
    run = tmp_path / "run"
    train(train_m, run, load_config(None, TINY + ["train.steps=2", "data.patch_size=[32, 32, 32]",
                                                  "data.batch_size=1", "inference.overlap=0.25"]), progress=False)
    outs = predict(run, test_m, tmp_path / "pred", progress=False)
    assert len(outs) == 1 and outs[0].name.startswith(test_id)
    lab, _ = read_label(outs[0], key="label")
    ref, _ = read_label(m.cases[[c.id for c in m.cases].index(test_id)].mask, key="label")
    assert lab.shape == ref.shape
