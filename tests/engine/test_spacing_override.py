"""A manifest's ``spacing`` override (for files that store none, e.g. HDF5) reaches prediction and evaluation.

Regression: ``predict`` read the spacing from the file (1.0 for HDF5) while training used the manifest's, so the
predictor resampled every test volume by the wrong factor (LA_heart_h5: 0.625 mm declared, 1.0 read; 3D test Dice
0.57 instead of 0.86 from the same weights).
"""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
import yaml

from everylabel.engine.evaluation import evaluate
from everylabel.engine.predictor import Predictor, predict
from everylabel.engine.trainer import train
from everylabel.experiments.config import load_config


def _h5_dataset(root, spacing=(0.5, 0.5, 0.5)):
    rng = np.random.default_rng(0)
    cases = []
    for i in range(4):
        img = rng.normal(0, 0.3, (20, 18, 8)).astype(np.float32)
        lab = np.zeros(img.shape, np.uint8)
        lab[5:13, 4:12, 2:6] = 1
        img[lab > 0] += 2.0
        with h5py.File(root / f"c{i}.h5", "w") as f:
            f["image"], f["label"] = img, lab
        cases.append({"id": f"c{i}", "images": [f"c{i}.h5"], "mask": f"c{i}.h5",
                      "split": "test" if i == 3 else "train"})
    manifest = {"name": "h5", "labels": {0: "background", 1: "blob"}, "spacing": list(spacing), "cases": cases}
    path = root / "h5.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_predict_uses_the_manifest_spacing(tmp_path):
    data = _h5_dataset(tmp_path)
    cfg = load_config(None, ["network.features=[8, 16]", "data.batch_size=2", "train.steps=2", "data.val_fraction=0",
                             "data.patch_size=[16, 16, 8]", "inference.sw_batch_size=1", "train.checkpoint_every=2"])
    train(data, tmp_path / "run", cfg, progress=False)
    predictor = Predictor(tmp_path / "run")
    assert predictor.plan.preprocess.target_spacing == (0.5, 0.5, 0.5)
    (out,) = predict(tmp_path / "run", data, tmp_path / "pred", split="test", save_probabilities=True,
                     progress=False)
    with h5py.File(tmp_path / "c3.h5") as f:
        image = f["image"][()][None]
    expected = predictor.predict_array(image, (0.5, 0.5, 0.5)).numpy()
    at_file_spacing = predictor.predict_array(image, (1.0, 1.0, 1.0)).numpy()
    assert not np.allclose(expected, at_file_spacing, atol=1e-3)  # the test can tell the two apart
    written = np.moveaxis(np.asarray(nib.load(tmp_path / "pred" / "c3_probabilities.nii.gz").dataobj), -1, 0)
    np.testing.assert_allclose(written, expected, atol=1e-5)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["label"][()], expected.argmax(0))


@pytest.mark.parametrize("spacing", [(0.5, 0.5, 0.5), (2.0, 1.0, 1.0)])
def test_evaluate_measures_distances_at_the_manifest_spacing(tmp_path, spacing):
    data = _h5_dataset(tmp_path, spacing)
    (tmp_path / "pred").mkdir()
    with h5py.File(tmp_path / "c3.h5") as f:
        ref = f["label"][()]
    shifted = np.roll(ref, 2, axis=0)  # every boundary voxel moves 2 voxels along axis 0
    with h5py.File(tmp_path / "pred" / "c3.h5", "w") as f:
        f["label"] = shifted
    summary = evaluate(tmp_path / "pred", data, metrics=["hd"], split="test")
    (record,) = summary["records"]
    assert record["hd"] == pytest.approx(2 * spacing[0])
