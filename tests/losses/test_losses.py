"""Contract tests for every loss in LOSSES, MONAI parity, and masked-region invariance."""

from __future__ import annotations

import pytest
import torch

from everylabel.losses import LOSSES, DiceCELoss, DiceLoss, dice_ce_loss, dice_loss, masked_cross_entropy

monai = pytest.importorskip("monai")


def _inputs(ndim: int, b: int = 2, n: int = 3, size: int = 8, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (b, n) + (size,) * ndim
    logits = torch.randn(shape, generator=g, dtype=dtype)
    target = torch.randint(0, n, (b, 1) + (size,) * ndim, generator=g)
    return logits, target


def _call(name, module, logits, target, mask=None):
    return module(logits, target, mask)


def _make(name, **kw):
    if name in ("dice", "cldice", "dice_cldice"):
        return LOSSES[name](to_onehot_y=True, softmax=True, **kw)
    return LOSSES[name](**kw)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("ndim", [2, 3])
def test_contract_smoke_and_gradcheck(name, ndim):
    logits, target = _inputs(ndim, size=4, dtype=torch.float64)
    logits.requires_grad_(True)
    loss = _make(name)
    value = _call(name, loss, logits, target)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()

    def f(x):
        return _call(name, loss, x, target).double()

    small = logits.detach()[:1, :, :3, :3].clone().requires_grad_(True)
    t_small = target[:1, :, :3, :3]
    assert torch.autograd.gradcheck(lambda x: _call(name, loss, x, t_small).double(), (small,), eps=1e-6,
                                    atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_function_equals_module(ndim):
    logits, target = _inputs(ndim)
    assert torch.allclose(dice_loss(logits, target, to_onehot_y=True, softmax=True),
                          DiceLoss(to_onehot_y=True, softmax=True)(logits, target))
    assert torch.allclose(dice_ce_loss(logits, target), DiceCELoss()(logits, target))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("batch", [False, True])
def test_dice_matches_monai(reduction, batch):
    logits, target = _inputs(2)
    ours = dice_loss(logits, target, to_onehot_y=True, softmax=True, reduction=reduction, batch=batch)
    ref = monai.losses.DiceLoss(to_onehot_y=True, softmax=True, reduction=reduction, batch=batch)(logits, target)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_ce_matches_monai(ndim, include_background):
    logits, target = _inputs(ndim)
    ours = dice_ce_loss(logits, target, include_background=include_background)
    ref = monai.losses.DiceCELoss(to_onehot_y=True, softmax=True, include_background=include_background)(
        logits, target)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_masked_losses_ignore_logits_outside_mask():
    logits, target = _inputs(2)
    mask = torch.zeros_like(target, dtype=torch.bool)
    mask[..., :4, :] = True
    changed = logits.clone()
    changed[..., 4:, :] += 10 * torch.randn_like(changed[..., 4:, :])
    for fn in (lambda x: dice_ce_loss(x, target, mask=mask), lambda x: masked_cross_entropy(x, target, mask=mask),
               lambda x: dice_loss(x, target, mask=mask, to_onehot_y=True, softmax=True)):
        a = logits.clone().requires_grad_(True)
        b = changed.clone().requires_grad_(True)
        la, lb = fn(a), fn(b)
        assert torch.allclose(la, lb, atol=1e-6)
        la.backward()
        lb.backward()
        assert torch.allclose(a.grad, b.grad, atol=1e-7)
        assert a.grad[..., 4:, :].abs().max() == 0


def test_masked_ce_hand_computed():
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 2.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[[0, 1]]]])
    mask = torch.tensor([[[[True, False]]]])
    # only pixel 0 counts: logits (0, 0), class 0 -> log 2
    assert torch.isclose(masked_cross_entropy(logits, target, mask=mask), torch.log(torch.tensor(2.0)))
    assert masked_cross_entropy(logits, target, mask=torch.zeros_like(mask)) == 0


def test_contradictory_flags_raise():
    with pytest.raises(ValueError, match="sigmoid=True and softmax=True"):
        DiceLoss(sigmoid=True, softmax=True)
    with pytest.raises(ValueError, match="reduction must be one of"):
        DiceLoss(reduction="avg")
    with pytest.raises(ValueError, match="lambda_dice and lambda_ce must be >= 0"):
        DiceCELoss(lambda_dice=-1)
