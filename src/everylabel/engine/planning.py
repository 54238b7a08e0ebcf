"""Derive what the config leaves open from the data (dimensionality, channels, classes, spacing, patch, batch).

With no config at all, ``train --data`` gets nnU-Net-like choices scaled to 2 CPU cores: 2D patches of up to
256 x 256 (batch 8), 3D patches of up to 64^3 (batch 2), the median spacing as target, CT normalisation for CT
channels and z-score for the rest, and a U-Net with a strided stem (``network.stem_stride: 2``, channels 16 to 256),
whose training step costs about 2/3 (2D) and 2/5 (3D) of the nnU-Net layout's on 2 cores; at equal time it gave the
same Dice on DRIVE and a higher one in 3D on LA_heart_h5 (BENCHMARKS.md, "U-Net layouts").
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass

import numpy as np

from everylabel.annotations.kinds import Annotations
from everylabel.data.preprocess import PreprocessPlan, fit_ct_stats, preprocess_case, resampled_shape
from everylabel.data.sampling import PreparedCase
from everylabel.networks import NETWORKS

MAX_PATCH = {2: 256, 3: 64}
DEFAULT_BATCH = {2: 8, 3: 2}


@dataclass
class RunPlan:
    """Everything needed to rebuild the network and preprocessing at prediction time (saved as plan.json)."""

    spatial_dims: int
    in_channels: int
    num_classes: int
    class_names: dict[int, str]
    patch_size: tuple[int, ...]
    batch_size: int
    preprocess: PreprocessPlan
    network: dict
    slice_axis: int | None = None
    """Set when a 2D network is trained on slices of 3D volumes along this axis (``data.slice_axis``)."""
    slice_context: int = 0
    """Neighbouring slices on each side stacked as channels (``data.slice_context``; 2.5D)."""

    @property
    def image_dims(self) -> int:
        """Dimensionality of the images (3 for a slice-wise 2D model, else the network's)."""
        return 3 if self.slice_axis is not None else self.spatial_dims

    @property
    def sample_patch(self) -> tuple[int, ...]:
        """The patch drawn from the images: the 2D patch with a 1 inserted at the slice axis in slice mode."""
        if self.slice_axis is None:
            return tuple(self.patch_size)
        p = list(self.patch_size)
        p.insert(self.slice_axis, 2 * self.slice_context + 1)
        return tuple(p)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["class_names"] = {str(k): v for k, v in self.class_names.items()}
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunPlan:
        return cls(spatial_dims=int(d["spatial_dims"]), in_channels=int(d["in_channels"]),
                   num_classes=int(d["num_classes"]),
                   class_names={int(k): v for k, v in d["class_names"].items()},
                   patch_size=tuple(d["patch_size"]), batch_size=int(d["batch_size"]),
                   preprocess=PreprocessPlan.from_dict(d["preprocess"]), network=dict(d["network"]),
                   slice_axis=None if d.get("slice_axis") is None else int(d["slice_axis"]),
                   slice_context=int(d.get("slice_context", 0)))


def _round_patch(shape: tuple[int, ...], limit: int, divisor: int) -> tuple[int, ...]:
    """Per axis: the image size capped at ``limit``, rounded up to a multiple of ``divisor``."""
    return tuple(int(np.ceil(min(s, limit) / divisor) * divisor) for s in shape)


def network_kwargs(cfg, spatial_dims: int, in_channels: int, num_classes: int) -> dict:
    """Constructor arguments of the configured network (``features`` etc. only where the network takes them)."""
    if cfg.network.name not in NETWORKS:
        raise ValueError(f"unknown network {cfg.network.name!r}; available: {', '.join(sorted(NETWORKS))}")
    params = inspect.signature(NETWORKS[cfg.network.name]).parameters
    kwargs = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes)
    optional = dict(features=None if cfg.network.features is None else tuple(cfg.network.features),
                    norm=cfg.network.norm, residual=cfg.network.residual, attention=cfg.network.attention,
                    dropout=cfg.network.dropout, stem_stride=cfg.network.stem_stride,
                    stem_features=cfg.network.stem_features)
    for key, value in optional.items():
        if key in params and value is not None:
            kwargs[key] = value
    if "features" in params and "features" not in kwargs:
        net = NETWORKS[cfg.network.name]
        default = (net.default_features(kwargs.get("stem_stride", 1)) if hasattr(net, "default_features")
                   else params["features"].default)
        if default is not None:
            kwargs["features"] = tuple(default)
    return kwargs


def network_divisor(name: str, kwargs: dict) -> int:
    """What every input size must be divisible by: the network's ``divisor``, else 2 ** (levels - 1), else 16."""
    net = NETWORKS[name](**kwargs)
    if hasattr(net, "divisor"):
        return int(net.divisor)
    if "features" in kwargs:
        return 2 ** (len(kwargs["features"]) - 1)
    return 16


def plan_run(cfg, manifest, raw: list[tuple[np.ndarray, Annotations, object]]) -> RunPlan:
    """Resolve the data-dependent settings from the raw training cases ``(image, annotations, meta)``."""
    if not raw:
        raise ValueError(f"{manifest.source}: no training cases")
    first = raw[0][0]
    image_dims = first.ndim - 1
    slice_axis = cfg.data.slice_axis
    if slice_axis is not None:
        if image_dims != 3:
            raise ValueError(f"data.slice_axis={slice_axis} trains a 2D network on slices of 3D volumes, but the "
                             f"images of {manifest.source} are {image_dims}D")
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"data.slice_axis must be 0, 1 or 2, got {slice_axis}")
    context = int(cfg.data.slice_context)
    if context < 0 or (context and slice_axis is None):
        raise ValueError(f"data.slice_context must be >= 0 and needs data.slice_axis, got {context} with "
                         f"slice_axis={slice_axis}")
    spatial_dims = 2 if slice_axis is not None else image_dims
    in_channels = first.shape[0]
    num_classes = manifest.num_classes

    spacings = np.array([m.spacing for _, _, m in raw], dtype=np.float64)
    if cfg.data.target_spacing is not None:
        if len(cfg.data.target_spacing) != image_dims:
            raise ValueError(f"data.target_spacing has {len(cfg.data.target_spacing)} values but the images are "
                             f"{image_dims}D")
        target = tuple(float(s) for s in cfg.data.target_spacing)
    else:
        target = tuple(float(s) for s in np.median(spacings, axis=0))

    norm = cfg.data.normalization
    modality = (getattr(manifest, "modality", "") or "").upper()
    if norm == "auto":
        norms = ["ct" if modality == "CT" else "zscore"] * in_channels
    elif norm in ("ct", "zscore", "none"):
        norms = [norm] * in_channels
    else:
        raise ValueError(f"data.normalization must be 'auto', 'zscore', 'ct' or 'none', got {norm!r}")
    ct_stats = [fit_ct_stats([r[0] for r in raw], [r[1].labels for r in raw], c) if n == "ct" else None
                for c, n in enumerate(norms)]
    pp = PreprocessPlan(normalization=norms, target_spacing=target, crop_nonzero=cfg.data.crop_nonzero,
                        ct_stats=ct_stats)

    net = network_kwargs(cfg, spatial_dims, in_channels * (2 * context + 1), num_classes)
    divisor = network_divisor(cfg.network.name, net)
    if cfg.data.patch_size is not None:
        patch = tuple(int(p) for p in cfg.data.patch_size)
        if len(patch) != spatial_dims:
            what = "the network is 2D (data.slice_axis)" if slice_axis is not None else \
                f"the images are {spatial_dims}D"
            raise ValueError(f"data.patch_size {patch} has {len(patch)} values but {what}")
        bad = [p for p in patch if p % divisor]
        if bad:
            raise ValueError(f"data.patch_size {patch} must be divisible by {divisor} for network "
                             f"{cfg.network.name!r} with these settings")
    else:
        shapes = np.array([resampled_shape(r[0].shape[1:], m.spacing, target) for r, m in
                           zip(raw, [x[2] for x in raw])])
        median_shape = tuple(int(s) for s in np.median(shapes, axis=0))
        if slice_axis is not None:
            median_shape = tuple(s for i, s in enumerate(median_shape) if i != slice_axis)
        patch = _round_patch(median_shape, MAX_PATCH[spatial_dims], divisor)
    batch = cfg.data.batch_size or DEFAULT_BATCH[spatial_dims]
    return RunPlan(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes,
                   class_names=dict(manifest.labels), patch_size=patch, batch_size=int(batch), preprocess=pp,
                   network=net, slice_axis=slice_axis, slice_context=context)


def prepare(raw: tuple[np.ndarray, Annotations, object], case_id: str, plan: RunPlan) -> PreparedCase:
    """Preprocess one raw case with the plan."""
    image, ann, meta = raw
    img, a, geom = preprocess_case(image, ann, tuple(meta.spacing), plan.preprocess)
    return PreparedCase(image=img, ann=a, case_id=case_id, num_classes=plan.num_classes, geometry=geom, meta=meta)
