"""Integration: train a few steps on synthetic data, predict, evaluate; exact resume; DDP == one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from everylabel.data.synthetic import make_dataset
from everylabel.engine.evaluation import evaluate
from everylabel.engine.predictor import predict
from everylabel.engine.trainer import autocast_dtype, train
from everylabel.experiments.config import DEFAULT_LR, load_config

TINY = ["network.features=[8, 16, 32]", "data.patch_size=[32, 32]", "data.batch_size=2", "train.log_every=1",
        "train.val_every=2", "train.checkpoint_every=2", "inference.sw_batch_size=2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synth"), n_train=6, n_test=2, shape=(64, 64), seed=1)


def _cfg(*extra):
    return load_config(None, TINY + list(extra))


def test_train_predict_evaluate(dataset, tmp_path):
    run = tmp_path / "run"
    metrics = train(dataset, run, _cfg("train.steps=4"), progress=False)
    assert metrics["steps"] == 4 and metrics["completed"]
    for name in ("config.yaml", "plan.json", "run.json", "metrics.json", "train.log", "checkpoints/best.pt",
                 "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["seed"] == 0 and "everylabel" in run_info["code"] and len(run_info["val_cases"]) == 1
    assert run_info["precision"] == ("bf16" if autocast_dtype("auto", torch.device("cpu")) else "fp32")
    assert not list(run.rglob("*.tmp")), "temporary files left behind"

    outs = predict(run, dataset / "imagesTs", tmp_path / "pred", progress=False)
    assert sorted(p.name for p in outs) == ["synth_006.png", "synth_007.png"]
    pred = np.asarray(Image.open(outs[0]))
    ref = np.asarray(Image.open(dataset / "labelsTs" / "synth_006.png"))
    assert pred.shape == ref.shape and pred.max() <= 2

    summary = evaluate(tmp_path / "pred", dataset / "labelsTs", tmp_path / "eval", class_names={1: "vessel",
                                                                                                 2: "organ"})
    assert (tmp_path / "eval" / "cases.csv").is_file() and (tmp_path / "eval" / "summary.md").is_file()
    assert len(summary["records"]) == 4


def test_strided_stem_from_config_trains_and_predicts(dataset, tmp_path):
    run = tmp_path / "run"
    train(dataset, run, _cfg("train.steps=2", "network.stem_stride=2", "network.stem_features=4"), progress=False)
    plan = json.loads((run / "plan.json").read_text())
    assert plan["network"]["stem_stride"] == 2 and plan["network"]["stem_features"] == 4
    assert all(p % 8 == 0 for p in plan["patch_size"])  # the stem's stride enters the divisor
    outs = predict(run, dataset / "imagesTs", tmp_path / "pred", progress=False)
    assert np.asarray(Image.open(outs[0])).shape == (64, 64)


def test_resume_is_exact(dataset, tmp_path):
    full = tmp_path / "full"
    train(dataset, full, _cfg("train.steps=6"), progress=False)
    part = tmp_path / "part"
    m = train(dataset, part, _cfg("train.steps=6"), progress=False, stop_at=3)
    assert m["steps"] == 3 and not m["completed"]
    with pytest.raises(ValueError, match="already holds a run; use --resume"):
        train(dataset, part, _cfg("train.steps=6"), progress=False)
    m = train(dataset, part, _cfg("train.steps=6"), progress=False, resume=True)
    assert m["steps"] == 6 and m["completed"]
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(part / "checkpoints" / "last.pt", weights_only=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_wall_clock_budget_stops_on_time_and_anneals_the_learning_rate(dataset, tmp_path):
    run = tmp_path / "run"
    # train.steps would stop a step schedule after 2 steps; a budget ignores it
    m = train(dataset, run, _cfg("train.minutes=0.04", "train.steps=2", "train.val_every=1000"), progress=False)
    assert m["completed"] and m["steps"] > 2
    assert 2.4 <= m["train_seconds"] < 2.4 + 5.0
    lrs = [h["lr"] for h in m["history"] if "lr" in h]
    assert len(lrs) == m["steps"] and lrs == sorted(lrs, reverse=True)  # poly decay along elapsed time
    assert lrs[0] > 0.5 * DEFAULT_LR["adamw"] and lrs[-1] == 0.0  # the last step spends the budget: (1 - 1) ** 0.9
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert state["elapsed"] >= 2.4
    # resumed, the run has nothing left to spend: it stops at once with the same step count
    again = train(dataset, run, _cfg("train.minutes=0.04", "train.steps=2"), progress=False, resume=True)
    assert again["steps"] == m["steps"] and again["completed"]


def test_wall_clock_budget_resumes_with_the_time_left(dataset, tmp_path):
    run = tmp_path / "run"
    first = train(dataset, run, _cfg("train.minutes=0.04", "train.val_every=1000"), progress=False, stop_at=3)
    assert first["steps"] == 3 and not first["completed"]
    spent = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["elapsed"]
    assert 0 < spent < 2.4
    m = train(dataset, run, _cfg("train.minutes=0.04", "train.val_every=1000"), progress=False, resume=True)
    assert m["completed"] and m["steps"] > 3
    assert m["train_seconds"] < 2.4 - spent + 5.0  # only the rest of the budget was spent


def test_method_without_its_kind_is_rejected(tmp_path):
    data = make_dataset(tmp_path, n_train=2, n_test=0, shape=(32, 32))
    for f in (data / "labelsTr").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="labelsTr|label"):
        train(data, tmp_path / "run", _cfg("train.steps=1"), progress=False)


def _history_losses(run: Path) -> list[float]:
    hist = json.loads((run / "metrics.json").read_text())["history"]
    return [h["loss"] for h in hist if "loss" in h]


@pytest.mark.slow
def test_ddp_two_processes_match_one(dataset, tmp_path):
    # fp32 (bf16 rounding differs between batch sizes); per-sample Dice so a shard mean equals the batch mean
    opts = TINY + ["train.steps=2", "method.batch_dice=false", "augment.enabled=false", "train.precision=fp32",
                   "data.batch_size=2", "train.val_every=100"]
    single = tmp_path / "single"
    train(dataset, single, load_config(None, opts[:-2] + ["data.batch_size=4", "train.val_every=100"]),
          progress=False)
    code = ("import sys; from everylabel.engine.trainer import train; from everylabel.experiments.config import "
            "load_config; train(sys.argv[1], sys.argv[2], load_config(None, sys.argv[3:]), progress=False)")
    script = tmp_path / "ddp_train.py"
    script.write_text(code)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531", str(script),
           str(dataset), str(ddp)] + opts
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _history_losses(single), _history_losses(ddp)
    assert len(a) == len(b) == 2
    assert np.allclose(a, b, rtol=1e-4, atol=1e-5), (a, b)


@pytest.mark.slow
def test_ddp_wall_clock_budget_stops_every_rank_at_the_same_step(dataset, tmp_path):
    # rank 0's clock is broadcast each step: ranks that read their own clocks could stop a step apart, and the
    # rank still training would wait in the gradient all-reduce forever (the timeout below)
    code = ("import sys, json; from everylabel.engine.trainer import train; from everylabel.experiments.config import "
            "load_config; m = train(sys.argv[1], sys.argv[2], load_config(None, sys.argv[3:]), progress=False); "
            "print('STEPS', m['steps'], m['completed'])")
    script = tmp_path / "ddp_train.py"
    script.write_text(code)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    opts = TINY + ["train.minutes=0.04", "train.val_every=1000", "train.log_every=1000"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", str(script),
           str(dataset), str(tmp_path / "ddp")] + opts
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = sorted(line for line in res.stdout.splitlines() if line.startswith("STEPS"))
    assert len(lines) == 2 and lines[0] == lines[1] and lines[0].endswith("True"), res.stdout
