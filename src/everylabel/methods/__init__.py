"""Supervision strategies: each a Method returning a dict of loss terms; picked by name from ``METHODS``."""

from __future__ import annotations

from everylabel.methods.base import Method, deep_supervision_weights
from everylabel.methods.mean_taught import MeanTaughtDeepSupervision
from everylabel.methods.mean_teacher import MeanTeacher
from everylabel.methods.multilabel import MultilabelDeepSupervision
from everylabel.methods.self_training import SelfTraining
from everylabel.methods.strong_augment import StrongAugment
from everylabel.methods.supervised import Supervised
from everylabel.methods.weak import WeakSupervision

METHODS: dict[str, type[Method]] = {
    "supervised": Supervised,
    "mean_teacher": MeanTeacher,
    "weak": WeakSupervision,
    "self_training": SelfTraining,
    "multilabel": MultilabelDeepSupervision,
    "mean_taught": MeanTaughtDeepSupervision,
}


def build_method(cfg, deep_supervision: bool = True) -> Method:
    """Build the method named in a :class:`~everylabel.experiments.config.MethodConfig`.

    Every method also gets the optional entropy term on unannotated pixels (``method.unlabelled_entropy_weight``,
    ``method.entropy_mode``; see :meth:`Method.configure_entropy`).
    """
    if cfg.name not in METHODS:
        raise ValueError(f"unknown method {cfg.name!r}; available: {', '.join(sorted(METHODS))}")
    return _build(cfg, deep_supervision).configure_entropy(cfg.unlabelled_entropy_weight, cfg.entropy_mode)


def _build(cfg, deep_supervision: bool) -> Method:
    if cfg.name in ("multilabel", "mean_taught"):
        multilabel = MultilabelDeepSupervision(deep_supervision=deep_supervision, box_min_scale=cfg.box_min_scale,
                                               point_radius=cfg.point_radius)
        if cfg.name == "multilabel":
            return multilabel
        return MeanTaughtDeepSupervision(multilabel, ema_decay=cfg.ema_decay, consistency_weight=cfg.consistency_weight,
                                         rampup_fraction=cfg.rampup_fraction, noise_std=cfg.noise_std,
                                         infer_with=cfg.infer_with)
    supervised = Supervised(dice_weight=cfg.dice_weight, ce_weight=cfg.ce_weight,
                            include_background=cfg.include_background, batch_dice=cfg.batch_dice,
                            deep_supervision=deep_supervision, cldice_weight=cfg.cldice_weight,
                            cldice_iterations=cfg.cldice_iterations)
    if cfg.name == "supervised":
        return supervised
    if cfg.name == "mean_teacher":
        return MeanTeacher(supervised, ema_decay=cfg.ema_decay, consistency=cfg.consistency,
                           consistency_weight=cfg.consistency_weight, rampup_fraction=cfg.rampup_fraction,
                           noise_std=cfg.noise_std, infer_with=cfg.infer_with)
    if cfg.name == "self_training":
        return SelfTraining(supervised, threshold=cfg.pseudo_threshold, unlabelled_weight=cfg.unlabelled_weight,
                            pseudo_labels_from=cfg.pseudo_labels_from, ema_decay=cfg.ema_decay,
                            infer_with=cfg.infer_with, strong=StrongAugment(cutout_size=cfg.strong_cutout))
    if cfg.name == "weak":
        return WeakSupervision(supervised, partial_weight=cfg.partial_weight, sparse_weight=cfg.sparse_weight,
                               crf_weight=cfg.crf_weight, crf_sigma_xy=cfg.crf_sigma_xy,
                               crf_sigma_intensity=cfg.crf_sigma_intensity, box_weight=cfg.box_weight,
                               box_size_bounds=cfg.box_size_bounds,
                               tag_weight=cfg.tag_weight, tag_pool=cfg.tag_pool, entropy_weight=cfg.entropy_weight,
                               point_radius=cfg.point_radius)
    return METHODS[cfg.name]()


__all__ = ["METHODS", "MeanTaughtDeepSupervision", "MeanTeacher", "Method", "MultilabelDeepSupervision",
           "SelfTraining", "StrongAugment", "Supervised", "WeakSupervision", "build_method",
           "deep_supervision_weights"]
