"""The trainer's AdamW is torch's fused kernel where available and takes the same steps as the per-tensor loop."""

from __future__ import annotations

import torch

from everylabel.engine.trainer import build_optimizer
from everylabel.experiments.config import load_config
from everylabel.networks import UNet


def test_adamw_is_fused_and_matches_the_reference_update():
    torch.manual_seed(0)
    a = UNet(2, 1, 2, features=(4, 8, 16))
    b = UNet(2, 1, 2, features=(4, 8, 16))
    b.load_state_dict(a.state_dict())
    start = {k: v.clone() for k, v in a.state_dict().items()}
    cfg = load_config(None, ["optim.weight_decay=0.01"])
    fused = build_optimizer(cfg, a.parameters())
    assert fused.defaults["fused"] is True
    ref = torch.optim.AdamW(b.parameters(), lr=3e-3, weight_decay=0.01)
    x = torch.randn(2, 1, 16, 16)
    for _ in range(3):
        for net, opt in ((a, fused), (b, ref)):
            opt.zero_grad()
            sum(o.square().mean() for o in net(x)).backward()
            opt.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
    assert all(not torch.equal(p, start[name]) for name, p in a.named_parameters())  # every parameter moved
