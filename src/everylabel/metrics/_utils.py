"""Input checks and conversions shared by the metric modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

Array = Any  # numpy.ndarray or torch.Tensor

_NUMPY_DTYPES = {torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16, torch.int8,
                 torch.uint8}  # fmt: skip


def as_tensor(x: Array, name: str) -> torch.Tensor:
    """Returns ``x`` as a torch tensor without copying numpy memory where possible."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype == np.bool_:
            return torch.from_numpy(np.ascontiguousarray(x))
        return torch.as_tensor(np.ascontiguousarray(x))
    raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}.")


def as_numpy(x: Array, name: str) -> np.ndarray:
    """Returns ``x`` as a numpy array (torch tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}.")


def binary_numpy(x: Array, name: str) -> np.ndarray:
    """Returns ``x`` as a numpy bool array, raising ValueError if it holds values other than 0 and 1."""
    arr = as_numpy(x, name)
    if arr.dtype == np.bool_:
        return arr
    if arr.size and not np.isin(arr, (0, 1)).all():
        found = np.unique(arr)[:6].tolist()
        raise ValueError(f"{name} must be binary (values 0 and 1 or bool), got values {found}.")
    return arr.astype(bool)


def binary_tensor(x: torch.Tensor, name: str) -> torch.Tensor:
    """Returns ``x`` as a bool tensor, raising ValueError if it holds values other than 0 and 1."""
    if x.dtype == torch.bool:
        return x
    if x.device.type == "cpu" and x.dtype in _NUMPY_DTYPES:  # numpy: two passes instead of five
        a = x.detach().numpy()
        b = a != 0
        if np.count_nonzero(a == 1) != np.count_nonzero(b):  # some nonzero value is not 1 (or is NaN)
            found = torch.unique(x)[:6].tolist()
            raise ValueError(f"{name} must be binary (values 0 and 1 or bool), got values {found}.")
        return torch.from_numpy(b)
    if x.numel() and not ((x == 0) | (x == 1)).all():
        found = torch.unique(x)[:6].tolist()
        raise ValueError(f"{name} must be binary (values 0 and 1 or bool), got values {found}.")
    return x != 0


def check_spacing(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Returns the voxel spacing as a tuple of ``ndim`` positive finite floats (unit spacing when None)."""
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, (int, float, np.floating, np.integer)):
        values = (float(spacing),) * ndim
    else:
        values = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1))
    if len(values) != ndim:
        raise ValueError(f"spacing must have one value per spatial axis ({ndim}), got {len(values)}: {values}.")
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing values must be positive and finite, got {values}.")
    return values


def per_case_spacing(spacing: Any, batch_size: int) -> list[Any]:
    """One spacing per case from one spacing for the batch (a number or one value per axis) or one per case."""
    if spacing is None or np.isscalar(spacing):
        return [spacing] * batch_size
    items = list(spacing)
    if items and all(np.isscalar(s) for s in items):
        return [items] * batch_size
    if len(items) != batch_size:
        raise ValueError(f"spacing per case must have one entry per case ({batch_size}), got {len(items)}.")
    return items


def crop_to_union(pred: np.ndarray, ref: np.ndarray, before: int, after: int) -> tuple[np.ndarray, np.ndarray]:
    """Crops both masks to the bounding box of ``pred | ref`` padded with zeros, ``before``/``after`` per side."""
    union = pred | ref
    lo, hi = [], []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        lo.append(int(idx[0]))
        hi.append(int(idx[-1]) + 1)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    shape = tuple(b - a + before + after for a, b in zip(lo, hi))
    inner = tuple(slice(before, s - after) for s in shape)
    out = []
    for m in (pred, ref):
        c = np.zeros(shape, dtype=bool)
        c[inner] = m[box]
        out.append(c)
    return out[0], out[1]
