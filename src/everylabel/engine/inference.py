"""Sliding-window inference with Gaussian blending and mirror test-time augmentation.

Windows are placed as in nnU-Net (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based
biomedical image segmentation", Nature Methods 2021, ``compute_steps_for_sliding_window``): the number of windows per
axis is the smallest that keeps the step at most ``roi * (1 - overlap)``, and the windows are spread evenly so that
the first one starts at 0 and the last one ends flush with the border. Overlapping predictions are blended with a
Gaussian importance map (centre pixels count more than border pixels), as nnU-Net and MONAI do.

``convention="monai"`` reproduces MONAI's ``monai.inferers.sliding_window_inference`` instead (Cardoso et al., "MONAI:
An open-source framework for deep learning in healthcare", arXiv:2211.02701, 2022): windows on a fixed grid of step
``int(roi * (1 - overlap))`` with the last one moved back inside the image, MONAI's Gaussian map (not normalised,
raised to at least 1e-3) and its floating-point order of operations, so that with the same predictor the blended
logits equal MONAI's.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["compute_window_starts", "gaussian_importance_map", "sliding_window_inference"]

BLEND_MODES = ("gaussian", "constant")
CONVENTIONS = ("nnunet", "monai")


def gaussian_importance_map(
    roi_size: Sequence[int],
    sigma_scale: float | Sequence[float] = 0.125,
    *,
    convention: str = "nnunet",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Separable Gaussian weights centred on the window, used to blend overlapping window predictions.

    Args:
        roi_size: window size, one entry per spatial axis.
        sigma_scale: standard deviation as a fraction of the window size (per axis or one for all).
        convention: ``"nnunet"``: computed in float64, divided by its maximum, only underflowed zeros raised;
            ``"monai"``: MONAI's ``compute_importance_map`` (float32 product of unnormalised 1D Gaussians, values
            below 1e-3 raised to 1e-3), value for value.
        device: device of the returned map.
        dtype: dtype of the returned map.

    Shapes:
        - returns: ``roi_size``

    Returns:
        Weights with every value > 0, largest at the centre (1 with ``"nnunet"``).
    """
    roi_size = _check_sizes(roi_size, "roi_size")
    scales = (sigma_scale,) * len(roi_size) if isinstance(sigma_scale, (int, float)) else tuple(sigma_scale)
    if len(scales) != len(roi_size) or any(s <= 0 for s in scales):
        raise ValueError(
            f"sigma_scale must be a positive number or {len(roi_size)} positive numbers, got {sigma_scale!r}."
        )
    _check_convention(convention)
    if convention == "monai":
        return _monai_importance_map(roi_size, scales).to(device=device, dtype=dtype)
    weights = torch.ones((), dtype=torch.float64)
    for axis, (size, scale) in enumerate(zip(roi_size, scales)):
        coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        profile = torch.exp(-(coords**2) / (2 * (scale * size) ** 2))
        weights = weights.unsqueeze(-1) * profile.view((1,) * axis + (size,))
    weights = (weights / weights.max()).to(dtype)
    # Only underflowed zeros are raised (to the smallest positive weight, as nnU-Net does). MONAI clamps at 1e-3,
    # which near image corners gives a window's border as much weight as another window's centre.
    weights = weights.clamp_(min=weights[weights > 0].min())
    return weights.to(device)


def _monai_importance_map(roi_size: tuple[int, ...], scales: tuple[float, ...]) -> Tensor:
    """MONAI 1.x ``compute_importance_map(mode="gaussian")`` with the same float32 operations in the same order."""
    weights = torch.ones(())
    for axis, (size, scale) in enumerate(zip(roi_size, scales)):
        sigma = size * scale
        coords = torch.arange(start=-(size - 1) / 2.0, end=(size - 1) / 2.0 + 1, dtype=torch.float)
        profile = torch.exp(coords**2 / (-2 * sigma**2))
        weights = weights.unsqueeze(-1) * profile if axis > 0 else profile
    return weights.clamp_(min=max(weights.min().item(), 1e-3))


def compute_window_starts(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float, convention: str = "nnunet"
) -> list[list[int]]:
    """Start index of every window along every axis.

    Args:
        image_size: spatial size of the (padded) image; every entry must be >= the matching ``roi_size`` entry.
        roi_size: window size.
        overlap: fraction of the window shared by neighbouring windows, in ``[0, 1)``.
        convention: ``"nnunet"`` (``compute_steps_for_sliding_window``: the fewest windows whose step is at most
            ``roi * (1 - overlap)``, spread evenly) or ``"monai"`` (``dense_patch_slices``: step
            ``int(roi * (1 - overlap))``, the whole image when ``roi == image``, the last window moved back to end
            at the border, so the last step can be shorter).

    Returns:
        One ascending list of start indices per axis; the first is 0 and the last is ``image - roi``.
    """
    _check_convention(convention)
    starts = []
    for image, roi in zip(image_size, roi_size):
        if image < roi:
            raise ValueError(f"image size {tuple(image_size)} is smaller than roi_size {tuple(roi_size)}; pad first.")
        if convention == "monai":
            step = roi if roi == image else max(int(roi * (1 - overlap)), 1)
            num = next(i for i in itertools.count() if i * step + roi >= image) + 1
            starts.append([min(i * step, image - roi) for i in range(num)])
            continue
        target_step = max(roi * (1.0 - overlap), 1.0)
        num = math.ceil((image - roi) / target_step) + 1
        step = (image - roi) / (num - 1) if num > 1 else 0.0
        starts.append([round(step * i) for i in range(num)])
    return starts


def sliding_window_inference(
    inputs: Tensor,
    roi_size: Sequence[int],
    predictor: Callable[[Tensor], Tensor | Sequence[Tensor]],
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    mode: str = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    convention: str = "nnunet",
    tta_flips: bool = False,
    num_classes: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    """Predict a whole image window by window and blend the window logits.

    Args:
        inputs: images, 2D or 3D.
        roi_size: window size, one entry per spatial axis. Images smaller than the window are zero-padded
            symmetrically and the padding is cropped from the result.
        predictor: maps a batch of windows (n, C, *roi) to logits (n, N, *roi), or to a list/tuple whose element 0
            is such logits (e.g. a deep-supervision :class:`~everylabel.networks.UNet`).
        overlap: fraction of the window shared by neighbouring windows, in ``[0, 1)``.
        sw_batch_size: number of windows per ``predictor`` call.
        mode: ``"gaussian"`` (weights from :func:`gaussian_importance_map`) or ``"constant"`` (plain average).
        sigma_scale: Gaussian standard deviation as a fraction of the window size.
        convention: ``"nnunet"`` (windows spread evenly, Gaussian without a floor) or ``"monai"``: window starts,
            padding, Gaussian map and blending arithmetic of MONAI's ``sliding_window_inference``, so that for float32
            inputs and the same predictor the result equals MONAI's (``mode``, ``overlap`` and ``sigma_scale`` as
            there; MONAI's defaults are ``overlap=0.25``, ``mode="constant"``, ``sw_batch_size=1``). Batching more
            windows per call than MONAI can still change the predictor's own output in the last bits, because
            PyTorch picks convolution kernels by batch size.
        tta_flips: average every window over all flips of its spatial axes (2**D predictions per window, mirror
            test-time augmentation as in nnU-Net).
        num_classes: number of output channels N; inferred from the first prediction when None.
        device: device on which ``predictor`` runs; defaults to ``inputs.device``. The blended result is accumulated
            on ``inputs.device``, so a volume can stay in host memory while windows run on a GPU.
        progress: show a progress bar over the window batches.

    Shapes:
        - inputs: (B, C, *S)
        - returns: (B, N, *S), float32

    Returns:
        Blended logits (weighted average of the window logits, not probabilities).

    Example:
        >>> net = torch.nn.Conv2d(1, 2, 1)
        >>> sliding_window_inference(torch.rand(1, 1, 100, 90), (64, 64), net).shape
        torch.Size([1, 2, 100, 90])
    """
    roi_size = _check_arguments(inputs, roi_size, overlap, sw_batch_size, mode, num_classes)
    _check_convention(convention)
    out_device = inputs.device
    run_device = torch.device(device) if device is not None else out_device
    batch, spatial_dims, image_size = inputs.shape[0], inputs.ndim - 2, tuple(inputs.shape[2:])
    pad = [max(r - s, 0) for r, s in zip(roi_size, image_size)]
    padded_size = tuple(s + p for s, p in zip(image_size, pad))

    starts = list(itertools.product(*compute_window_starts(padded_size, roi_size, overlap, convention)))
    if mode == "gaussian":
        importance = gaussian_importance_map(roi_size, sigma_scale, convention=convention, device=out_device)
    else:
        importance = torch.ones(roi_size, device=out_device)
    weight = torch.zeros(padded_size, device=out_device)  # one map serves every image of the batch
    for start in starts:
        weight[_window(start, roi_size)] += importance

    flips = [()]
    if tta_flips:
        flips = [axes for k in range(spatial_dims + 1) for axes in itertools.combinations(range(2, inputs.ndim), k)]
    jobs = [(b, start) for b in range(batch) for start in starts]
    chunks: Iterable[int] = range(0, len(jobs), sw_batch_size)
    if progress:
        from rich.progress import track

        chunks = track(chunks, description="sliding window", total=math.ceil(len(jobs) / sw_batch_size))

    output: Tensor | None = None
    if num_classes is not None:
        output = torch.zeros((batch, num_classes, *padded_size), device=out_device)
    with torch.no_grad():
        if any(pad):  # symmetric zero padding (MONAI's convention); F.pad lists the last axis first
            inputs = F.pad(inputs, [p for d in reversed(pad) for p in (d // 2, d - d // 2)])
        for first in chunks:
            chunk = jobs[first : first + sw_batch_size]
            windows = torch.stack([inputs[(b, slice(None), *_window(s, roi_size))] for b, s in chunk])
            windows = windows.to(run_device)  # (n, C, *roi)
            logits = sum(_predict(predictor, windows, axes, roi_size) for axes in flips) / len(flips)
            logits = logits.to(out_device)  # (n, N, *roi)
            if output is None:
                output = torch.zeros((batch, logits.shape[1], *padded_size), device=out_device)
            elif logits.shape[1] != output.shape[1]:
                raise ValueError(
                    f"predictor returned {logits.shape[1]} channels, expected {output.shape[1]} "
                    f"(num_classes or the first prediction)."
                )
            for (b, start), window_logits in zip(chunk, logits):
                target = output[(b, slice(None), *_window(start, roi_size))]
                if convention == "monai":  # MONAI rounds the product before the sum; addcmul_ would fuse them
                    target += window_logits * importance
                else:
                    target.addcmul_(window_logits, importance)

    assert output is not None  # internal: batch >= 1 and at least one window, so something was predicted
    output /= weight
    if any(pad):
        crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pad, image_size))
        output = output[(slice(None), slice(None), *crop)].clone()
    return output


def slicewise_inference(
    inputs: Tensor,
    roi_size: Sequence[int],
    predictor: Callable[[Tensor], Tensor | Sequence[Tensor]],
    slice_axis: int,
    *,
    context: int = 0,
    slices_per_call: int = 16,
    **kwargs,
) -> Tensor:
    """Predict 3D volumes with a 2D network slice by slice (nnU-Net's "2d" configuration on 3D data).

    The slices along ``slice_axis`` become a batch of 2D images, each predicted with
    :func:`sliding_window_inference` (``kwargs`` are passed on), and the logits are stacked back.

    Args:
        inputs: (B, C, *S) 3D volumes.
        roi_size: the 2D window size.
        slice_axis: spatial axis (0, 1 or 2) along which to slice.
        context: neighbouring slices per side given to the network as extra channels (2.5D; zero beyond the
            volume); channel ``c * (2k + 1) + j`` is channel c of slice ``i - k + j``.
        slices_per_call: slices handed to :func:`sliding_window_inference` at once (bounds memory).

    Returns:
        (B, N, *S) blended logits.
    """
    if inputs.ndim != 5:
        raise ValueError(f"slice-wise inference expects (B, C, X, Y, Z) volumes, got shape {tuple(inputs.shape)}")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    if slices_per_call < 1 or context < 0:
        raise ValueError(f"slices_per_call must be >= 1 and context >= 0, got {slices_per_call} and {context}")
    thick = 2 * context + 1
    outputs = []
    for volume in inputs:
        slices = volume.movedim(slice_axis + 1, 1)  # (C, D, a, b)
        depth = slices.shape[1]
        if context:
            slices = F.pad(slices, (0, 0, 0, 0, context, context))
        parts = []
        for i in range(0, depth, slices_per_call):
            n = min(slices_per_call, depth - i)
            chunk = slices[:, i : i + n + thick - 1].unfold(1, thick, 1)  # (C, n, a, b, 2k+1)
            chunk = chunk.permute(1, 0, 4, 2, 3).reshape(n, -1, *slices.shape[2:])  # (n, C * (2k+1), a, b)
            parts.append(sliding_window_inference(chunk, roi_size, predictor, **kwargs))
        outputs.append(torch.cat(parts, 0).movedim(0, slice_axis + 1))  # (N, *S)
    return torch.stack(outputs)


def infer_logits(inputs: Tensor, roi_size: Sequence[int], predictor: Callable, slice_axis: int | None = None,
                 context: int = 0, **kwargs) -> Tensor:
    """Whole-image logits: :func:`sliding_window_inference`, or :func:`slicewise_inference` for a 2D model on 3D
    volumes (``slice_axis`` set)."""
    if slice_axis is None:
        return sliding_window_inference(inputs, roi_size, predictor, **kwargs)
    return slicewise_inference(inputs, roi_size, predictor, slice_axis, context=context, **kwargs)


def _check_arguments(
    inputs: Tensor, roi_size: Sequence[int], overlap: float, sw_batch_size: int, mode: str, num_classes: int | None
) -> tuple[int, ...]:
    if not isinstance(inputs, Tensor) or inputs.ndim not in (4, 5):
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a (B, C, H, W) or (B, C, D, H, W) tensor, got {shape}.")
    if inputs.shape[0] == 0 or inputs.shape[1] == 0:
        raise ValueError(f"inputs must hold at least one image and one channel, got shape {tuple(inputs.shape)}.")
    roi_size = _check_sizes(roi_size, "roi_size")
    if len(roi_size) != inputs.ndim - 2:
        raise ValueError(
            f"roi_size must have {inputs.ndim - 2} entries for inputs of shape {tuple(inputs.shape)}, got {roi_size}."
        )
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}.")
    if not _is_positive_int(sw_batch_size):
        raise ValueError(f"sw_batch_size must be a positive integer, got {sw_batch_size!r}.")
    if mode not in BLEND_MODES:
        raise ValueError(f"mode must be one of {BLEND_MODES}, got {mode!r}.")
    if num_classes is not None and not _is_positive_int(num_classes):
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}.")
    return roi_size


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}.")


def _predict(predictor: Callable, windows: Tensor, axes: tuple[int, ...], roi_size: tuple[int, ...]) -> Tensor:
    """Logits of ``predictor`` for the windows mirrored along ``axes``, mirrored back."""
    pred = predictor(windows.flip(axes) if axes else windows)
    if isinstance(pred, (list, tuple)):
        pred = pred[0]
    count = windows.shape[0]
    if not isinstance(pred, Tensor) or pred.ndim != windows.ndim or pred.shape[0] != count:
        shape = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
        raise ValueError(f"predictor must return logits of shape ({count}, N, *{roi_size}), got {shape}.")
    if tuple(pred.shape[2:]) != roi_size:
        raise ValueError(f"predictor must keep the window size {roi_size}, got output of shape {tuple(pred.shape)}.")
    pred = pred.float()
    return pred.flip(axes) if axes else pred


def _window(start: Sequence[int], roi_size: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(s, s + r) for s, r in zip(start, roi_size))


def _is_positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _check_sizes(sizes: Sequence[int], name: str) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if not sizes or not all(_is_positive_int(s) for s in sizes):
        raise ValueError(f"{name} must be a sequence of positive integers, got {sizes!r}.")
    return tuple(int(s) for s in sizes)
