"""The unlabelled entropy / mutual-information option shared by every method (Grandvalet & Bengio 2005)."""

from __future__ import annotations

import pytest
import torch

from everylabel.experiments.config import load_config
from everylabel.losses.entropy import entropy_loss, mutual_information_loss
from everylabel.methods import Supervised, build_method
from everylabel.networks import UNet


@pytest.mark.parametrize("name", ["supervised", "mean_teacher", "self_training", "multilabel", "mean_taught"])
@pytest.mark.parametrize("mode", ["entropy", "mi"])
def test_entropy_term_is_added_on_unannotated_pixels(name, mode, make_sample, make_batch):
    batch = make_batch(make_sample(torch.randn(1, 8, 8), labels=torch.randint(0, 3, (8, 8))),
                       make_sample(torch.randn(1, 8, 8)))
    net = UNet(2, 1, 3, features=(4, 8))
    base = [f"method.name={name}", "method.noise_std=0"]
    plain = build_method(load_config(None, base).method)
    with_entropy = build_method(load_config(None, base + ["method.unlabelled_entropy_weight=0.5",
                                                          f"method.entropy_mode={mode}"]).method)
    assert with_entropy.uses_unlabelled
    results = []
    for method in (plain, with_entropy):
        method.setup(net)
        torch.manual_seed(0)
        results.append(method(net, batch))
    a, b = results
    mask = batch.roi & ~batch.valid
    expected = entropy_loss(b["output"], mask=mask) if mode == "entropy" else \
        mutual_information_loss(b["output"], mask=mask)
    assert torch.allclose(b["unlabelled_entropy"], expected)
    assert torch.allclose(b["loss"], a["loss"] + 0.5 * expected, atol=1e-6)
    assert "unlabelled_entropy" not in a


def test_bad_entropy_settings():
    with pytest.raises(ValueError, match="entropy_mode must be one of"):
        Supervised().configure_entropy(1.0, "marginal")
    with pytest.raises(ValueError, match="unlabelled_entropy_weight must be >= 0"):
        Supervised().configure_entropy(-1.0)
    assert not Supervised().configure_entropy(0.0).uses_unlabelled
