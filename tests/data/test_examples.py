"""The example manifests load the real datasets in ../shared/data and validate without a single problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from everylabel.annotations.kinds import Kind
from everylabel.data.manifest import load_case, load_manifest
from everylabel.data.validate import validate_manifest

MANIFESTS = Path(__file__).resolve().parents[2] / "examples" / "manifests"
DATASET_OF = {
    "drive": "DRIVE", "isbi2012": "ISBI2012_EM_membrane", "la_heart": "LA_heart_h5",
    "ivadomed_ct_spleen": "ivadomed_data_testing", "ivadomed_spinal_cord": "ivadomed_data_testing",
    "ivadomed_sem": "ivadomed_data_testing",
}

pytestmark = pytest.mark.realdata


def _load(name, shared_dataset):
    shared_dataset(DATASET_OF[name])
    return load_manifest(MANIFESTS / f"{name}.yaml")


def test_every_example_manifest_is_listed():
    assert sorted(p.stem for p in MANIFESTS.glob("*.yaml")) == sorted(DATASET_OF)


@pytest.mark.parametrize("name", sorted(DATASET_OF))
def test_example_manifest_validates(name, shared_dataset):
    manifest = _load(name, shared_dataset)
    assert validate_manifest(manifest, deep=True) == []


def test_drive(shared_dataset):
    m = _load("drive", shared_dataset)
    assert (len(m.split("train")), len(m.split("test"))) == (20, 20)
    assert m.spatial_dims == 2 and m.labels == {0: "background", 1: "vessel"}
    fractions = []
    for case in m.split("train"):
        image, ann, _ = load_case(m, case)
        assert image.shape == (3, 584, 565) and ann.dense_kind == Kind.MASK
        assert ann.roi is not None and 0.6 < ann.roi.mean() < 0.75 and np.array_equal(ann.valid, ann.roi)
        fractions.append(ann.labels.mean())
    assert 0.08 < np.mean(fractions) < 0.09  # 8.6% of all pixels (PROVENANCE.md)


def test_isbi2012(shared_dataset):
    m = _load("isbi2012", shared_dataset)
    assert (len(m.split("train")), len(m.split("unlabelled")), len(m.split("test"))) == (30, 30, 0)
    fractions = [load_case(m, c)[1].labels.mean() for c in m.split("train")[:10]]
    assert 0.19 < np.mean(fractions) < 0.25  # membrane (foreground) about 22%
    _, ann, _ = load_case(m, m.split("unlabelled")[0])
    assert ann.is_unlabelled


def test_la_heart(shared_dataset):
    m = _load("la_heart", shared_dataset)
    assert (len(m.split("train")), len(m.split("test"))) == (16, 4)
    image, ann, meta = load_case(m, m.split("test")[0])
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 88
    assert meta.spacing == (0.625, 0.625, 0.625)
    assert 0.03 < ann.labels.mean() < 0.2


def test_ivadomed(shared_dataset):
    ct = _load("ivadomed_ct_spleen", shared_dataset)
    image, ann, meta = load_case(ct, ct.cases[0])
    assert ct.modality == "CT" and image.shape == (1, 164, 166, 26) and image.min() < -1000
    assert meta.spacing == pytest.approx((0.7949, 0.7949, 5.0), abs=1e-4) and meta.affine.shape == (4, 4)
    assert 0.12 < ann.labels.mean() < 0.15

    cord = _load("ivadomed_spinal_cord", shared_dataset)
    assert len(cord.cases) == 3 and all(0 < load_case(cord, c)[1].labels.mean() < 0.01 for c in cord.cases)

    sem = _load("ivadomed_sem", shared_dataset)
    assert sem.num_classes == 3
    for case in sem.cases:
        _, ann, _ = load_case(sem, case)
        assert set(np.unique(ann.labels)) == {0, 1, 2} and ann.dense_kind == Kind.MASK
