"""CRF / Potts regularised loss: bilateral-grid filter vs the exact dense filter, gradients, behaviour, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from everylabel.losses.crf import CRFLoss, bilateral_filter, crf_loss


def dense_affinity(image: torch.Tensor, sigma_xy, sigma_intensity: float) -> torch.Tensor:
    """Exact W (P, P) of one (C, *S) image in float64; ``sigma_xy`` a number or one per spatial axis."""
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in image.shape[1:]], indexing="ij")
    pos = torch.stack([g.reshape(-1) for g in grids], 1) / torch.as_tensor(sigma_xy, dtype=torch.float64)
    feats = torch.cat([pos, image.reshape(image.shape[0], -1).T.double() / sigma_intensity], 1)
    return torch.exp(-0.5 * torch.cdist(feats, feats) ** 2)


def dense_filter(values: torch.Tensor, image: torch.Tensor, sigma_xy: float, sigma_intensity: float,
                 normalize: bool = True) -> torch.Tensor:
    out = []
    for v, im in zip(values, image):
        w = dense_affinity(im, sigma_xy, sigma_intensity)
        f = v.reshape(v.shape[0], -1).double() @ w  # W symmetric
        out.append(f / w.sum(0) if normalize else f)
    return torch.stack(out).reshape(values.shape)


def dense_loss(logits: torch.Tensor, image: torch.Tensor, sigma_xy: float, sigma_intensity: float,
               mask: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
    """Per-sample loss of ``crf_loss`` with the exact W (differentiable, float64)."""
    b, n = logits.shape[:2]
    s = torch.softmax(logits.double(), 1).reshape(b, n, -1)
    m = torch.ones(b, 1, s.shape[2], dtype=torch.float64) if mask is None else mask.reshape(b, 1, -1).double()
    out = []
    for i in range(b):
        w = dense_affinity(image[i], sigma_xy, sigma_intensity)
        ms = s[i] * m[i]
        per_voxel = (ms * ((m[i] - ms) @ w)).sum(0)
        if normalize:
            per_voxel = per_voxel / (m[i] @ w).clamp_min(1e-12)
        out.append(per_voxel.sum() / m[i].sum().clamp_min(1.0))
    return torch.stack(out)


def scene(size: int = 32, ndim: int = 2, channels: int = 1, batch: int = 1, seed: int = 0, dtype=torch.float32):
    """Disc + step + ramp + noise guide (roughly z-scored) and smooth two-class logits."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.linspace(-1, 1, size, dtype=torch.float64)] * ndim, indexing="ij")
    base = (sum(a**2 for a in axes) < 0.4).double() + 0.5 * (axes[-1] > 0.3).double() + 0.3 * axes[0]
    image = base + 0.1 * torch.randn((batch, channels) + (size,) * ndim, generator=g, dtype=torch.float64)
    if channels > 1:
        image[:, 1] += 0.5 * (axes[0] > 0).double()
    image = (image - image.mean()) / image.std()
    pool = F.avg_pool2d if ndim == 2 else F.avg_pool3d
    logits = pool(torch.randn((batch, 2) + (size,) * ndim, generator=g, dtype=torch.float64) * 6, 5, 1, 2)
    return image.to(dtype), logits.to(dtype)


@pytest.mark.parametrize(("sigma_xy", "sigma_intensity"), [(3.0, 0.15), (5.0, 0.3), (12.0, 0.5)])
def test_filter_matches_exact_2d(sigma_xy, sigma_intensity):
    image, logits = scene(32)
    prob = torch.softmax(logits, 1)
    ref = dense_filter(prob, image, sigma_xy, sigma_intensity)
    err = (bilateral_filter(prob, image, sigma_xy, sigma_intensity).double() - ref).abs()
    assert err.mean() < 0.004 and err.max() < 0.025  # measured 0.0031 / 0.015 at sigma_xy 3, less above
    ref_u = dense_filter(prob, image, sigma_xy, sigma_intensity, normalize=False)
    approx_u = bilateral_filter(prob, image, sigma_xy, sigma_intensity, normalize=False).double()
    assert (approx_u - ref_u).abs().mean() / ref_u.mean() < 0.03  # the unnormalised scale is right too


def test_filter_matches_exact_3d_and_anisotropic():
    image, logits = scene(12, ndim=3)
    prob = torch.softmax(logits, 1)
    err = (bilateral_filter(prob, image, 3.0, 0.3).double() - dense_filter(prob, image, 3.0, 0.3)).abs()
    assert err.mean() < 0.003
    assert torch.allclose(bilateral_filter(prob, image, (3.0, 3.0, 3.0), 0.3), bilateral_filter(prob, image, 3.0, 0.3))
    # anisotropic voxels (e.g. thick slices): one sigma per axis, in voxels
    aniso = bilateral_filter(prob, image, (1.5, 3.0, 4.0), 0.3).double()
    assert (aniso - dense_filter(prob, image, (1.5, 3.0, 4.0), 0.3)).abs().mean() < 0.003


def test_filter_rgb_full_grid_and_pca_projection():
    image, logits = scene(24, channels=3)
    prob = torch.softmax(logits, 1)
    ref = dense_filter(prob, image, 4.0, 0.5)
    full = (bilateral_filter(prob, image, 4.0, 0.5).double() - ref).abs().mean()
    assert full < 0.008  # 5D grid: 1 cell per sigma by default (measured 0.0058)
    finer = (bilateral_filter(prob, image, 4.0, 0.5, cells_per_sigma=1.5).double() - ref).abs().mean()
    assert finer < 0.003  # measured 0.0018
    # grey replicated in 3 channels: one principal component holds all of it, sigma scales by sqrt(3)
    grey = image[:, :1]
    rgb = grey.expand(-1, 3, -1, -1)
    ref_grey = dense_filter(prob, grey, 4.0, 0.5 / math.sqrt(3))
    assert (bilateral_filter(prob, rgb, 4.0, 0.5, intensity_dims=1).double() - ref_grey).abs().mean() < 0.004


def test_loss_matches_dense_loss_and_gradient():
    image, logits = scene(16, batch=2, dtype=torch.float64)
    mask = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    mask[1, :, :5] = False
    for normalize in (True, False):
        a = logits.clone().requires_grad_(True)
        b = logits.clone().requires_grad_(True)
        ours = crf_loss(a, image, sigma_xy=3.0, sigma_intensity=0.3, mask=mask, normalize=normalize,
                        reduction="none").flatten()
        ref = dense_loss(b, image, 3.0, 0.3, mask=mask, normalize=normalize)
        assert torch.allclose(ours, ref, rtol=0.02)
        ours.sum().backward()
        ref.sum().backward()
        rel = (a.grad - b.grad).norm() / b.grad.norm()
        assert rel < 0.05
        assert F.cosine_similarity(a.grad.flatten(), b.grad.flatten(), dim=0) > 0.998


def test_gradcheck_float64():
    image, logits = scene(6, dtype=torch.float64)
    logits = (logits * 0.3).requires_grad_(True)
    mask = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(1)) > 0.3
    for normalize in (True, False):
        assert torch.autograd.gradcheck(
            lambda x, normalize=normalize: crf_loss(x, image, sigma_xy=2.0, sigma_intensity=0.5, mask=mask,
                                                    normalize=normalize), (logits,))
    values = torch.rand(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: bilateral_filter(v, image[..., :5, :5], 2.0, 0.5), (values,))
    assert torch.autograd.gradgradcheck(lambda v: bilateral_filter(v, image[..., :5, :5], 2.0, 0.5), (values,))


def test_constant_segmentation_costs_nothing():
    image, _ = scene(32)
    hard = torch.zeros(1, 3, 32, 32)
    hard[:, 1] = 30.0
    assert crf_loss(hard, image).abs() < 1e-6
    assert crf_loss(hard, image, normalize=False).abs() < 1e-4
    uniform = torch.zeros(1, 3, 32, 32)  # maximal uncertainty: 1 - 1/N whatever the image
    assert torch.isclose(crf_loss(uniform, image), torch.tensor(2 / 3), atol=1e-5)


def test_boundary_on_an_edge_is_cheaper_than_through_a_uniform_region():
    image = torch.zeros(1, 1, 32, 32)
    image[..., 16:] = 2.0  # dark left half, bright right half
    image += 0.05 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    on_edge = torch.zeros(1, 2, 32, 32)
    on_edge[:, 0, :, :16] = on_edge[:, 1, :, 16:] = 20.0
    through_uniform = torch.zeros(1, 2, 32, 32)
    through_uniform[:, 0, :, :8] = through_uniform[:, 1, :, 8:] = 20.0
    loss_edge = crf_loss(on_edge, image, sigma_xy=5.0, sigma_intensity=0.3)
    loss_cut = crf_loss(through_uniform, image, sigma_xy=5.0, sigma_intensity=0.3)
    assert loss_edge < 1e-3 < loss_cut
    assert loss_cut > 50 * loss_edge
    # without the intensity term (huge sigma) both cuts cost the same, so the preference comes from the image
    flat_edge = crf_loss(on_edge, image, sigma_xy=5.0, sigma_intensity=1e3)
    flat_cut = crf_loss(through_uniform, image, sigma_xy=5.0, sigma_intensity=1e3)
    assert torch.isclose(flat_edge, flat_cut, rtol=0.05)


def test_gradient_pulls_towards_the_edge():
    image = torch.zeros(1, 1, 24, 24)
    image[..., 12:] = 2.0
    logits = torch.zeros(1, 2, 24, 24)
    logits[:, 0, :, :12] = logits[:, 1, :, 12:] = 4.0
    logits[:, 0, :, 10:12], logits[:, 1, :, 10:12] = 0.0, 1.0  # a strip leaning to class 1 on the dark side
    logits.requires_grad_(True)
    crf_loss(logits, image, sigma_xy=6.0, sigma_intensity=0.3).backward()
    # descending the gradient lowers class 1 (raises class 0) on the dark strip, like its dark neighbours
    assert (logits.grad[0, 1, :, 10:12] > 0).all() and (logits.grad[0, 0, :, 10:12] < 0).all()


def test_mask_excludes_voxels_from_value_and_gradient():
    image, logits = scene(20, batch=2)
    mask = torch.zeros(2, 1, 20, 20, dtype=torch.bool)
    mask[..., :12, :] = True
    changed = logits.clone()
    changed[..., 12:, :] += 5 * torch.randn(changed[..., 12:, :].shape)
    a, b = logits.clone().requires_grad_(True), changed.clone().requires_grad_(True)
    la, lb = crf_loss(a, image, mask=mask), crf_loss(b, image, mask=mask)
    assert torch.allclose(la, lb, atol=1e-6)
    la.backward()
    lb.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-7)
    assert a.grad[..., 12:, :].abs().max() == 0
    empty = crf_loss(a, image, mask=torch.zeros_like(mask), reduction="none")
    assert torch.equal(empty, torch.zeros(2, 1, 1, 1))


@pytest.mark.parametrize("ndim", [2, 3])
def test_reductions_module_and_smoke(ndim):
    image, logits = scene(10, ndim=ndim, batch=2)
    logits = torch.cat([logits, -logits[:, :1]], 1).requires_grad_(True)  # three classes
    none = crf_loss(logits, image, reduction="none")
    assert none.shape == (2,) + (1,) * (ndim + 1)
    assert torch.allclose(crf_loss(logits, image), none.mean())
    assert torch.allclose(crf_loss(logits, image, reduction="sum"), none.sum())
    assert torch.allclose(CRFLoss(sigma_xy=2.0, sigma_intensity=0.2)(logits, image),
                          crf_loss(logits, image, sigma_xy=2.0, sigma_intensity=0.2))
    value = CRFLoss()(logits, image)
    value.backward()
    assert value.ndim == 0 and 0 < value < 2 / 3 and torch.isfinite(logits.grad).all()


def test_half_precision_is_upcast():
    image, logits = scene(16)
    value = crf_loss(logits.to(torch.bfloat16), image)
    assert value.dtype == torch.float32
    assert torch.isclose(value, crf_loss(logits, image), atol=1e-2)


def test_errors():
    image, logits = scene(8)
    with pytest.raises(ValueError, match="sigma_xy must be a number > 0"):
        crf_loss(logits, image, sigma_xy=0.0)
    with pytest.raises(ValueError, match="sigma_intensity must be a number > 0"):
        CRFLoss(sigma_intensity=-1.0)
    with pytest.raises(ValueError, match="sigma_intensity must be a number > 0"):
        crf_loss(logits, image, sigma_intensity=float("nan"))
    with pytest.raises(ValueError, match=r"sigma_xy must be a number or a sequence of 2 \(one per spatial axis"):
        crf_loss(logits, image, sigma_xy=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match=r"sigma_intensity must be a number or a sequence of 1 \(one per image"):
        bilateral_filter(logits, image, 2.0, (0.1, 0.2))
    with pytest.raises(ValueError, match=r"image shape \(1, 1, 8, 7\) must be \(B, C, \*S\)"):
        crf_loss(logits, image[..., :7])
    with pytest.raises(ValueError, match=r"input must be \(B, N, H, W\) or \(B, N, D, H, W\)"):
        crf_loss(logits[0], image[0])
    with pytest.raises(ValueError, match="image must be a floating-point tensor"):
        crf_loss(logits, (image > 0).long())
    with pytest.raises(ValueError, match="image has NaN or infinite values"):
        crf_loss(logits, image.masked_fill(image > 1, float("nan")))
    with pytest.raises(ValueError, match="input needs N >= 2 channels"):
        crf_loss(logits[:, :1], image)
    with pytest.raises(ValueError, match=r"mask shape \(1, 2, 8, 8\) must be \(B, 1, \*S\)"):
        crf_loss(logits, image, mask=torch.ones(1, 2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="reduction must be one of"):
        CRFLoss(reduction="avg")
    with pytest.raises(ValueError, match="intensity_dims must be None or an integer >= 1"):
        crf_loss(logits, image, intensity_dims=0)
    with pytest.raises(ValueError, match="cells_per_sigma must be None or a number >= 0.75"):
        CRFLoss(cells_per_sigma=0.5)
    big = torch.randn(1, 1, 64, 64)
    with pytest.raises(ValueError, match="the bilateral grid would need"):
        crf_loss(torch.zeros(1, 2, 64, 64), big, sigma_xy=1.0, sigma_intensity=1e-4)
