"""The trainer's AdamW is torch's fused kernel where available and takes the same steps as the per-tensor loop."""

from __future__ import annotations

import pytest
import torch

from everylabel.engine.trainer import TrainClock, build_optimizer, lr_lambda
from everylabel.experiments.config import DEFAULT_LR, load_config
from everylabel.networks import UNet


def test_adamw_is_fused_and_matches_the_reference_update():
    torch.manual_seed(0)
    a = UNet(2, 1, 2, features=(4, 8, 16))
    b = UNet(2, 1, 2, features=(4, 8, 16))
    b.load_state_dict(a.state_dict())
    start = {k: v.clone() for k, v in a.state_dict().items()}
    cfg = load_config(None, ["optim.weight_decay=0.01"])
    fused = build_optimizer(cfg, a.parameters())
    assert fused.defaults["fused"] is True and fused.defaults["lr"] == DEFAULT_LR["adamw"] == 5e-3
    ref = torch.optim.AdamW(b.parameters(), lr=5e-3, weight_decay=0.01)
    x = torch.randn(2, 1, 16, 16)
    for _ in range(3):
        for net, opt in ((a, fused), (b, ref)):
            opt.zero_grad()
            sum(o.square().mean() for o in net(x)).backward()
            opt.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
    assert all(not torch.equal(p, start[name]) for name, p in a.named_parameters())  # every parameter moved


def test_schedule_follows_the_fraction_of_a_wall_clock_budget():
    clock = TrainClock(total_steps=100, minutes=1.0)
    f = lr_lambda("poly", 100, 0, progress=clock.fraction)
    clock.now_s = 30.0  # half the budget spent, whatever the step
    assert f(7) == f(90) == (1 - 0.5) ** 0.9
    assert not clock.finished(10_000)  # train.steps is ignored under a budget
    assert clock.projected_steps(200) == 400  # 200 steps took half the budget
    clock.now_s = 60.0
    assert clock.finished(1) and f(1) == 0.0
    # warm-up stays counted in steps
    assert lr_lambda("poly", 100, 10, progress=clock.fraction)(4) == 0.5
    # without a budget: steps
    steps = TrainClock(total_steps=100, minutes=None)
    assert steps.fraction(50) == 0.5 and steps.finished(100) and not steps.finished(99)
    assert steps.projected_steps(3) == 100
    with pytest.raises(ValueError, match="train.minutes must be > 0"):
        TrainClock(total_steps=100, minutes=0)


def test_optim_lr_overrides_the_default_and_sgd_keeps_nnunets():
    net = UNet(2, 1, 2, features=(4, 8))
    assert build_optimizer(load_config(None, ["optim.lr=0.003"]), net.parameters()).defaults["lr"] == 0.003
    sgd = build_optimizer(load_config(None, ["optim.name=sgd"]), net.parameters())
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["lr"] == 1e-2 and sgd.defaults["nesterov"]
    with pytest.raises(ValueError, match="optim.name must be 'adamw' or 'sgd', got 'adam'"):
        build_optimizer(load_config(None, ["optim.name=adam"]), net.parameters())
