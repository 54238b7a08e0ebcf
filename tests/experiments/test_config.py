from __future__ import annotations

import pytest

from everylabel.experiments.config import Config, config_from_dict, load_config, parse_set_options


def test_defaults_round_trip_yaml(tmp_path):
    cfg = Config()
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    assert load_config(p) == cfg


def test_partial_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  steps: 10\nnetwork:\n  residual: true\n")
    cfg = load_config(p, ["train.seed=3", "data.patch_size=[64, 64]", "optim.lr=0.01"])
    assert cfg.train.steps == 10 and cfg.train.seed == 3 and cfg.network.residual
    assert cfg.data.patch_size == (64, 64) and cfg.optim.lr == 0.01
    assert cfg.train.val_every == Config().train.val_every


def test_unknown_key_suggests_nearest():
    with pytest.raises(ValueError, match=r"unknown config key 'stpes' in config.train; did you mean 'steps'\?"):
        config_from_dict({"train": {"stpes": 5}})
    with pytest.raises(ValueError, match=r"did you mean 'network'\?"):
        load_config(None, ["netwrk.residual=true"])


def test_type_errors_are_clear():
    with pytest.raises(ValueError, match="expects an integer"):
        config_from_dict({"train": {"steps": "many"}})
    with pytest.raises(ValueError, match="key=value"):
        parse_set_options(["train.steps"])
