"""The command-line contract: check / train / predict / evaluate / simulate."""

from __future__ import annotations

import numpy as np
import yaml
from click.testing import CliRunner
from PIL import Image

from everylabel.cli import main
from everylabel.data.synthetic import make_dataset


def test_help_lists_commands():
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0
    for cmd in ("check", "train", "predict", "evaluate", "demo", "simulate", "sweep", "report", "refine"):
        assert cmd in res.output


def _bad_manifest(tmp_path):
    img = np.zeros((16, 16), np.uint8)
    img[2, 2] = 10
    Image.fromarray(img).save(tmp_path / "a.png")
    lab = np.zeros((16, 16), np.uint8)
    lab[3, 3] = 7
    Image.fromarray(lab).save(tmp_path / "a_mask.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "b_mask.png")
    Image.fromarray(img).save(tmp_path / "b.png")
    m = {"name": "bad", "labels": {0: "background", 1: "fg"}, "cases": [
        {"id": "a", "images": ["a.png"], "mask": "a_mask.png", "boxes": [[0, 0, 20, 4, 1]]},
        {"id": "b", "images": ["b.png"], "mask": "b_mask.png"},
        {"id": "c", "images": ["missing.png"]},
    ]}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(m))
    return p


def test_check_lists_every_problem_at_once(tmp_path):
    res = CliRunner().invoke(main, ["check", str(_bad_manifest(tmp_path))])
    assert res.exit_code == 1
    out = res.output
    assert "4 problem(s)" in out
    assert "case 'a'" in out and "label values [7] outside the declared classes" in out
    assert "box 0 [0.0, 0.0, 20.0, 4.0] lies outside the image" in out
    assert "case 'b'" in out and "has shape (8, 8)" in out
    assert "case 'c'" in out and "missing.png" in out


def test_train_refuses_bad_data_before_work(tmp_path):
    res = CliRunner().invoke(main, ["train", "--data", str(_bad_manifest(tmp_path)), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "problem(s)" in res.output
    assert not (tmp_path / "r").exists()


def test_train_unknown_config_key_suggests(tmp_path):
    data = make_dataset(tmp_path, n_train=2, n_test=0, shape=(32, 32))
    res = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "r"),
                                    "--set", "train.stpes=3"])
    assert res.exit_code == 2 and "did you mean 'steps'" in res.output


def test_train_minutes_sets_a_wall_clock_budget(tmp_path):
    data = make_dataset(tmp_path, n_train=2, n_test=0, shape=(32, 32))
    out = tmp_path / "r"
    res = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(out), "--minutes", "0.02",
                                    "--no-progress", "--set", "network.features=[4, 8]",
                                    "--set", "data.patch_size=[16, 16]", "--set", "train.val_every=1000"])
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["train"]["minutes"] == 0.02
    res = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "r0"), "--minutes", "0"])
    assert res.exit_code == 2 and "train.minutes must be > 0" in res.output


def test_simulate_writes_a_valid_manifest(tmp_path):
    data = make_dataset(tmp_path, n_train=3, n_test=1, shape=(32, 32))
    cases = [{"id": p.name[:-9], "images": [f"imagesTr/{p.name}"], "mask": f"labelsTr/{p.name[:-9]}.png"}
             for p in sorted((data / "imagesTr").iterdir())]
    manifest = data / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"name": "synth", "labels": {0: "background", 1: "vessel", 2: "organ"},
                                        "cases": cases}))
    res = CliRunner().invoke(main, ["simulate", str(manifest), "--out", str(tmp_path / "sim"),
                                    "--protocol", "boxes", "--param", "margin=1"])
    assert res.exit_code == 0, res.output
    sim = yaml.safe_load((tmp_path / "sim" / "manifest.yaml").read_text())
    assert all(c.get("boxes") and "mask" not in c for c in sim["cases"])
    res = CliRunner().invoke(main, ["check", str(tmp_path / "sim" / "manifest.yaml")])
    assert res.exit_code == 0, res.output


def test_demo_runs_end_to_end_within_a_wall_clock_budget(tmp_path):
    """`demo --minutes` trains for that budget (not --steps), then predicts, evaluates and prints the table."""
    import json

    res = CliRunner().invoke(main, ["demo", "--minutes", "0.05", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["completed"] and 3.0 <= metrics["train_seconds"] < 3.0 + 10.0 and metrics["steps"] < 1500
    assert f"trained {metrics['steps']} steps" in res.output
    assert "| dice |" in res.output and "vessel" in res.output and "organ" in res.output
    assert len(list((tmp_path / "pred").glob("*.png"))) == 8
