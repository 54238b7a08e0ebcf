"""Supervision strategies: each a Method returning a dict of loss terms; picked by name from ``METHODS``."""

from __future__ import annotations

from everylabel.methods.base import Method, deep_supervision_weights
from everylabel.methods.supervised import Supervised

METHODS: dict[str, type[Method]] = {
    "supervised": Supervised,
}


def build_method(cfg, deep_supervision: bool = True) -> Method:
    """Build the method named in a :class:`~everylabel.experiments.config.MethodConfig`."""
    if cfg.name not in METHODS:
        raise ValueError(f"unknown method {cfg.name!r}; available: {', '.join(sorted(METHODS))}")
    if cfg.name == "supervised":
        return Supervised(dice_weight=cfg.dice_weight, ce_weight=cfg.ce_weight,
                          include_background=cfg.include_background, batch_dice=cfg.batch_dice,
                          deep_supervision=deep_supervision)
    return METHODS[cfg.name]()


__all__ = ["METHODS", "Method", "Supervised", "build_method", "deep_supervision_weights"]
