"""Run configuration: nested frozen dataclasses with defaults; YAML files and ``--set`` list only changes.

Unknown keys are errors that name the key and suggest the nearest valid one. ``None`` means "derive from the data"
(patch size, batch size, spacing, normalisation...), resolved by :func:`everylabel.engine.planning.plan_run`.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml


@dataclass(frozen=True)
class DataConfig:
    patch_size: tuple[int, ...] | None = None
    """Training patch size; None = derived from the images (fits 2 CPU cores)."""
    batch_size: int | None = None
    """Samples per step; None = 8 in 2D, 2 in 3D."""
    foreground_oversample: float = 0.33
    """Fraction of patches centred on a foreground voxel (nnU-Net: 0.33)."""
    target_spacing: tuple[float, ...] | None = None
    """Resample to this spacing; None = the median spacing of the training cases."""
    normalization: str = "auto"
    """"auto" (CT -> nnU-Net CT normalisation, else z-score), "zscore", "ct" or "none"."""
    crop_nonzero: bool = True
    val_fraction: float = 0.1
    """Fraction of the training cases held out for validation when the data has no "val" split (0 = none)."""
    train_split: str = "train"
    val_split: str = "val"
    labelled_fraction: float | None = None
    """Fraction of each batch drawn from annotated cases (the rest from unlabelled ones); None = uniform."""
    slice_axis: int | None = None
    """Train a 2D network on slices of 3D volumes along this spatial axis (0, 1 or 2; nnU-Net's "2d"
    configuration); prediction runs slice by slice and writes the 3D volume. None = the images' own dimensionality."""
    slice_context: int = 0
    """With ``slice_axis``: this many neighbouring slices on each side join the centre slice as extra input
    channels (2.5D); the label is the centre slice's. 0 = plain 2D slices."""


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    flip_prob: float = 0.5
    rot90_prob: float = 0.5
    zoom_prob: float = 0.2
    zoom_range: tuple[float, float] = (0.7, 1.4)
    intensity_prob: float = 0.15
    intensity_scale: tuple[float, float] = (0.75, 1.25)
    intensity_shift: tuple[float, float] = (-0.1, 0.1)
    gamma_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_prob: float = 0.1
    noise_sigma: float = 0.1


@dataclass(frozen=True)
class NetworkConfig:
    name: str = "unet"
    features: tuple[int, ...] | None = None
    """Channels per level; None = the network's default."""
    norm: str = "instance"
    residual: bool = False
    attention: bool = False
    dropout: float = 0.0
    deep_supervision: bool = True
    stem_stride: int = 2
    """Stride of the U-Net's first convolution: 2 = strided stem as in MONAI's UNet, features (16, 32, 64, 128, 256)
    by default; 1 = nnU-Net layout, features (8, 16, 32, 64, 128, 256) by default, about 1.5x (2D) / 2.4x (3D) the
    cost per step, the default before 2026-11-24. See UNet and BENCHMARKS.md ("U-Net layouts")."""
    stem_features: int | None = None
    """Channels of a strided stem's full-resolution map; None = a quarter of the first stage's."""


@dataclass(frozen=True)
class MethodConfig:
    """Supervision method (``name``: supervised, weak, mean_teacher, mean_taught, multilabel, self_training) and its
    settings; a field prefixed "x:" applies to method x only. See ``everylabel.methods`` for the papers."""

    name: str = "supervised"
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    include_background: bool = False
    """Dice over the background class too (nnU-Net: no)."""
    batch_dice: bool = True
    """Dice summed over the batch before the ratio (nnU-Net's batch Dice)."""
    cldice_weight: float = 0.0
    """alpha of soft-clDice on dense masks (tubular targets; Shit et al. 2021); 0 = off."""
    cldice_iterations: int = 3
    ema_decay: float = 0.99
    """mean_teacher / mean_taught / self_training (pseudo_labels_from="teacher"): teacher EMA decay alpha in [0, 1).
    0.99 averages the last ~1 / (1 - alpha) = 100 students: 5 % of the default 2,000-step schedule, an eighth of the
    consistency ramp-up, so the teacher is smoother than the student without lagging it (Tarvainen & Valpola 2017
    use 0.99 during ramp-up). Reiß et al. (CVPR 2021) found 0.5 best on their short schedule; at 2,000 steps that
    makes the teacher nearly the student, and 0.999 would average over half the schedule. Runs of a few hundred
    steps: 0.9-0.95."""
    consistency: str = "mse"
    """mean_teacher: "mse" or "kl" between student and teacher probabilities."""
    consistency_weight: float = 1.0
    """mean_teacher / mean_taught: maximum weight of the teacher (consistency) term."""
    rampup_fraction: float = 0.4
    """mean_teacher / mean_taught: fraction of the schedule over which the consistency weight ramps up."""
    noise_std: float = 0.1
    """mean_teacher / mean_taught: Gaussian input noise, drawn independently for student and teacher."""
    infer_with: str = "teacher"
    """mean_teacher / mean_taught / self_training with a teacher: "teacher" or "student" for validation and
    prediction."""
    partial_weight: float = 1.0
    """weak: marginal loss on class-partial masks."""
    sparse_weight: float = 1.0
    """weak: partial cross-entropy on scribbled / clicked pixels."""
    crf_weight: float = 0.0
    """weak: dense-CRF (Potts) regulariser on scribble / point samples (0 = off)."""
    crf_sigma_xy: float = 5.0
    crf_sigma_intensity: float = 0.15
    box_weight: float = 1.0
    """weak: box priors (emptiness + tightness + box size) on box samples."""
    box_size_bounds: tuple[float, float] | None = (0.5, 0.9)
    """weak: the box-size constraint a|B| <= predicted volume <= b|B| of Kervadec et al. (MIDL 2020; a, b as in
    the authors' code). Emptiness and tightness alone are met by a thin cross through each box; this term fills
    it. For loose or non-tight boxes (e.g. a 3D box cut into slices) lower a; None = off."""
    tag_weight: float = 1.0
    """weak: MIL + inclusion/suppression size terms on tag samples."""
    tag_pool: str = "lse"
    entropy_weight: float = 0.0
    """weak: entropy minimisation on unannotated pixels (0 = off)."""
    point_radius: int = 1
    """weak / multilabel / mean_taught: clicked points are rasterised as cubes of this radius."""
    box_min_scale: int = 1
    """multilabel / mean_taught: first decoder scale (0 = full resolution) at which the inside of a box counts as
    the boxed class (Reiß et al. 2021: a filled box is a poor mask at full resolution, a good one at coarse scales);
    outside every box of a class is a negative at every scale."""
    pseudo_threshold: float = 0.9
    """self_training: confidence threshold tau in [0, 1); pixels whose pseudo-label probability is <= tau get no
    loss. 0.9 as in Jiang et al. (DALI 2021); FixMatch (Sohn et al. 2020) uses 0.95."""
    unlabelled_weight: float = 2.0
    """self_training: weight lambda_u of the pseudo-label term. 2 as in Jiang et al. (DALI 2021); FixMatch uses 1."""
    pseudo_labels_from: str = "network"
    """self_training: "network" (the network itself under no_grad, as FixMatch) or "teacher" (an EMA teacher with
    ``ema_decay``)."""
    strong_cutout: float = 0.5
    """self_training: maximum side of the Cutout box in the strong view, as a fraction of each patch axis (FixMatch:
    up to 0.5); 0 = no Cutout."""
    unlabelled_entropy_weight: float = 0.0
    """Any method: weight of an unsupervised term on pixels without a dense label (every pixel of an unlabelled
    image); 0 = off. Turning it on makes the method train on unlabelled cases."""
    entropy_mode: str = "entropy"
    """With unlabelled_entropy_weight: "entropy" (mean pixel entropy H(y|x); Grandvalet & Bengio 2005) or "mi"
    (H(y|x) - H(y): also maximises the entropy of the batch-mean prediction, which rules out the trivial solution of
    one confident class everywhere; Krause et al. 2010)."""


DEFAULT_LR = {"adamw": 5e-3, "sgd": 1e-2}
"""The learning rate ``optim.lr: null`` stands for. SGD's is nnU-Net's. AdamW's was 3e-3 until 2026-11-25; 5e-3 scored
higher on held-out DRIVE training images in both folds tried (0.8286 vs 0.8270 Dice, 6,000 steps,
benchmarks/drive_lr_val.py; BENCHMARKS.md). Benchmarks recorded before then pin ``optim.lr: 0.003``."""

FORMER_DEFAULT_LR = {"adamw": 3e-3, "sgd": 1e-2}
"""What ``optim.lr: null`` stood for until 2026-11-25. Sweep run names hash the learning rate against it (see
:func:`everylabel.experiments.sweep.hash_defaults`), and sweep result rows written before then, which store ``null``,
are read with it (:func:`everylabel.experiments.run.stale_keys`)."""


def effective_lr(name: str, lr: float | None, table: dict | None = None) -> float | None:
    """The learning rate an optimizer ``name`` trains with for ``optim.lr`` = ``lr``: ``lr`` itself, or for ``None``
    ``table[name]`` (default :data:`DEFAULT_LR`; ``None`` for an unknown optimizer)."""
    return lr if lr is not None else (DEFAULT_LR if table is None else table).get(name)


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"
    """"adamw" or "sgd"."""
    lr: float | None = None
    """None = ``DEFAULT_LR[name]``: 5e-3 for AdamW, 1e-2 for SGD (nnU-Net)."""
    weight_decay: float = 1e-4
    momentum: float = 0.99
    schedule: str = "poly"
    """"poly" (nnU-Net, exponent 0.9), "cosine" or "constant"."""
    warmup_steps: int = 0
    grad_clip: float = 12.0


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    minutes: float | None = None
    """A wall-clock budget instead of a step count: training stops when the training loop (validation and
    checkpoints included, data loading and planning not; summed over resumed sessions) has run this many minutes,
    and the schedule (learning rate, a method's ramp-ups) follows the fraction of the budget spent rather than
    ``steps``, which is then ignored. For comparisons at equal time: a run's step count, and so its result, depends
    on the machine's speed, and the run is not reproducible bit for bit."""
    val_every: int = 250
    log_every: int = 50
    seed: int = 0
    precision: str = "auto"
    """"auto" (bf16 autocast on a CPU with native bf16, i.e. AVX512-BF16 or AMX on x86, and on CUDA where supported;
    fp16 on other CUDA devices; fp32 on other CPUs, where bf16 would be emulated and slower), "bf16", "fp16" (CUDA)
    or "fp32"."""
    channels_last: bool = True
    num_threads: int | None = None
    """torch threads; None = torch's default."""
    checkpoint_every: int = 250

    def __post_init__(self):  # fails when the config is loaded, before any work
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"train.minutes must be > 0 (or null for a step schedule), got {self.minutes!r}")


@dataclass(frozen=True)
class InferenceConfig:
    overlap: float = 0.5
    sw_batch_size: int = 4
    mode: str = "gaussian"
    tta: bool = False
    precision: str = "fp32"
    """"fp32" or "bf16" for inference."""


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _to_plain(x):
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def _unknown_key_error(key: str, valid: list[str], where: str) -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return ValueError(f"unknown config key {key!r} in {where}{hint}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert YAML/CLI values to the field's type (tuples from lists, numbers from strings)."""
    text = hint.__name__ if isinstance(hint, type) else str(hint)
    if value is None:
        return None
    if text.startswith("tuple") or "tuple[" in text:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r} expects a list, got {value!r}")
        return tuple(value)
    if isinstance(value, str) and not text.startswith("str") and "str |" not in text:
        parsed = yaml.safe_load(value)
        value = parsed
    if ("float" in text) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if text.startswith("float") and not isinstance(value, float):
        raise ValueError(f"config key {key!r} expects a number, got {value!r}")
    if text.startswith("bool") and not isinstance(value, bool):
        raise ValueError(f"config key {key!r} expects true/false, got {value!r}")
    if text.startswith("int") and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"config key {key!r} expects an integer, got {value!r}")
    return value


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key_error(key, names, where)
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, hint, f"{where}.{key}")
    return cls(**kwargs)


def config_from_dict(data: dict | None, where: str = "config") -> Config:
    """Build a :class:`Config` from a (possibly partial) nested dict; unknown keys raise ValueError."""
    return _build(Config, data or {}, where)


def with_effective_lr(resolved: dict, table: dict | None = None) -> dict:
    """A resolved config dict (``Config.to_dict()``) with ``optim.lr: null`` replaced by the learning rate it stands
    for, ``table[optim.name]`` (default :data:`DEFAULT_LR`). What ``null`` means has changed (AdamW 3e-3 -> 5e-3 on
    2026-11-25), so sweep result rows store this form and compare runs by it."""
    optim = resolved.get("optim")
    if not isinstance(optim, dict) or optim.get("lr") is not None:
        return resolved
    return {**resolved, "optim": {**optim, "lr": effective_lr(optim.get("name", "adamw"), None, table)}}


def parse_set_options(options: list[str] | tuple[str, ...]) -> dict:
    """Turn ``["train.steps=100", "network.residual=true"]`` into a nested dict (values parsed as YAML)."""
    out: dict = {}
    for opt in options:
        if "=" not in opt:
            raise ValueError(f"--set expects key=value, got {opt!r}")
        key, raw = opt.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return out


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (only changes from the defaults) and apply ``key=value`` overrides."""
    data: dict = {}
    where = "config"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        where = str(path)
    if overrides:
        data = merge(data, parse_set_options(overrides))
    return config_from_dict(data, where)


def replace_config(cfg: Config, **sections) -> Config:
    """Return a copy with some fields of some sections replaced: ``replace_config(cfg, train={"steps": 5})``."""
    changes = {}
    for name, values in sections.items():
        changes[name] = dataclasses.replace(getattr(cfg, name), **values)
    return dataclasses.replace(cfg, **changes)
