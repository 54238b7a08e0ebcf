"""Supervision strategies: each a Method returning a dict of loss terms; picked by name from ``METHODS``."""

from __future__ import annotations

from everylabel.methods.base import Method, deep_supervision_weights
from everylabel.methods.mean_teacher import MeanTeacher
from everylabel.methods.supervised import Supervised

METHODS: dict[str, type[Method]] = {
    "supervised": Supervised,
    "mean_teacher": MeanTeacher,
}


def build_method(cfg, deep_supervision: bool = True) -> Method:
    """Build the method named in a :class:`~everylabel.experiments.config.MethodConfig`."""
    if cfg.name not in METHODS:
        raise ValueError(f"unknown method {cfg.name!r}; available: {', '.join(sorted(METHODS))}")
    supervised = Supervised(dice_weight=cfg.dice_weight, ce_weight=cfg.ce_weight,
                            include_background=cfg.include_background, batch_dice=cfg.batch_dice,
                            deep_supervision=deep_supervision)
    if cfg.name == "supervised":
        return supervised
    if cfg.name == "mean_teacher":
        return MeanTeacher(supervised, ema_decay=cfg.ema_decay, consistency=cfg.consistency,
                           consistency_weight=cfg.consistency_weight, rampup_fraction=cfg.rampup_fraction,
                           noise_std=cfg.noise_std, infer_with=cfg.infer_with)
    return METHODS[cfg.name]()


__all__ = ["METHODS", "MeanTeacher", "Method", "Supervised", "build_method", "deep_supervision_weights"]
