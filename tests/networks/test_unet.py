from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from everylabel.networks import NETWORKS, UNet, build_network
from everylabel.networks.unet import _GroupNormAct

SMALL = (4, 8, 16)  # depth 3: divisor 4, outputs at S, S/2


def _input(spatial_dims: int, size: int = 16, batch: int = 2, channels: int = 1) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(batch, channels, *(size,) * spatial_dims)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_output_shapes_full_resolution_first(spatial_dims):
    net = UNet(spatial_dims, in_channels=2, out_channels=3, features=(4, 8, 16, 32))
    outputs = net(_input(spatial_dims, channels=2))
    assert isinstance(outputs, list)
    assert len(outputs) == net.num_outputs == 3
    for level, out in enumerate(outputs):
        assert out.shape == (2, 3, *(16 // 2**level,) * spatial_dims)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("attention", [False, True])
def test_variants_shapes_and_predict_logits(spatial_dims, residual, attention):
    net = UNet(spatial_dims, 1, 2, features=SMALL, residual=residual, attention=attention, dropout=0.1).eval()
    x = _input(spatial_dims)
    outputs = net(x)
    assert isinstance(outputs, list)  # eval mode still returns every scale
    assert [o.shape for o in outputs] == [(2, 2, *(16,) * spatial_dims), (2, 2, *(8,) * spatial_dims)]
    torch.testing.assert_close(net.predict_logits(x), outputs[0])


@pytest.mark.parametrize("norm", ["instance", "batch", "group", "none"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_norm_variants(norm, spatial_dims):
    net = UNet(spatial_dims, 1, 2, features=(8, 16, 24), norm=norm)
    outputs = net(_input(spatial_dims))
    assert outputs[0].shape == (2, 2, *(16,) * spatial_dims)
    assert all(torch.isfinite(o).all() for o in outputs)


def test_instance_norm_matches_torch_instance_norm():
    net = UNet(2, 1, 2, features=SMALL, norm="instance")
    stage = net.encoder[1]
    reference = torch.nn.Sequential(stage.conv1[0], torch.nn.InstanceNorm2d(8, affine=True), torch.nn.LeakyReLU(0.01))
    x = net.encoder[0](_input(2))
    torch.testing.assert_close(stage.conv1(x), reference(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("groups, act", [(6, True), (2, False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_act_gradcheck_and_reference(groups, act, channels_last):
    torch.manual_seed(0)
    layer = _GroupNormAct(6, groups, act=act).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 6, 3, 4, 5, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    expected = F.group_norm(x, groups, layer.weight, layer.bias, 1e-5)
    expected = F.leaky_relu(expected, 0.01) if act else expected
    torch.testing.assert_close(layer(x), expected)
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradients_reach_every_parameter(spatial_dims):
    net = UNet(spatial_dims, 1, 2, features=SMALL, residual=True, attention=True)
    loss = sum(o.square().mean() for o in net(_input(spatial_dims)))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_bf16_autocast(spatial_dims):
    net = UNet(spatial_dims, 1, 2, features=SMALL, attention=True)
    x = _input(spatial_dims)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = net(x)
        loss = sum(o.float().square().mean() for o in outputs)
    loss.backward()
    assert outputs[0].shape == (2, 2, *(16,) * spatial_dims)
    assert torch.isfinite(loss)
    torch.testing.assert_close(outputs[0].float(), net(x)[0], atol=0.1, rtol=0.1)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_last_input_and_module(spatial_dims):
    fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    net = UNet(spatial_dims, 1, 2, features=SMALL, residual=True).eval()
    x = _input(spatial_dims, channels=1)
    expected = net(x)
    net = net.to(memory_format=fmt)
    outputs = net(x.to(memory_format=fmt))
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_divisor_and_custom_strides():
    net = UNet(2, 1, 2, features=(4, 8, 16, 32), strides=(2, 1, 2))
    assert net.divisor == 4
    assert [tuple(o.shape[2:]) for o in net(torch.zeros(1, 1, 12, 8))] == [(12, 8), (6, 4), (6, 4)]
    assert UNet(3, 1, 2, features=(4, 8, 16, 32, 64)).divisor == 16


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("attention", [False, True])
def test_strided_stem_shapes_and_predict_logits(spatial_dims, attention):
    net = UNet(spatial_dims, 1, 3, features=SMALL, stem_stride=2, attention=attention).eval()
    assert net.divisor == 8 and net.num_outputs == 3  # one output more than depth - 1
    assert net.stem_head.conv.in_channels == 1  # full-resolution map: a quarter of the first stage's 4 channels
    x = _input(spatial_dims)
    outputs = net(x)
    assert [tuple(o.shape[2:]) for o in outputs] == [(16,) * spatial_dims, (8,) * spatial_dims, (4,) * spatial_dims]
    torch.testing.assert_close(net.predict_logits(x), outputs[0])
    # The first stage runs at half resolution: no 3x3 convolution produces a full-resolution map.
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[2:])))
             for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) and m.kernel_size[0] == 3]
    net.predict_logits(x)
    for h in hooks:
        h.remove()
    assert len(seen) == 2 * (2 * len(SMALL) - 1) and max(seen) == (8,) * spatial_dims


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_strided_stem_gradients_and_stem_features(spatial_dims):
    net = UNet(spatial_dims, 2, 2, features=SMALL, stem_stride=2, stem_features=3, residual=True)
    assert net.stem_head.conv.in_channels == 3
    loss = sum(o.square().mean() for o in net(_input(spatial_dims, channels=2)))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match=r"must be divisible by 8 \(stem_stride 2"):
        net(torch.zeros(1, 2, *(12,) * spatial_dims))


def test_indivisible_input_raises():
    net = UNet(2, 1, 2, features=(4, 8, 16, 32))
    with pytest.raises(ValueError, match=r"\(20, 16\) must be divisible by 8"):
        net(torch.zeros(1, 1, 20, 16))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3"),
        ({"in_channels": 0}, "in_channels must be a positive integer"),
        ({"out_channels": 2.5}, "out_channels must be a positive integer"),
        ({"features": ()}, "at least 2 stages"),
        ({"features": (8,)}, "at least 2 stages"),
        ({"features": (8, 0, 16)}, "features must be positive integers"),
        ({"norm": "layer"}, "norm must be one of"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
        ({"strides": (2,)}, "strides must have len"),
        ({"strides": (2, 0)}, "strides must be positive integers"),
        ({"stem_stride": 0}, "stem_stride must be a positive integer"),
        ({"stem_stride": 2, "stem_features": 0}, "stem_features must be a positive integer"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": (4, 8, 16)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        UNet(**args)


def test_bad_input_shapes_raise():
    net = UNet(3, 2, 2, features=SMALL)
    with pytest.raises(ValueError, match="expects input"):
        net(torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="expects 2 input channels"):
        net(torch.zeros(1, 1, 16, 16, 16))


def test_registry():
    assert NETWORKS == {"unet": UNet}
    net = build_network("unet", spatial_dims=2, in_channels=1, out_channels=2, features=SMALL)
    assert isinstance(net, UNet)
    with pytest.raises(ValueError, match="Unknown network 'vnet'; valid names are: unet"):
        build_network("vnet")


def test_default_features_parameter_count():
    net = UNet(2, 1, 2)
    params = sum(p.numel() for p in net.parameters())
    assert 1.2e6 < params < 2.2e6  # close to MONAI's UNet(2, 1, 2, (16, 32, 64, 128, 256), num_res_units=2)


def test_conv3d_on_two_voxel_deep_input_has_finite_bf16_gradients():
    """torch's CPU bf16 weight gradient of a 3x3x3 convolution with padding 1 on an input 2 voxels deep is
    intermittently NaN; the U-Net's 3D convolutions pad such inputs explicitly (the 2^3 bottleneck of a 64^3 patch)
    and stay in bf16. Without padding they run in float32."""
    from everylabel.networks.unet import _Conv3d

    torch.manual_seed(0)
    conv = _Conv3d(64, 64, 3, padding=1, bias=False)
    plain = torch.nn.Conv3d(64, 64, 3, padding=1, bias=False)
    plain.load_state_dict(conv.state_dict())
    for _ in range(30):
        conv.weight.grad = None
        x = torch.randn(2, 64, 2, 4, 4, requires_grad=True)
        g = torch.randn(2, 64, 2, 4, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
            y_plain = plain(x.detach())
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), y_plain.float(), atol=0.05, rtol=0.02)  # the same convolution
        (y.float() * g).sum().backward()
        assert torch.isfinite(conv.weight.grad).all() and torch.isfinite(x.grad).all()
    unpadded = _Conv3d(64, 8, 2, stride=2, bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert unpadded(torch.randn(1, 64, 2, 4, 4)).dtype == torch.float32
        assert unpadded(torch.randn(1, 64, 4, 4, 4)).dtype == torch.bfloat16  # larger inputs keep bf16
    x = torch.randn(2, 64, 2, 4, 4)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv3d(x, conv.weight, padding=1))  # fp32 untouched
