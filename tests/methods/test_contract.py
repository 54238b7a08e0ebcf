"""Every entry of ``METHODS``, built from the config: 2D and 3D smoke on a batch mixing a mask, boxes, tags and an
unlabelled sample; a finite loss with a gradient, full-resolution output, teacher handling."""

from __future__ import annotations

import pytest
import torch

from everylabel.experiments.config import load_config
from everylabel.methods import METHODS, build_method
from everylabel.networks import UNet


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name, spatial_dims, make_sample, make_batch):
    torch.manual_seed(0)
    shape = (8,) * spatial_dims
    box = [1.0] * spatial_dims + [5.0] * spatial_dims
    batch = make_batch(make_sample(torch.randn(1, *shape), labels=torch.randint(0, 3, shape)),
                       make_sample(torch.randn(1, *shape), boxes=[box], box_labels=[2]),
                       make_sample(torch.randn(1, *shape), tags=[1, 0, 1]),
                       make_sample(torch.randn(1, *shape)))
    net = UNet(spatial_dims, 1, 3, features=(4, 8))
    method = build_method(load_config(None, [f"method.name={name}", "method.pseudo_threshold=0.0"]).method)
    method.setup(net)
    out = method(net, batch, step=1, total_steps=4)
    assert out["output"].shape == (4, 3, *shape) and torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    method.after_step(net, 1)
    inference = method.inference_network(net)
    assert inference is net or not any(p.requires_grad for p in inference.parameters())
