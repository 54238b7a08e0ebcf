"""Mean teacher: EMA formula, consistency, labelled:unlabelled batches, end-to-end with unlabelled cases."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml

from everylabel.data.synthetic import make_dataset
from everylabel.engine.trainer import train
from everylabel.experiments.config import load_config
from everylabel.methods import MeanTeacher, Supervised
from everylabel.methods.mean_teacher import consistency_loss, ema_update, sigmoid_rampup
from everylabel.networks import UNet


def test_ema_update_matches_formula():
    torch.manual_seed(0)
    student = UNet(2, 1, 2, features=(4, 8))
    teacher = copy.deepcopy(student)
    for p in student.parameters():
        p.data.add_(torch.randn_like(p))
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t, b, s in zip(teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * s, atol=1e-7)
    with pytest.raises(ValueError, match="EMA decay must be in"):
        ema_update(teacher, student, 1.5)


def test_consistency_zero_for_identical_and_positive_otherwise():
    x = torch.randn(2, 3, 8, 8)
    for kind in ("mse", "kl"):
        assert consistency_loss(x, x.clone(), kind).abs() < 1e-7
        assert consistency_loss(x, torch.randn(2, 3, 8, 8), kind) > 0
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    assert consistency_loss(x, torch.randn(2, 3, 8, 8), "mse", mask=mask) == 0


def test_rampup_and_bad_arguments():
    assert sigmoid_rampup(0.0) == pytest.approx(np.exp(-5)) and sigmoid_rampup(1.0) == 1.0
    with pytest.raises(ValueError, match="ema_decay must be in"):
        MeanTeacher(Supervised(), ema_decay=1.0)
    with pytest.raises(ValueError, match="infer_with"):
        MeanTeacher(Supervised(), infer_with="both")


def _semi_manifest(tmp_path, n_labelled=2, n_unlabelled=3):
    data = make_dataset(tmp_path, n_train=n_labelled + n_unlabelled, n_test=0, shape=(32, 32), seed=3)
    cases = []
    for i, img in enumerate(sorted((data / "imagesTr").iterdir())):
        cid = img.name[: -len("_0000.png")]
        c = {"id": cid, "images": [f"imagesTr/{img.name}"]}
        if i < n_labelled:
            c["mask"] = f"labelsTr/{cid}.png"
        else:
            c["split"] = "unlabelled"
        cases.append(c)
    p = data / "semi.yaml"
    p.write_text(yaml.safe_dump({"name": "semi", "labels": {0: "background", 1: "vessel", 2: "organ"},
                                 "cases": cases}))
    return p


TINY = ["network.features=[8, 16]", "data.patch_size=[16, 16]", "data.batch_size=4", "data.val_fraction=0",
        "train.log_every=1", "method.name=mean_teacher", "data.labelled_fraction=0.5"]


def test_mean_teacher_end_to_end_with_unlabelled_cases(tmp_path):
    manifest = _semi_manifest(tmp_path)
    run = tmp_path / "run"
    metrics = train(manifest, run, load_config(None, TINY + ["train.steps=3"]), progress=False)
    losses = [h for h in metrics["history"] if "consistency" in h]
    assert len(losses) == 3 and all(np.isfinite(h["loss"]) for h in losses)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    teacher = {k[len("teacher."):]: v for k, v in state["method"].items() if k.startswith("teacher.")}
    for k, v in state["inference_model"].items():
        assert torch.equal(v, teacher[k])
    assert any(not torch.equal(state["model"][k], teacher[k]) for k in teacher)
    import json

    run_info = json.loads((run / "run.json").read_text())
    assert len(run_info["train_cases"]) == 5  # the unlabelled cases are trained on


def test_mean_teacher_resume_is_exact(tmp_path):
    manifest = _semi_manifest(tmp_path)
    cfg = load_config(None, TINY + ["train.steps=4"])
    train(manifest, tmp_path / "a", cfg, progress=False)
    train(manifest, tmp_path / "b", cfg, progress=False, stop_at=2)
    train(manifest, tmp_path / "b", cfg, progress=False, resume=True)
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)
    for k in a["method"]:
        assert torch.equal(a["method"][k], b["method"][k]), k


def test_labelled_fraction_errors(tmp_path):
    manifest = _semi_manifest(tmp_path)
    with pytest.raises(ValueError, match="leaves no labelled sample"):
        train(manifest, tmp_path / "r", load_config(None, TINY + ["data.labelled_fraction=0.1"]), progress=False)
