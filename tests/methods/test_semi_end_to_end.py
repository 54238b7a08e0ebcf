"""Tiny end-to-end runs (engine.trainer.train, two steps) of the semi-supervised methods, alone and mixed with weak
kinds in one run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from everylabel.engine.trainer import train
from everylabel.experiments.config import load_config

TINY = ["network.features=[8, 16]", "data.patch_size=[16, 16]", "data.batch_size=4", "data.val_fraction=0",
        "train.log_every=1", "train.steps=2"]
"""Two steps of a two-level U-Net on 16 x 16 patches (about a second on a CPU core)."""

METHODS = {
    "self_training": ["method.name=self_training", "method.pseudo_threshold=0.5"],
    "self_training_teacher": ["method.name=self_training", "method.pseudo_labels_from=teacher"],
    "multilabel": ["method.name=multilabel"],
    "mean_taught": ["method.name=mean_taught"],
    "mean_teacher_mi": ["method.name=mean_teacher", "method.unlabelled_entropy_weight=0.1", "method.entropy_mode=mi"],
    "supervised_entropy": ["method.name=supervised", "method.unlabelled_entropy_weight=0.1"],
}


def _finite(metrics: dict) -> bool:
    losses = [h["loss"] for h in metrics["history"] if "loss" in h]
    return bool(losses) and all(np.isfinite(losses))


@pytest.mark.parametrize("method", list(METHODS))
def test_method_end_to_end_with_unlabelled_cases(method, semi_manifest, tmp_path):
    # multilabel cannot learn from unlabelled cases (without the entropy option), so they cannot take batch slots
    mix = [] if method == "multilabel" else ["data.labelled_fraction=0.5"]
    cfg = load_config(None, TINY + METHODS[method] + mix)
    metrics = train(semi_manifest, tmp_path / "run", cfg, progress=False)
    assert metrics["completed"] and _finite(metrics)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert len(info["train_cases"]) == (2 if method == "multilabel" else 5)


@pytest.mark.parametrize("method", ["self_training", "multilabel", "mean_taught", "supervised_entropy"])
def test_method_mixes_weak_kinds_in_one_run(method, mixed_kinds_manifest, tmp_path):
    cfg = load_config(None, TINY + METHODS[method] + ["data.patch_size=[32, 32]", "data.batch_size=6"])
    metrics = train(mixed_kinds_manifest, tmp_path / "run", cfg, progress=False)
    assert metrics["completed"] and _finite(metrics)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert {"mask", "boxes", "tags"} <= set(info["kinds"])
    n_unlabelled = 0 if method == "multilabel" else 2
    assert len(info["train_cases"]) == 4 + n_unlabelled


def test_self_training_resume_is_exact(semi_manifest, tmp_path):
    cfg = load_config(None, TINY + METHODS["self_training_teacher"] + ["train.steps=4", "data.labelled_fraction=0.5"])
    train(semi_manifest, tmp_path / "a", cfg, progress=False)
    train(semi_manifest, tmp_path / "b", cfg, progress=False, stop_at=2)
    train(semi_manifest, tmp_path / "b", cfg, progress=False, resume=True)
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["method"]:
        assert torch.equal(a["method"][k], b["method"][k]), k
