"""Annotation kinds, the per-case container, and simulated annotations from full masks."""

from __future__ import annotations

from everylabel.annotations.kinds import DENSE_KINDS, TAG_UNKNOWN, Annotations, Kind
from everylabel.annotations.protocol import Protocol, Step, case_rng, parse_protocol, simulate_manifest
from everylabel.annotations.simulate import SIMULATORS, get_simulator, merge_annotations, replay, simulate
from everylabel.annotations.simulate_coords import simulate_boxes, simulate_points, simulate_slice_boxes, simulate_tags
from everylabel.annotations.simulate_masks import simulate_mask, simulate_partial, simulate_sparse, simulate_unlabelled
from everylabel.annotations.simulate_noise import (
    elastic_control_points,
    elastic_displacement,
    simulate_crop,
    simulate_dilation,
    simulate_elastic,
    simulate_erosion,
    simulate_shift,
    warp_labels,
)
from everylabel.annotations.simulate_scribbles import simulate_scribbles

__all__ = [
    "DENSE_KINDS",
    "SIMULATORS",
    "TAG_UNKNOWN",
    "Annotations",
    "Kind",
    "Protocol",
    "Step",
    "case_rng",
    "elastic_control_points",
    "elastic_displacement",
    "get_simulator",
    "merge_annotations",
    "parse_protocol",
    "replay",
    "simulate",
    "simulate_boxes",
    "simulate_crop",
    "simulate_dilation",
    "simulate_elastic",
    "simulate_erosion",
    "simulate_manifest",
    "simulate_mask",
    "simulate_partial",
    "simulate_points",
    "simulate_scribbles",
    "simulate_shift",
    "simulate_slice_boxes",
    "simulate_sparse",
    "simulate_tags",
    "simulate_unlabelled",
    "warp_labels",
]
