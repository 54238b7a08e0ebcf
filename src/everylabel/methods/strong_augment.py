"""Strong photometric augmentation of a batch of image tensors, for weak/strong consistency (FixMatch-style).

Sohn et al., "FixMatch: Simplifying semi-supervised learning with consistency and confidence", NeurIPS 2020, train on
a strongly augmented view (RandAugment-like distortions followed by Cutout, DeVries & Taylor 2017) against
pseudo-labels from the weakly augmented one. For segmentation the geometry must stay identical so that the
pseudo-label still lines up with the strong view; the distortions here are therefore photometric only, stronger than
the training augmentation's (``transforms.intensity``): intensity scale and shift, nnU-Net-style gamma (range and
first two moments kept), Gaussian blur, Gaussian noise, then Cutout (boxes filled with 0, the mean of a normalised
image). Cutout returns where it erased, so a loss can leave erased voxels out (their content cannot be inferred
pixel-wise; French et al., "Semi-supervised semantic segmentation needs strong, varied perturbations", BMVC 2020).

:class:`StrongAugment` samples per-sample parameters from torch's global generator (saved with checkpoints, so a
resumed run replays) and calls the deterministic functions below; everything runs on the batch's device, for 2D and
3D alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _spatial_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


def scale_shift(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x * scale + shift`` with one (B,) scale and shift per sample."""
    view = (-1,) + (1,) * (x.ndim - 1)
    return x * scale.view(view) + shift.view(view)


def gamma(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per sample and channel: rescale to [0, 1], raise to ``g[b]``, map back, keep mean and std (nnU-Net)."""
    dims = _spatial_dims(x)
    view = (-1,) + (1,) * (x.ndim - 1)
    lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    rng = (hi - lo).clamp_min(1e-8)
    mean, std = x.mean(dims, keepdim=True), x.std(dims, keepdim=True)
    out = ((x - lo) / rng).clamp(0, 1).pow(g.view(view)) * rng + lo
    return (out - out.mean(dims, keepdim=True)) / out.std(dims, keepdim=True).clamp_min(1e-8) * std + mean


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one (B,) sigma per sample, in voxels (sigma <= 0: unchanged); edges replicated."""
    out = []
    c, nd = x.shape[1], x.ndim - 2
    conv = F.conv2d if nd == 2 else F.conv3d
    for xi, s in zip(x, sigma.tolist()):
        xi = xi[None]
        if s > 0:
            r = max(1, int(math.ceil(3 * s)))
            t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
            k = torch.exp(-0.5 * (t / s) ** 2)
            k = k / k.sum()
            for axis in range(nd):
                shape = [1] * nd
                shape[axis] = 2 * r + 1
                pad = [0, 0] * nd
                pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = r
                xi = conv(F.pad(xi, pad, mode="replicate"), k.view(1, 1, *shape).expand(c, 1, *shape), groups=c)
        out.append(xi)
    return torch.cat(out)


def cutout(x: torch.Tensor, boxes: Sequence[Sequence[tuple[int, int]]], fill: float = 0.0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill one box per sample with ``fill``.

    Args:
        boxes: per sample, ``ndim`` (start, stop) pairs (an empty sequence: no box).

    Returns:
        ``(image, kept)``: the image and a (B, 1, *S) bool map, False inside the boxes.
    """
    x = x.clone()
    kept = torch.ones((x.shape[0], 1, *x.shape[2:]), dtype=torch.bool, device=x.device)
    for b, box in enumerate(boxes):
        if box:
            sl = tuple(slice(a, z) for a, z in box)
            x[(b, slice(None), *sl)] = fill
            kept[(b, 0, *sl)] = False
    return x, kept


class StrongAugment:
    """Sample and apply strong photometric distortions and Cutout to a (B, C, *S) batch.

    Args:
        scale: range of the multiplicative intensity factor.
        shift: range of the additive shift (units of the normalised image).
        gamma_range: range of gamma, applied with probability ``p``.
        blur_sigma: range of the blur sigma in voxels, applied with probability ``p``.
        noise_std: range of the noise std, applied with probability ``p``.
        cutout_size: maximum side of the Cutout box as a fraction of each axis (sides drawn from U(0, max));
            0 disables Cutout.
        p: probability of each of gamma, blur and noise (intensity scale and shift and Cutout always apply).

    Returns (when called):
        ``(strong image, kept)`` with ``kept`` (B, 1, *S) bool, False where Cutout erased the image.
    """

    def __init__(self, scale: tuple[float, float] = (0.6, 1.4), shift: tuple[float, float] = (-0.3, 0.3),
                 gamma_range: tuple[float, float] = (0.5, 2.0), blur_sigma: tuple[float, float] = (0.5, 1.5),
                 noise_std: tuple[float, float] = (0.0, 0.2), cutout_size: float = 0.5, p: float = 0.5):
        if not 0 <= cutout_size <= 1:
            raise ValueError(f"method.strong_cutout must be in [0, 1], got {cutout_size}")
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.scale, self.shift, self.gamma_range = scale, shift, gamma_range
        self.blur_sigma, self.noise_std, self.cutout_size, self.p = blur_sigma, noise_std, cutout_size, p

    @staticmethod
    def _uniform(n: int, bounds: tuple[float, float]) -> torch.Tensor:
        lo, hi = bounds
        return lo + (hi - lo) * torch.rand(n)

    def _gate(self, values: torch.Tensor, identity: float) -> torch.Tensor:
        return torch.where(torch.rand(len(values)) < self.p, values, torch.full_like(values, identity))

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, dev = x.shape[0], x.device
        with torch.autocast(dev.type, enabled=False):
            out = x.float()
            out = scale_shift(out, self._uniform(b, self.scale).to(dev), self._uniform(b, self.shift).to(dev))
            out = gamma(out, self._gate(self._uniform(b, self.gamma_range), 1.0).to(dev))
            out = gaussian_blur(out, self._gate(self._uniform(b, self.blur_sigma), 0.0))
            std = self._gate(self._uniform(b, self.noise_std), 0.0).to(dev)
            out = out + std.view((-1,) + (1,) * (x.ndim - 1)) * torch.randn_like(out)
            boxes = []
            for _ in range(b):
                if self.cutout_size == 0:
                    boxes.append(())
                    continue
                box = []
                for size in x.shape[2:]:
                    side = int(round(float(torch.rand(())) * self.cutout_size * size))
                    start = int(torch.randint(0, size - side + 1, ()))
                    box.append((start, start + side))
                boxes.append(tuple(box))
            out, kept = cutout(out, boxes)
        return out.to(x.dtype), kept
