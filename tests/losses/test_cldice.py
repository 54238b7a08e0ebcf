"""Soft skeleton and clDice losses: exact MONAI parity, gradients, masks, shapes, errors, geometric sanity."""

from __future__ import annotations

import pytest
import torch

from everylabel.losses import (
    LOSSES,
    SoftclDiceLoss,
    SoftDiceclDiceLoss,
    soft_cldice_loss,
    soft_dice_cldice_loss,
    soft_skeleton,
)

monai = pytest.importorskip("monai")
soft_skel = pytest.importorskip("monai.losses.cldice").soft_skel


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: with one thread no OpenMP wake-ups, which dominate the run time on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _inputs(ndim: int, b: int = 2, n: int = 3, size: int = 12, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((b, n) + (size,) * ndim, generator=g, dtype=dtype)
    target = torch.randint(0, n, (b, 1) + (size,) * ndim, generator=g)
    return logits, target


def _tube(ndim: int, size: int = 24, radius: float = 3.0) -> torch.Tensor:
    """Binary (1, 1, *S) tube along the last axis through the centre, with a gentle bend."""
    grid = torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * ndim, indexing="ij")
    c = (size - 1) / 2
    bend = 2.0 * torch.sin(grid[-1] / size * 3.14159)
    r2 = sum((g - c - bend) ** 2 for g in grid[:-1])
    inside = (r2 <= radius**2) & (grid[-1] >= 3) & (grid[-1] <= size - 4)
    return inside.float()[None, None]


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
def test_soft_skeleton_identical_to_monai(ndim, iterations):
    logits, _ = _inputs(ndim, n=2, size=16 if ndim == 2 else 10)
    for x in (torch.sigmoid(logits), logits, (logits > 0).float(), logits.double()):
        assert torch.equal(soft_skeleton(x, iterations), soft_skel(x, iterations))


@pytest.mark.parametrize("ndim", [2, 3])
def test_soft_skeleton_gradient_matches_monai(ndim):
    x = torch.sigmoid(_inputs(ndim, n=1, size=12)[0])
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    w = torch.rand_like(x)
    (soft_skeleton(a, 3) * w).sum().backward()
    (soft_skel(b, 3) * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("act", ["softmax", "sigmoid", "none"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cldice_identical_to_monai(ndim, include_background, act, reduction):
    logits, target = _inputs(ndim, size=12 if ndim == 2 else 8)
    kw = {"include_background": include_background, "reduction": reduction}
    if act == "none":  # probabilities and a one-hot target
        input, target, flags = torch.softmax(logits, 1), monai.networks.one_hot(target, 3), {}
    else:
        input, flags = logits, {act: True, "to_onehot_y": True}
    ours = soft_cldice_loss(input, target, **kw, **flags)
    ref = monai.losses.SoftclDiceLoss(**kw, **flags)(input, target)
    assert torch.equal(ours, ref)
    # the Dice term differs in the last bit: MONAI 1.6 builds Dice from tp/fp/fn, dice_loss from |X.Y|, |X|, |Y|
    ours = soft_dice_cldice_loss(input, target, alpha=0.3, **kw, **flags)
    ref = monai.losses.SoftDiceclDiceLoss(alpha=0.3, **kw, **flags)(input, target)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("iterations", [1, 4])
def test_cldice_options_identical_to_monai(iterations):
    logits, target = _inputs(2, n=1)
    target = (target > 0).float()[:, :1]
    kw = {"sigmoid": True, "smooth_nr": 0.5, "smooth_dr": 2.0, "smooth": 1e-3}
    ours = soft_cldice_loss(logits, target, iterations=iterations, **kw)
    assert torch.equal(ours, monai.losses.SoftclDiceLoss(iter_=iterations, **kw)(logits, target))


def test_reduction_none_differs_from_monai_only_in_shape():
    logits, target = _inputs(2)
    kw = {"to_onehot_y": True, "softmax": True, "reduction": "none"}
    ours = soft_cldice_loss(logits, target, **kw)
    ref = monai.losses.SoftclDiceLoss(**kw)(logits, target)
    assert ours.shape == (2, 1, 1, 1) and ref.shape == (2,)  # ours broadcasts against (B, N, H, W)
    assert torch.equal(ours.flatten(), ref)
    ours = soft_dice_cldice_loss(logits, target, **kw)
    ref = monai.losses.SoftDiceclDiceLoss(**kw)(logits, target)
    assert ours.shape == (2, 3, 1, 1) and ref.shape == (2, 3, 1, 2)  # MONAI: (B, N, 1, 1) + (B,) broadcast
    torch.testing.assert_close(ours[..., 0], torch.stack([ref[i, ..., i] for i in range(2)]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("fn", [soft_cldice_loss, soft_dice_cldice_loss])
def test_reduction_shapes(ndim, fn):
    logits, target = _inputs(ndim, size=8)
    kw = {"to_onehot_y": True, "softmax": True}
    none = fn(logits, target, reduction="none", **kw)
    assert none.shape == (2, 1 if fn is soft_cldice_loss else 3) + (1,) * ndim
    assert fn(logits, target, reduction="mean", **kw).shape == ()
    assert fn(logits, target, reduction="sum", **kw).shape == ()
    if fn is soft_cldice_loss:
        torch.testing.assert_close(fn(logits, target, **kw), none.mean())
        torch.testing.assert_close(fn(logits, target, reduction="sum", **kw), none.sum())
    no_bg = fn(logits, target, reduction="none", include_background=False, **kw)
    assert no_bg.shape[1] == (1 if fn is soft_cldice_loss else 2)


@pytest.mark.parametrize("ndim", [2, 3])
def test_function_equals_module(ndim):
    logits, target = _inputs(ndim, size=8)
    mask = torch.rand(target.shape) > 0.3
    kw = {"to_onehot_y": True, "softmax": True, "include_background": False, "iterations": 2}
    assert torch.equal(soft_cldice_loss(logits, target, mask=mask, **kw), SoftclDiceLoss(**kw)(logits, target, mask))
    assert torch.equal(soft_dice_cldice_loss(logits, target, mask=mask, alpha=0.7, **kw),
                       SoftDiceclDiceLoss(alpha=0.7, **kw)(logits, target, mask))
    assert LOSSES["cldice"] is SoftclDiceLoss and LOSSES["dice_cldice"] is SoftDiceclDiceLoss


def test_alpha_endpoints():
    logits, target = _inputs(2)
    kw = {"to_onehot_y": True, "softmax": True}
    cl = soft_cldice_loss(logits, target, **kw)
    assert torch.equal(soft_dice_cldice_loss(logits, target, alpha=1.0, **kw), cl)
    dice = monai.losses.DiceLoss(smooth_nr=1.0, smooth_dr=1.0, **kw)(logits, target)
    torch.testing.assert_close(soft_dice_cldice_loss(logits, target, alpha=0.0, **kw), dice)


def test_gradcheck_float64():
    x = torch.rand(1, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: soft_skeleton(v, 2), (x,))
    x = torch.rand(1, 1, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: soft_skeleton(v, 2), (x,))
    logits, target = _inputs(2, b=1, n=2, size=5, dtype=torch.float64, seed=3)
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[..., 0, :] = False
    logits.requires_grad_(True)
    for fn in (soft_cldice_loss, soft_dice_cldice_loss):
        assert torch.autograd.gradcheck(
            lambda v, fn=fn: fn(v, target, mask=mask, to_onehot_y=True, softmax=True, iterations=2), (logits,))


def test_3d_smoke_and_half_precision_input():
    logits, target = _inputs(3, b=1, n=2, size=10)
    logits.requires_grad_(True)
    for loss in (SoftclDiceLoss(to_onehot_y=True, softmax=True), SoftDiceclDiceLoss(sigmoid=True, to_onehot_y=True)):
        value = loss(logits, target)
        assert value.ndim == 0 and torch.isfinite(value)
        value.backward()
        assert torch.isfinite(logits.grad).all()
        assert loss(logits.detach().bfloat16(), target).dtype == torch.float32


def test_masked_loss_ignores_logits_outside_mask():
    logits, target = _inputs(2)
    mask = torch.zeros_like(target, dtype=torch.bool)
    mask[..., :6, :] = True
    changed = logits.clone()
    changed[..., 6:, :] += 10 * torch.randn_like(changed[..., 6:, :])
    for fn in (soft_cldice_loss, soft_dice_cldice_loss):
        a = logits.clone().requires_grad_(True)
        b = changed.clone().requires_grad_(True)
        la = fn(a, target, mask=mask, to_onehot_y=True, softmax=True)
        lb = fn(b, target, mask=mask, to_onehot_y=True, softmax=True)
        assert torch.equal(la, lb)
        la.backward()
        lb.backward()
        assert torch.equal(a.grad, b.grad)
        assert a.grad[..., 6:, :].abs().max() == 0


def test_perfect_binary_prediction_hand_computed():
    tube = _tube(2)
    # skeletons lie inside the tube, so Tprec = Tsens = 1 and the loss is 1 - 2 / (2 + smooth)
    loss = soft_cldice_loss(tube, tube, smooth=1e-4)
    torch.testing.assert_close(loss, torch.tensor(1 - 2 / (2 + 1e-4)))
    # prediction = background: no skeleton overlaps, Tprec = 1 / (|S_P| + 1), Tsens = 1 / (|S_L| + 1)
    tprec = 1 / (soft_skeleton(1 - tube).sum() + 1)
    tsens = 1 / (soft_skeleton(tube).sum() + 1)
    torch.testing.assert_close(soft_cldice_loss(1 - tube, tube), 1 - 2 * tprec * tsens / (tprec + tsens + 1e-4))


@pytest.mark.parametrize("ndim", [2, 3])
def test_thin_line_is_its_own_skeleton(ndim):
    line = torch.zeros((1, 1) + (12,) * ndim)
    line[(0, 0) + (6,) * (ndim - 1)] = 1.0  # 1 px straight line along the last axis
    torch.testing.assert_close(soft_skeleton(line, 3), line)
    diagonal = torch.zeros(1, 1, 12, 12)
    idx = torch.arange(1, 11)
    diagonal[0, 0, idx, idx] = 0.9
    torch.testing.assert_close(soft_skeleton(diagonal, 3), diagonal)


@pytest.mark.parametrize("ndim", [2, 3])
def test_skeleton_of_binary_tube_is_inside_near_centreline(ndim):
    from skimage.morphology import skeletonize

    tube = _tube(ndim, size=24 if ndim == 2 else 20)
    skel = soft_skeleton(tube, 4)
    assert skel.min() >= 0 and skel.max() <= 1
    assert skel[tube == 0].abs().max() == 0  # inside the tube
    assert 0 < (skel > 0.5).sum() < 0.3 * tube.sum()  # thin (the morphological skeleton need not be connected)
    hard = torch.from_numpy(skeletonize(tube[0, 0].bool().numpy())).float()[None, None]
    pool = torch.nn.functional.max_pool2d if ndim == 2 else torch.nn.functional.max_pool3d
    near_hard = pool(hard, 5, 1, 2)
    assert near_hard[skel > 0.5].min() == 1  # within 2 voxels of the hard skeleton


def test_bad_input_messages():
    with pytest.raises(ValueError, match=r"iterations must be an integer >= 1, got 0"):
        SoftclDiceLoss(iterations=0)
    with pytest.raises(ValueError, match=r"iterations must be an integer >= 1, got 2.5"):
        SoftDiceclDiceLoss(iterations=2.5)
    with pytest.raises(ValueError, match=r"iterations must be an integer >= 1, got -1"):
        soft_skeleton(torch.rand(1, 1, 4, 4), -1)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        SoftDiceclDiceLoss(alpha=1.5)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got -0.1"):
        soft_dice_cldice_loss(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), alpha=-0.1)
    with pytest.raises(ValueError, match="sigmoid=True and softmax=True are mutually exclusive"):
        SoftclDiceLoss(sigmoid=True, softmax=True)
    with pytest.raises(ValueError, match="reduction must be one of"):
        SoftDiceclDiceLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"smooth \(the harmonic-mean epsilon\) must be > 0, got 0"):
        SoftclDiceLoss(smooth=0)
    with pytest.raises(ValueError, match=r"expected a \(B, C, H, W\) or \(B, C, D, H, W\) tensor, got shape \(4, 4\)"):
        soft_skeleton(torch.rand(4, 4))
    logits, target = _inputs(2)
    with pytest.raises(ValueError, match=r"use to_onehot_y=True for index targets"):
        SoftclDiceLoss(softmax=True)(logits, target)
    with pytest.raises(ValueError, match=r"mask shape \(2, 3, 12, 12\) must be \(B, 1, \*S\)"):
        SoftclDiceLoss(softmax=True, to_onehot_y=True)(logits, target, torch.ones_like(logits))
    with pytest.raises(ValueError, match="softmax=True with a single channel is meaningless"):
        soft_cldice_loss(logits[:, :1], target, softmax=True)


@pytest.mark.slow
def test_compiled_skeleton_identical():
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():  # forward only: compiling the backward too takes ~20 s on 2 cores
        assert torch.equal(soft_skeleton(x, 2, compile=True), soft_skel(x, 2))
