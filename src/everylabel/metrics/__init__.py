"""Segmentation metrics: ``compute_*`` functions returning (B, C), cumulative classes, per-case records.

Undefined values (e.g. Dice of two empty masks) are NaN everywhere; summaries exclude them from means and count
them per metric.
"""

from __future__ import annotations

from everylabel.metrics.compute import DEFAULT_METRICS, METRIC_NAMES, compute_metrics, empty_status
from everylabel.metrics.cumulative import (
    REDUCTIONS,
    CumulativeMetric,
    CumulativeOverlap,
    DiceMetric,
    MeanIoU,
    reduce_metric,
)
from everylabel.metrics.distances import (
    HausdorffDistanceMetric,
    SurfaceDiceMetric,
    SurfaceDistanceMetric,
    compute_average_surface_distance,
    compute_hausdorff_distance,
    compute_surface_dice,
    compute_surface_metrics,
)
from everylabel.metrics.lesion import LESION_METRICS, box_iou, lesion_detection, lesion_metrics
from everylabel.metrics.overlap import (
    OVERLAP_METRICS,
    Confusion,
    compute_accuracy,
    compute_confusion,
    compute_dice,
    compute_iou,
    compute_kappa,
    compute_overlap_metric,
    compute_precision,
    compute_recall,
    compute_specificity,
    compute_volume_similarity,
    to_one_hot_mask,
)
from everylabel.metrics.records import (
    RECORD_KEYS,
    case_records,
    summarize,
    summary_markdown,
    write_case_csv,
    write_summary_json,
)
from everylabel.metrics.surface import (
    CONVENTIONS,
    SURFACE_METRICS,
    SurfaceDistances,
    compute_surface_distances,
    surface_metrics,
)
from everylabel.metrics.topology import (
    TOPOLOGY_METRICS,
    betti_numbers,
    cldice,
    euler_characteristic,
    topology_metrics,
)

__all__ = [
    "CONVENTIONS",
    "DEFAULT_METRICS",
    "LESION_METRICS",
    "METRIC_NAMES",
    "OVERLAP_METRICS",
    "RECORD_KEYS",
    "REDUCTIONS",
    "SURFACE_METRICS",
    "TOPOLOGY_METRICS",
    "Confusion",
    "CumulativeMetric",
    "CumulativeOverlap",
    "DiceMetric",
    "HausdorffDistanceMetric",
    "MeanIoU",
    "SurfaceDiceMetric",
    "SurfaceDistanceMetric",
    "SurfaceDistances",
    "betti_numbers",
    "box_iou",
    "case_records",
    "cldice",
    "compute_accuracy",
    "compute_average_surface_distance",
    "compute_confusion",
    "compute_dice",
    "compute_hausdorff_distance",
    "compute_iou",
    "compute_kappa",
    "compute_metrics",
    "compute_overlap_metric",
    "compute_precision",
    "compute_recall",
    "compute_specificity",
    "compute_surface_dice",
    "compute_surface_distances",
    "compute_surface_metrics",
    "compute_volume_similarity",
    "empty_status",
    "euler_characteristic",
    "lesion_detection",
    "lesion_metrics",
    "reduce_metric",
    "summarize",
    "summary_markdown",
    "surface_metrics",
    "to_one_hot_mask",
    "topology_metrics",
    "write_case_csv",
    "write_summary_json",
]
