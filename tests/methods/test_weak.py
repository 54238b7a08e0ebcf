"""The weak method: one run mixes masks, partial masks, scribbles, points, boxes, tags and unlabelled cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from everylabel.annotations import simulate_manifest
from everylabel.annotations.kinds import Annotations, Kind
from everylabel.data.batch import collate
from everylabel.data.manifest import load_case, load_manifest
from everylabel.data.sampling import PreparedCase, case_to_sample
from everylabel.data.synthetic import make_dataset
from everylabel.engine.trainer import train
from everylabel.experiments.config import load_config
from everylabel.methods import Supervised, WeakSupervision
from everylabel.methods.weak import rasterize_points
from everylabel.networks import UNet

KINDS = ["mask", "boxes", "scribbles", "tags", "partial", "points", "unlabelled"]


@pytest.fixture(scope="module")
def mixed_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("weak")
    data = make_dataset(root, n_train=len(KINDS), n_test=0, shape=(32, 32), seed=5)
    ids = [p.name[: -len("_0000.png")] for p in sorted((data / "imagesTr").iterdir())]
    cases = [{"id": cid, "images": [f"imagesTr/{cid}_0000.png"], "mask": f"labelsTr/{cid}.png"} for cid in ids]
    full = data / "full.yaml"
    full.write_text(yaml.safe_dump({"name": "synth", "labels": {0: "background", 1: "vessel", 2: "organ"},
                                    "cases": cases}))
    protocol = {"cases": {cid: ({"kind": "partial", "drop": [1]} if kind == "partial" else kind)
                          for cid, kind in zip(ids, KINDS)}}
    return simulate_manifest(full, root / "mixed", protocol, seed=0)


def test_mixed_manifest_has_every_kind(mixed_manifest):
    m = load_manifest(mixed_manifest)
    kinds = [load_case(m, c)[1].kinds for c in m.cases]
    assert kinds[0] == {Kind.MASK} and Kind.BOXES in kinds[1] and kinds[2] == {Kind.SCRIBBLE}
    assert kinds[3] == {Kind.TAGS} and kinds[4] == {Kind.PARTIAL} and kinds[5] == {Kind.POINTS}
    assert kinds[6] == frozenset()


def test_every_term_applies_only_to_its_samples(mixed_manifest):
    m = load_manifest(mixed_manifest)
    samples = []
    for c in m.cases:
        image, ann, _ = load_case(m, c)
        samples.append(case_to_sample(PreparedCase(image=image, ann=ann, case_id=c.id, num_classes=3)))
    batch = collate(samples)
    torch.manual_seed(0)
    net = UNet(2, 1, 3, features=(8, 16))
    method = WeakSupervision(Supervised(), crf_weight=1.0, entropy_weight=0.1)
    out = method(net, batch)
    for term in ("mask", "partial", "sparse_ce", "crf", "box", "tag", "entropy"):
        assert term in out and torch.isfinite(out[term]), term
    out["loss"].backward()
    # removing the box sample removes the box term, nothing else changes
    keep = ~batch.has[Kind.BOXES]
    sub = method(net, batch.select(keep))
    assert "box" not in sub and "mask" in sub


def test_rasterize_points_marks_only_points():
    labels = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    valid = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    lab, val = rasterize_points(labels, valid, [torch.tensor([[2.0, 3.0], [7.0, 7.0]])], [torch.tensor([1, 0])], 0)
    assert val.sum() == 2 and lab[0, 0, 2, 3] == 1 and val[0, 0, 7, 7] and lab[0, 0, 7, 7] == 0
    lab, val = rasterize_points(labels, valid, [torch.tensor([[0.0, 0.0]])], [torch.tensor([2])], 1)
    assert val.sum() == 4 and (lab[val] == 2).all()  # the cube is clipped at the border


def test_weak_run_end_to_end(mixed_manifest, tmp_path):
    cfg = load_config(None, ["method.name=weak", "method.crf_weight=0.5", "network.features=[8, 16]",
                             "data.patch_size=[32, 32]", "data.batch_size=4", "data.val_fraction=0",
                             "train.steps=3", "train.log_every=1"])
    m = train(mixed_manifest, tmp_path / "run", cfg, progress=False)
    assert m["completed"] and all(np.isfinite(h["loss"]) for h in m["history"] if "loss" in h)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(info["kinds"]) == {"mask", "boxes", "scribble", "tags", "partial", "points"}
    assert len(info["train_cases"]) == 6  # the unlabelled case does not take batch slots without entropy


def test_bad_weights_raise():
    with pytest.raises(ValueError, match="method weights must be >= 0: box_weight"):
        WeakSupervision(Supervised(), box_weight=-1)
    with pytest.raises(ValueError, match="box_size_bounds"):
        WeakSupervision(Supervised(), box_size_bounds=(0.9, 0.5))


def test_box_sample_without_a_box_is_a_negative():
    # a patch of a boxed case that misses every box: every foreground class is absent there
    ann = Annotations(boxes=np.array([[0.0, 0.0, 4.0, 4.0]]), box_labels=np.array([1]))
    case = PreparedCase(image=np.zeros((1, 32, 32), np.float32), ann=ann, case_id="boxes", num_classes=3)
    sample = case_to_sample(case, np.array([16, 16]), (8, 8))
    assert len(sample.boxes) == 0 and Kind.BOXES in sample.kinds
    batch = collate([sample])
    logits = torch.zeros(1, 3, 8, 8, requires_grad=True)
    method = WeakSupervision(Supervised(), box_size_bounds=None)
    out = method(lambda x: [logits], batch)
    assert out["box"] > 0
    out["loss"].backward()
    assert (logits.grad[0, 1:] > 0).all() and (logits.grad[0, 0] < 0).all()  # towards background everywhere


def test_cldice_term_in_supervised_changes_loss_and_validates():
    torch.manual_seed(0)
    logits = [torch.randn(2, 2, 16, 16, requires_grad=True)]
    labels = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    labels[:, :, 7:9, :] = 1
    valid = torch.ones_like(labels, dtype=torch.bool)
    plain = Supervised(deep_supervision=False).supervised_terms(logits, labels, valid)
    mixed = Supervised(deep_supervision=False, cldice_weight=0.3).supervised_terms(logits, labels, valid)
    assert not torch.isclose(plain, mixed)
    mixed.backward()
    assert torch.isfinite(logits[0].grad).all()
    with pytest.raises(ValueError, match="cldice_weight must be in"):
        Supervised(cldice_weight=1.5)
