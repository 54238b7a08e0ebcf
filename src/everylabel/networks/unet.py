"""A 2D/3D U-Net with deep-supervision heads, residual stages and attention gates.

The layout follows nnU-Net's ``PlainConvUNet`` (Isensee et al., "nnU-Net: a self-configuring method for deep
learning-based biomedical image segmentation", Nature Methods 2021): every stage is two 3x3(x3) convolutions with
normalisation and LeakyReLU(0.01), the first convolution of a stage downsamples by its stride, the decoder upsamples
with a transposed convolution and concatenates the skip connection, and every decoder level has a 1x1 head.

Options:
    - ``residual=True`` turns every stage into a residual block, conv-norm-act, conv-norm, add shortcut, act (He et
      al., "Deep Residual Learning for Image Recognition", CVPR 2016), with a 1x1 projection when the shape changes.
    - ``attention=True`` gates every skip connection with an additive attention gate (Oktay et al., "Attention
      U-Net: Learning Where to Look for the Pancreas", MIDL 2018); the gating signal is the coarser decoder level.
    - ``stem_stride=2`` makes the first convolution strided, as MONAI's ``UNet`` does (Kerfoot et al., "Left-Ventricle
      Quantification Using Residual U-Net", STACOM 2018): the first stage runs at half resolution and a transposed
      convolution + normalisation + LeakyReLU brings the last decoder level back to full resolution (with a quarter
      of its channels, ``stem_features``) for a 1x1 head, an extra output in front of the others. No 3x3 convolution
      runs at full resolution: with the same parameters a training step costs about 2/3 in 2D and 2/5 in 3D
      (BENCHMARKS.md, "U-Net layouts").

CPU speed: activations and weights are kept in channels-last memory format, where oneDNN convolutions are about
twice as fast; normalisation + LeakyReLU is one autograd node written for that layout, and the 1x1 heads are matrix
products. No ``torch.compile`` is needed. In the nnU-Net layout the cost is dominated by the full-resolution stage (two
convolutions in the encoder, two in the decoder), hence its thin first stage by default; the strided stem removes
that stage, and it is what everylabel trains by default (``network.stem_stride: 2`` in the config; this class keeps
``stem_stride=1`` as its own default).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["UNet"]

DEFAULT_FEATURES = (8, 16, 32, 64, 128, 256)
"""Default channels of the nnU-Net layout (stem_stride 1): thin at full resolution, where the compute is."""
STEM_FEATURES = (16, 32, 64, 128, 256)
"""Default channels behind a strided stem: MONAI's UNet channels, the first stage at half resolution."""

NORMS = ("instance", "batch", "group", "none")
_NEGATIVE_SLOPE = 0.01


def _is_positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class _Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that avoids a torch CPU bf16 bug on inputs at most 2 voxels deep along an axis.

    With torch 2.13 the bf16 weight gradient of a 3x3x3 convolution with padding 1 whose input is 2 voxels deep comes
    out NaN in 10-40 % of calls with finite inputs (either memory format, stride 1; 2D, depths of 1 or >= 3 and
    padding 0 are unaffected). The bottleneck of a 64^3 patch is 2^3, so 3D training in bf16 diverged within its
    first steps. Under CPU autocast such inputs are zero-padded explicitly and convolved with ``padding=0``: the
    same convolution, still in bf16, without the NaN (none in 864 probe calls over depths, widths, strides and
    memory formats, against 37 NaN calls with ``padding=1``; test). A convolution without padding on such an input
    runs in float32 instead (a float32 fallback for every such convolution was 4x slower for the 256-channel
    bottleneck, about 8 ms of a 3D training step).
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and min(x.shape[2:]) <= 2 and _cpu_autocast_enabled():
            if self.padding_mode == "zeros" and not isinstance(self.padding, str) and any(self.padding):
                pad = tuple(p for p in reversed(self.padding) for _ in range(2))  # (w, w, h, h, d, d)
                return F.conv3d(F.pad(x, pad), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def _conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else _Conv3d


class _Pointwise(nn.Module):
    """1x1(x1) convolution computed as a matrix product over the channel axis.

    oneDNN's channels-last kernels are very slow for 1x1 convolutions with few output channels (the segmentation
    heads), so the product is done by ``F.linear`` on a channels-last view instead. The parameters are those of a
    1x1 ``nn.Conv{2,3}d``.
    """

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.stride = stride
        self.conv = _conv(spatial_dims)(in_ch, out_ch, 1, stride=stride, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[(slice(None), slice(None)) + (slice(None, None, self.stride),) * (x.ndim - 2)]
        y = F.linear(x.movedim(1, -1), self.conv.weight.flatten(1), self.conv.bias)  # (B, *S, N)
        return y.movedim(-1, 1)


class _GroupNormActFunction(torch.autograd.Function):
    """Group normalisation followed by an optional LeakyReLU, in one autograd node.

    Works on a channels-last view ``(B, N, G, C / G)`` so that channels-last activations are neither copied nor
    reordered; the variance is computed in two passes for accuracy. PyTorch's own CPU group norm is several times
    slower on channels-last 3D tensors (and its input gradient there loses precision on large volumes).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float, slope: float | None) -> Tensor:
        batch, channels = x.shape[:2]
        xv = x.movedim(1, -1).reshape(batch, -1, groups, channels // groups)  # (B, N, G, Cg)
        count = xv.shape[1] * xv.shape[3]
        centred = xv - xv.mean((1, 3), keepdim=True)
        rstd = ((centred * centred).sum((1, 3), keepdim=True) / count + eps).rsqrt_()  # (B, 1, G, 1)
        scale = rstd * weight.view(1, 1, groups, -1)  # (B, 1, G, Cg)
        y = torch.addcmul(bias.view(1, 1, groups, -1), centred, scale)
        if slope is not None:
            F.leaky_relu(y, slope, inplace=True)
        ctx.save_for_backward(centred, y, rstd, weight)
        ctx.slope = slope
        ctx.spatial = x.shape[2:]
        return y.reshape(batch, *x.shape[2:], channels).movedim(-1, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        centred, y, rstd, weight = ctx.saved_tensors
        batch, _, groups, per_group = centred.shape
        count = centred.shape[1] * per_group
        grad = grad_y.movedim(1, -1).reshape(centred.shape)  # (B, N, G, Cg)
        if ctx.slope is not None:
            grad = torch.ops.aten.leaky_relu_backward(grad, y, ctx.slope, True)
        sum_grad = grad.sum(1, keepdim=True)  # (B, 1, G, Cg)
        sum_grad_xhat = (grad * centred).sum(1, keepdim=True) * rstd  # (B, 1, G, Cg)
        grad_weight = sum_grad_xhat.sum((0, 1)).flatten()
        grad_bias = sum_grad.sum((0, 1)).flatten()
        weight = weight.view(1, 1, groups, per_group)
        # grad_x = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = grad * weight and means over each group.
        k1 = (weight * sum_grad_xhat).sum(3, keepdim=True) * rstd.square() / -count  # (B, 1, G, 1)
        k0 = (weight * sum_grad).sum(3, keepdim=True) * rstd / -count
        grad_x = torch.addcmul(k0, centred, k1).addcmul_(grad, rstd * weight)
        grad_x = grad_x.reshape(batch, *ctx.spatial, groups * per_group).movedim(-1, 1)
        return grad_x, grad_weight, grad_bias, None, None, None


class _GroupNormAct(nn.Module):
    """GroupNorm (``groups == channels`` is InstanceNorm with affine) + optional LeakyReLU, see above."""

    def __init__(self, channels: int, groups: int, act: bool, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups = groups
        self.eps = eps
        self.slope = _NEGATIVE_SLOPE if act else None
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        # Normalisation statistics in float32 also under autocast; the next convolution casts back down.
        with torch.autocast(x.device.type, enabled=False):
            x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            return _GroupNormActFunction.apply(x, self.weight, self.bias, self.groups, self.eps, self.slope)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, groups={self.groups}, eps={self.eps}, leaky_relu={self.slope}"


def _norm_act(name: str, spatial_dims: int, channels: int, act: bool) -> nn.Module:
    if name in ("instance", "group"):
        return _GroupNormAct(channels, channels if name == "instance" else math.gcd(channels, 8), act)
    layers: list[nn.Module] = []
    if name == "batch":
        layers.append((nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels))
    if act:
        layers.append(nn.LeakyReLU(_NEGATIVE_SLOPE, inplace=True))
    return nn.Sequential(*layers) if len(layers) != 1 else layers[0]


class _ConvNormAct(nn.Sequential):
    """conv3x3 -> norm -> LeakyReLU (the activation is optional)."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride: int, norm: str, act: bool = True) -> None:
        super().__init__(
            _conv(spatial_dims)(in_ch, out_ch, 3, stride=stride, padding=1, bias=norm == "none"),
            _norm_act(norm, spatial_dims, out_ch, act),
        )


class _Stage(nn.Module):
    """Two conv-norm-act blocks; the first one carries the stride. Optionally residual and with dropout."""

    def __init__(
        self,
        spatial_dims: int,
        in_ch: int,
        out_ch: int,
        stride: int,
        norm: str,
        residual: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.conv1 = _ConvNormAct(spatial_dims, in_ch, out_ch, stride, norm)
        self.conv2 = _ConvNormAct(spatial_dims, out_ch, out_ch, 1, norm, act=not residual)
        self.skip: nn.Module | None = None
        if residual:
            if in_ch != out_ch or stride != 1:
                self.skip = nn.Sequential(
                    _Pointwise(spatial_dims, in_ch, out_ch, stride, bias=norm == "none"),
                    _norm_act(norm, spatial_dims, out_ch, act=False),
                )
            else:
                self.skip = nn.Identity()
        self.drop: nn.Module = nn.Identity()
        if dropout > 0:
            self.drop = (nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d)(dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        if self.skip is not None:
            y = F.leaky_relu(y + self.skip(x), _NEGATIVE_SLOPE, inplace=True)
        return self.drop(y)


class _AttentionGate(nn.Module):
    """Additive attention gate of Oktay et al. (MIDL 2018).

    The skip features ``x`` are brought to the gating resolution with a strided convolution (kernel = stride),
    added to a 1x1 projection of the gating signal ``g``, passed through ReLU, a 1x1 convolution and a sigmoid;
    the resulting coefficients are upsampled (bilinear/trilinear) and multiply ``x``.
    """

    def __init__(self, spatial_dims: int, skip_ch: int, gate_ch: int, stride: int) -> None:
        super().__init__()
        inter = max(skip_ch // 2, 1)
        self.theta_x = (
            _conv(spatial_dims)(skip_ch, inter, stride, stride=stride, bias=False)
            if stride > 1
            else _Pointwise(spatial_dims, skip_ch, inter, bias=False)
        )
        self.phi_g = _Pointwise(spatial_dims, gate_ch, inter)
        self.psi = _Pointwise(spatial_dims, inter, 1)
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        alpha = torch.sigmoid(self.psi(F.relu(self.theta_x(x) + self.phi_g(g), inplace=True)))  # (B, 1, *S_g)
        if alpha.shape[2:] != x.shape[2:]:
            alpha = F.interpolate(alpha, size=x.shape[2:], mode=self.mode, align_corners=False)
        return x * alpha


class UNet(nn.Module):
    """U-Net for 2D and 3D segmentation returning logits at every decoder scale.

    Args:
        spatial_dims: 2 or 3.
        in_channels: number of input channels C.
        out_channels: number of output classes N (logits per class).
        features: channels of each stage, shallowest first; ``len(features)`` is the depth (number of stages).
            The default depends on the layout (:meth:`default_features`): with ``stem_stride=1`` (8, 16, 32, 64,
            128, 256) (1.9 M parameters in 2D, 5.7 M in 3D), thin at full resolution, where the compute is, and
            wide at the bottom, where the parameters are (nnU-Net itself uses (32, 64, 128, 256, 512, 512)); behind
            a strided stem MONAI's (16, 32, 64, 128, 256), with the same total stride (32).
        norm: ``"instance"``, ``"batch"``, ``"group"`` (8 groups or fewer) or ``"none"``.
        residual: make every stage a residual block (1x1 projection on the shortcut when the shape changes).
        attention: gate the skip connections with additive attention gates (Oktay et al., MIDL 2018).
        dropout: channel dropout probability applied at the end of every stage, in ``[0, 1)``.
        strides: downsampling factor between consecutive stages, ``len(features) - 1`` positive integers;
            defaults to 2 everywhere.
        stem_stride: stride of the very first convolution (1: nnU-Net layout, the first stage at full resolution;
            2: MONAI-like strided stem, see the module docstring).
        stem_features: channels of the full-resolution map of a strided stem; defaults to ``features[0] // 4``
            (at least 1): at full resolution every channel is costly (4 instead of 8 makes a 3D step about 12 % cheaper)
            and the map only has to carry the half-resolution features to the 1x1 head.

    Shapes:
        - Input: (B, C, *S) with every spatial size divisible by :attr:`divisor`.
        - Output: list of :attr:`num_outputs` tensors, full resolution first: (B, N, *S), (B, N, *S / s_0), ...
          (``depth - 1`` of them, one more with a strided stem, whose second output is at ``S / stem_stride``).

    Example:
        >>> net = UNet(2, in_channels=1, out_channels=3)
        >>> [o.shape for o in net(torch.zeros(2, 1, 64, 64))][:2]
        [torch.Size([2, 3, 64, 64]), torch.Size([2, 3, 32, 32])]
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] | None = None,
        norm: str = "instance",
        residual: bool = False,
        attention: bool = False,
        dropout: float = 0.0,
        strides: Sequence[int] | None = None,
        stem_stride: int = 1,
        stem_features: int | None = None,
    ) -> None:
        super().__init__()
        features = self.default_features(stem_stride) if features is None else tuple(features)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not _is_positive_int(value):
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if len(features) < 2:
            raise ValueError(f"features must list at least 2 stages (depth >= 2), got {features!r}.")
        if not all(_is_positive_int(f) for f in features):
            raise ValueError(f"features must be positive integers, got {features!r}.")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        strides = (2,) * (len(features) - 1) if strides is None else tuple(strides)
        if len(strides) != len(features) - 1:
            raise ValueError(
                f"strides must have len(features) - 1 = {len(features) - 1} entries, got {len(strides)}: {strides!r}."
            )
        if not all(_is_positive_int(s) for s in strides):
            raise ValueError(f"strides must be positive integers, got {strides!r}.")
        if not _is_positive_int(stem_stride):
            raise ValueError(f"stem_stride must be a positive integer, got {stem_stride!r}.")
        stem_features = max(int(features[0]) // 4, 1) if stem_features is None else stem_features
        if not _is_positive_int(stem_features):
            raise ValueError(f"stem_features must be a positive integer, got {stem_features!r}.")
        in_channels, out_channels, stem_stride = int(in_channels), int(out_channels), int(stem_stride)
        features, strides = tuple(int(f) for f in features), tuple(int(s) for s in strides)

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        self.strides = strides
        self.stem_stride = stem_stride
        self.attention = attention
        self._stem = stem_stride > 1
        self.num_outputs = len(features) - 1 + self._stem
        self._memory_format = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d

        transposed = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
        stage_strides = (stem_stride, *strides)
        self.encoder = nn.ModuleList(
            _Stage(spatial_dims, c_in, c_out, s, norm, residual, dropout)
            for c_in, c_out, s in zip((in_channels, *features[:-1]), features, stage_strides)
        )
        # Decoder modules are indexed by the level they produce, 0 = full resolution.
        levels = range(len(features) - 1)
        self.upsample = nn.ModuleList(
            transposed(features[i + 1], features[i], strides[i], stride=strides[i]) for i in levels
        )
        self.gates = nn.ModuleList(
            _AttentionGate(spatial_dims, features[i], features[i + 1], strides[i]) if attention else nn.Identity()
            for i in levels
        )
        self.decoder = nn.ModuleList(
            _Stage(spatial_dims, 2 * features[i], features[i], 1, norm, residual, dropout) for i in levels
        )
        self.heads = nn.ModuleList(_Pointwise(spatial_dims, features[i], out_channels) for i in levels)
        if self._stem:  # back to full resolution: transposed conv -> norm -> act -> 1x1 head
            stem_features = int(stem_features)
            self.stem_up = nn.Sequential(
                transposed(features[0], stem_features, stem_stride, stride=stem_stride, bias=norm == "none"),
                _norm_act(norm, spatial_dims, stem_features, act=True),
            )
            self.stem_head = _Pointwise(spatial_dims, stem_features, out_channels)
        self.apply(self._init_weights)
        self.to(memory_format=self._memory_format)

    @staticmethod
    def default_features(stem_stride: int = 1) -> tuple[int, ...]:
        """The channels used when ``features`` is not given, for a stem of this stride."""
        return DEFAULT_FEATURES if stem_stride == 1 else STEM_FEATURES

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, a=_NEGATIVE_SLOPE)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def divisor(self) -> int:
        """Every input spatial size must be a multiple of this number (the product of all strides)."""
        return self.stem_stride * math.prod(self.strides)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"UNet(spatial_dims={self.spatial_dims}) expects input (B, C, *S) with {self.spatial_dims + 2} "
                f"dimensions, got shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects {self.in_channels} input channels, got shape {tuple(x.shape)}.")
        size = tuple(x.shape[2:])
        if any(s % self.divisor for s in size):
            raise ValueError(
                f"UNet input spatial size {size} must be divisible by {self.divisor} "
                f"(stem_stride {self.stem_stride} x strides {self.strides}); pad or crop the input."
            )

    def _decode(self, x: Tensor, num_heads: int) -> list[Tensor]:
        self._check_input(x)
        x = x.contiguous(memory_format=self._memory_format)
        skips: list[Tensor] = []
        for stage in self.encoder:
            skips.append(x := stage(x))
        outputs: list[Tensor] = []
        offset = int(self._stem)  # output index of decoder level 0
        for level in reversed(range(len(self.decoder))):
            skip = skips[level]
            if self.attention:
                skip = self.gates[level](skip, x)
            x = self.decoder[level](torch.cat([self.upsample[level](x), skip], dim=1))
            if level + offset < num_heads:
                outputs.append(self.heads[level](x).contiguous())
        if self._stem:
            outputs.append(self.stem_head(self.stem_up(x)).contiguous())
        return outputs[::-1]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Logits at every decoder scale, in train and eval mode alike.

        Args:
            x: input image.

        Shapes:
            - x: (B, C, *S)
            - returns: list of ``num_outputs`` tensors (B, N, *S), (B, N, *S / s_0), ... full resolution first.

        Returns:
            Logits per scale; callers that want a single prediction take element 0 or use :meth:`predict_logits`.
        """
        return self._decode(x, self.num_outputs)

    def predict_logits(self, x: Tensor) -> Tensor:
        """Full-resolution logits only; the coarse heads are skipped.

        Shapes:
            - x: (B, C, *S)
            - returns: (B, N, *S)
        """
        return self._decode(x, 1)[0]
