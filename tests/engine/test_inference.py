from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from everylabel.engine.inference import compute_window_starts, gaussian_importance_map, sliding_window_inference

monai_inferers = pytest.importorskip("monai.inferers")
monai_data_utils = pytest.importorskip("monai.data.utils")


def _conv(spatial_dims: int, in_ch: int, out_ch: int, kernel: int) -> nn.Module:
    torch.manual_seed(0)
    return (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(in_ch, out_ch, kernel, padding=kernel // 2).eval()


def _small_net(spatial_dims: int, in_ch: int, out_ch: int) -> nn.Module:
    torch.manual_seed(0)
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return nn.Sequential(conv(in_ch, 4, 3, padding=1), nn.ReLU(), conv(4, out_ch, 3, padding=1)).eval()


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize(
    "shape, roi",
    [((2, 3, 50, 37), (16, 16)), ((1, 2, 21, 30, 17), (8, 12, 8))],
)
def test_identity_predictor_returns_input(mode, shape, roi):
    x = torch.randn(shape)
    out = sliding_window_inference(x, roi, lambda w: w, overlap=0.5, mode=mode, sw_batch_size=3)
    torch.testing.assert_close(out, x)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_pointwise_predictor_is_exact(spatial_dims):
    net = _conv(spatial_dims, 2, 3, kernel=1)
    x = torch.randn(2, 2, *(20, 13, 9)[:spatial_dims])
    out = sliding_window_inference(x, (8,) * spatial_dims, net, overlap=0.25)
    with torch.no_grad():
        torch.testing.assert_close(out, net(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_image_smaller_than_window(spatial_dims):
    x = torch.randn(1, 1, *(5, 12, 7)[:spatial_dims])
    roi = (16,) * spatial_dims
    calls = []

    def predictor(w: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(w.shape))
        return w * 2

    out = sliding_window_inference(x, roi, predictor)
    assert calls == [(1, 1, *roi)]
    torch.testing.assert_close(out, 2 * x)


def _smooth_image(shape: tuple[int, ...]) -> torch.Tensor:
    torch.manual_seed(1)
    low = torch.randn(*shape[:2], *(max(s // 6, 2) for s in shape[2:]))
    return F.interpolate(low, size=shape[2:], mode="bilinear" if len(shape) == 4 else "trilinear")


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize(
    "shape, roi, overlap",
    [((2, 2, 70, 45), (32, 24), 0.5), ((1, 1, 30, 26, 21), (16, 16, 12), 0.25), ((1, 2, 10, 40), (16, 16), 0.5)],
)
def test_parity_with_monai_pointwise(mode, shape, roi, overlap):
    # MONAI places windows on a fixed grid, nnU-Net (and we) spread them evenly: a pointwise predictor hides that.
    x = torch.randn(shape)
    net = _conv(len(shape) - 2, shape[1], 3, kernel=1)
    ours = sliding_window_inference(x, roi, net, overlap=overlap, mode=mode, sw_batch_size=2)
    with torch.no_grad():
        ref = monai_inferers.sliding_window_inference(x, roi, 2, net, overlap=overlap, mode=mode)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("shape, roi", [((2, 2, 48, 40), (16, 16)), ((1, 1, 32, 24, 16), (16, 16, 8))])
def test_parity_with_monai_conv_net_on_shared_windows(mode, shape, roi):
    # Image = roi + k * roi / 2: both placements coincide. sigma_scale=0.25 keeps MONAI's 1e-3 floor inactive.
    x = torch.randn(shape)
    net = _small_net(len(shape) - 2, shape[1], 3)
    ours = sliding_window_inference(x, roi, net, mode=mode, sigma_scale=0.25, sw_batch_size=3)
    with torch.no_grad():
        ref = monai_inferers.sliding_window_inference(x, roi, 3, net, overlap=0.5, mode=mode, sigma_scale=0.25)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "shape, roi", [((2, 2, 70, 45), (32, 24)), ((2, 1, 40, 37, 29), (16, 16, 16)), ((1, 1, 64, 50, 40), (24, 24, 24))]
)
def test_conv_net_labels_agree_with_whole_image_and_monai(shape, roi):
    x = _smooth_image(shape)
    net = _small_net(len(shape) - 2, shape[1], 3)
    ours = sliding_window_inference(x, roi, net).argmax(1)
    with torch.no_grad():
        whole = net(x).argmax(1)
        ref = monai_inferers.sliding_window_inference(x, roi, 4, net, overlap=0.5, mode="gaussian").argmax(1)
    assert (ours == whole).float().mean() > 0.999
    # MONAI floors its Gaussian at 1e-3, so near image borders it mixes in other windows' zero-padded edges and
    # departs from the whole-image labels by about 1%; the two sliding windows agree to that extent.
    assert (ours == ref).float().mean() > 0.98


MONAI_CASES = [  # (shape, roi, overlap): several grids, a shortened last step, padding on some or all axes, batch > 1
    ((2, 2, 70, 45), (32, 24), 0.5),
    ((1, 1, 50, 37), (16, 16), 0.6),
    ((3, 1, 10, 40), (16, 16), 0.25),
    ((1, 2, 33, 29), (8, 8), 0.0),
    ((2, 1, 30, 26, 21), (16, 16, 12), 0.25),
    ((1, 2, 9, 40, 33), (16, 16, 16), 0.5),
    ((2, 1, 5, 12, 7), (16, 16, 16), 0.5),
    ((1, 1, 28, 24, 21), (16, 24, 8), 0.75),
]


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("shape, roi, overlap", MONAI_CASES)
def test_monai_convention_equals_monai(mode, shape, roi, overlap):
    # A 3x3(x3) conv net sees the window borders, so any difference in placement, padding or weights would show.
    x = torch.randn(shape)
    net = _small_net(len(shape) - 2, shape[1], 3)
    ours = sliding_window_inference(x, roi, net, overlap=overlap, mode=mode, sw_batch_size=2, convention="monai")
    with torch.no_grad():
        ref = monai_inferers.sliding_window_inference(x, roi, 2, net, overlap=overlap, mode=mode)
    assert torch.equal(ours, ref)  # same windows per predictor call: same float operations in the same order


@pytest.mark.parametrize("sigma_scale", [0.125, 0.3, (0.1, 0.2)])
@pytest.mark.parametrize("shape, roi, overlap", [MONAI_CASES[0], MONAI_CASES[2], MONAI_CASES[5]])
def test_monai_convention_with_other_batching_and_sigma(sigma_scale, shape, roi, overlap):
    # MONAI at its default sw_batch_size=1 against our 3 windows per call: PyTorch may pick another convolution
    # kernel for another batch size, so the logits agree to float tolerance and the labels exactly.
    if len(roi) == 3 and not isinstance(sigma_scale, float):
        sigma_scale = (*sigma_scale, 0.15)
    x = torch.randn(shape)
    net = _small_net(len(shape) - 2, shape[1], 3)
    ours = sliding_window_inference(
        x, roi, net, overlap=overlap, sigma_scale=sigma_scale, sw_batch_size=3, convention="monai"
    )
    with torch.no_grad():
        ref = monai_inferers.sliding_window_inference(
            x, roi, 1, net, overlap=overlap, mode="gaussian", sigma_scale=sigma_scale
        )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.argmax(1), ref.argmax(1))


def test_monai_convention_with_unet():
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    net = monai_nets.UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    x = torch.randn(2, 1, 20, 17, 12)  # the UNet of the benchmark in small: instance norm, PReLU, residual units
    ours = sliding_window_inference(x, (12, 12, 12), net, overlap=0.5, sw_batch_size=1, convention="monai")
    with torch.no_grad():
        ref = monai_inferers.sliding_window_inference(x, (12, 12, 12), 1, net, overlap=0.5, mode="gaussian")
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_tta_flips_with_flip_equivariant_predictor(spatial_dims):
    torch.manual_seed(0)
    conv = _conv(spatial_dims, 1, 2, kernel=3)
    with torch.no_grad():  # a kernel symmetric under every flip makes the conv flip-equivariant
        w = conv.weight
        for axis in range(2, w.ndim):
            w.add_(w.flip(axis))
    x = torch.randn(1, 1, *(20, 18, 11)[:spatial_dims])
    roi = (8,) * spatial_dims
    plain = sliding_window_inference(x, roi, conv)
    flipped = sliding_window_inference(x, roi, conv, tta_flips=True)
    torch.testing.assert_close(flipped, plain, atol=1e-5, rtol=1e-5)


def test_tta_flips_calls_every_flip():
    calls = []

    def predictor(w: torch.Tensor) -> torch.Tensor:
        calls.append(w.clone())
        return w

    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = sliding_window_inference(x, (4, 4), predictor, tta_flips=True)
    assert len(calls) == 4
    assert {tuple(c.flatten()[:2].tolist()) for c in calls} == {(0.0, 1.0), (3.0, 2.0), (12.0, 13.0), (15.0, 14.0)}
    torch.testing.assert_close(out, x)


def test_list_output_num_classes_and_batching():
    sizes = []

    def predictor(w: torch.Tensor) -> list[torch.Tensor]:
        sizes.append(w.shape[0])
        return [w.repeat(1, 2, 1, 1), w[..., ::2, ::2]]

    x = torch.randn(3, 1, 24, 24)
    out = sliding_window_inference(x, (8, 8), predictor, overlap=0.0, sw_batch_size=4, num_classes=2)
    assert out.shape == (3, 2, 24, 24)
    assert sizes == [4] * 6 + [3]  # 3 images x 9 windows
    torch.testing.assert_close(out, x.repeat(1, 2, 1, 1))


def test_unet_predictor_and_progress():
    from everylabel.networks import UNet

    net = UNet(2, 1, 2, features=(4, 8, 16)).eval()
    out = sliding_window_inference(torch.randn(1, 1, 40, 30), (16, 16), net, progress=True)
    assert out.shape == (1, 2, 40, 30) and out.dtype == torch.float32


def test_window_starts_cover_the_image_flush():
    assert compute_window_starts((10,), (10,), 0.5) == [[0]]
    starts = compute_window_starts((100, 64, 33), (32, 32, 16), 0.5)
    assert starts[1] == [0, 16, 32]
    for axis, (image, roi) in enumerate(zip((100, 64, 33), (32, 32, 16))):
        s = starts[axis]
        assert s[0] == 0 and s[-1] == image - roi
        assert all(0 < b - a <= roi * 0.5 for a, b in itertools.pairwise(s))


def test_window_starts_monai_convention_match_dense_patch_slices():
    get_scan_interval = monai_inferers.utils._get_scan_interval
    for roi, image, overlap in itertools.product(range(1, 20), range(1, 50), (0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9)):
        image = max(image, roi)  # padded size
        interval = get_scan_interval((image,), (roi,), 1, (overlap,))
        ref = [s[0].start for s in monai_data_utils.dense_patch_slices((image,), (roi,), interval)]
        assert compute_window_starts((image,), (roi,), overlap, convention="monai") == [ref], (roi, image, overlap)
    starts = compute_window_starts((70, 45, 64), (32, 24, 64), 0.5, convention="monai")
    assert starts == [[0, 16, 32, 38], [0, 12, 21], [0]]


@pytest.mark.parametrize(
    "roi, sigma_scale",
    [((9, 16), 0.125), ((64, 64, 64), 0.125), ((32, 32), 0.3), ((7, 10, 5), (0.1, 0.2, 0.5)), ((3,), 0.02)],
)
def test_gaussian_importance_map_monai_convention(roi, sigma_scale):
    ours = gaussian_importance_map(roi, sigma_scale, convention="monai")
    ref = monai_data_utils.compute_importance_map(roi, mode="gaussian", sigma_scale=sigma_scale)
    assert torch.equal(ours, ref)
    assert ours.min() >= 1e-3


def test_gaussian_importance_map():
    w = gaussian_importance_map((9, 16))
    assert w.shape == (9, 16)
    assert w.min() > 0 and w.max() == 1
    torch.testing.assert_close(w, w.flip(0).flip(1))
    ref = monai_inferers.utils.compute_importance_map((9, 16), mode="gaussian", sigma_scale=0.125)
    unclamped = ref > ref.min()  # MONAI raises values below 1e-3 to 1e-3; we keep the Gaussian
    torch.testing.assert_close(w[unclamped], (ref / ref.max())[unclamped])
    assert w.min() < 1e-3
    tiny = gaussian_importance_map((32, 32, 32), sigma_scale=0.02)  # underflows in float32 without the floor
    assert tiny.min() > 0
    with pytest.raises(ValueError, match="sigma_scale must be a positive number"):
        gaussian_importance_map((8, 8), sigma_scale=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"inputs": torch.zeros(1, 8, 8)}, r"inputs must be a \(B, C, H, W\)"),
        ({"roi_size": (8,)}, "roi_size must have 2 entries"),
        ({"roi_size": (8, 0)}, "roi_size must be a sequence of positive integers"),
        ({"overlap": 1.0}, r"overlap must be in \[0, 1\)"),
        ({"sw_batch_size": 0}, "sw_batch_size must be a positive integer"),
        ({"mode": "linear"}, "mode must be one of"),
        ({"convention": "MONAI"}, r"convention must be one of \('nnunet', 'monai'\), got 'MONAI'"),
        ({"num_classes": 3}, "predictor returned 1 channels, expected 3"),
        ({"predictor": lambda w: w[..., :4]}, "predictor must keep the window size"),
        ({"predictor": lambda w: w[:1]}, "predictor must return logits of shape"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    args = {"inputs": torch.zeros(2, 1, 8, 8), "roi_size": (8, 8), "predictor": lambda w: w}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sliding_window_inference(**args)
