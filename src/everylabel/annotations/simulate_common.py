"""Shared pieces of the annotation simulators: seeding, parameter records, label-map checks, connected components.

Every simulator takes ``rng`` as a :class:`numpy.random.Generator`, an integer seed or None (fresh entropy) and
records how it was seeded in ``extra["simulation"]["rng"]``: ``{"seed": s}`` for an integer seed, else
``{"state": ...}``, the bit generator's state *before* the simulator drew anything. Either form rebuilds the exact
generator (:func:`generator_from_record`), so :func:`everylabel.annotations.simulate.replay` reproduces a result.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np

RngLike = np.random.Generator | int | None


def make_generator(rng: RngLike) -> tuple[np.random.Generator, dict]:
    """A generator and the record that rebuilds it.

    Args:
        rng: a Generator (its state is recorded and it is advanced in place), an integer seed, or None.

    Returns:
        ``(generator, record)`` with record ``{"seed": int}`` or ``{"state": bit_generator.state}``.
    """
    if isinstance(rng, np.random.Generator):
        return rng, {"state": copy.deepcopy(rng.bit_generator.state)}
    if rng is None:
        gen = np.random.default_rng()
        return gen, {"state": copy.deepcopy(gen.bit_generator.state)}
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng)), {"seed": int(rng)}
    raise ValueError(f"rng must be a numpy.random.Generator, an integer seed or None, got {type(rng).__name__}")


def generator_from_record(record: dict) -> np.random.Generator:
    """Rebuild the generator described by a record of :func:`make_generator`."""
    if "seed" in record:
        return np.random.default_rng(int(record["seed"]))
    if "state" in record:
        state = record["state"]
        bit_generator = getattr(np.random, state["bit_generator"])()
        bit_generator.state = copy.deepcopy(state)
        return np.random.Generator(bit_generator)
    raise ValueError(f"an rng record needs 'seed' or 'state', got keys {sorted(record)}")


def to_builtin(value):
    """``value`` with numpy scalars/arrays and tuples turned into JSON/YAML-safe Python objects."""
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, (int, np.integer)) else int(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_builtin(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def simulation_record(kind: str, rng_record: dict, params: dict, result: dict | None = None) -> dict:
    """The ``extra["simulation"]`` entry: kind, every parameter (defaults included), the rng record, and what was
    drawn (``result``, informative only: replaying needs only kind, params and rng)."""
    return {"kind": kind, "params": to_builtin(params), "rng": to_builtin(rng_record),
            "result": to_builtin(result or {})}


def check_labels(labels: np.ndarray, where: str = "labels") -> np.ndarray:
    """``labels`` as a non-negative int64 2D or 3D label map; ValueError otherwise."""
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{where}: expected a 2D or 3D label map (spatial shape S, no channel axis), got shape "
                         f"{arr.shape}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "f":
        if not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{where}: label map holds non-integer values (dtype {arr.dtype})")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{where}: label map must hold integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{where}: label values must be class indices >= 0, got minimum {arr.min()}")
    return arr


def check_connectivity(connectivity: int | None, ndim: int) -> int:
    """The skimage connectivity (1 = faces only ... ndim = full, the default) or ValueError."""
    if connectivity is None:
        return ndim
    if not isinstance(connectivity, (int, np.integer)) or not 1 <= connectivity <= ndim:
        raise ValueError(f"connectivity must be 1..{ndim} (1: 4/6-neighbours, {ndim}: 8/26-neighbours), got "
                         f"{connectivity!r}")
    return int(connectivity)


def foreground_classes(labels: np.ndarray, classes=None) -> list[int]:
    """Foreground classes present in ``labels`` (restricted to ``classes`` when given), sorted."""
    present = [int(c) for c in np.unique(labels) if c != 0]
    if classes is None:
        return present
    wanted = {int(c) for c in classes}
    if 0 in wanted:
        raise ValueError(f"classes must be foreground classes (>= 1), got {sorted(wanted)}")
    return [c for c in present if c in wanted]


def components(labels: np.ndarray, connectivity: int, min_size: int = 1,
               classes=None) -> Iterator[tuple[int, np.ndarray, tuple[slice, ...]]]:
    """Connected components of every foreground class, in class then skimage label order.

    Yields:
        ``(class, mask, bbox)``: the tight bounding box as slices (start inclusive, stop exclusive) and the
        component's boolean mask inside it (``mask.shape`` = box size). Components smaller than ``min_size`` voxels
        are skipped.
    """
    from scipy import ndimage
    from skimage.measure import label

    for cls in foreground_classes(labels, classes):
        lab = label(labels == cls, connectivity=connectivity)
        for index, box in enumerate(ndimage.find_objects(lab), start=1):
            if box is None:
                continue
            mask = lab[box] == index
            if int(mask.sum()) >= min_size:
                yield cls, mask, box


def ball(radius: float, ndim: int) -> np.ndarray:
    """Boolean Euclidean ball (disk in 2D) of ``radius`` voxels: offsets with norm <= radius."""
    r = int(np.floor(radius))
    grid = np.indices((2 * r + 1,) * ndim) - r
    return (grid ** 2).sum(0) <= radius ** 2 + 1e-9


def deepest_voxel(mask: np.ndarray) -> np.ndarray:
    """Coordinates of a voxel of ``mask`` farthest from its boundary (first in C order among ties)."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim]
    return np.asarray(np.unravel_index(int(np.argmax(dist)), mask.shape))
