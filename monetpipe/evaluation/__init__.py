"""Evaluation: metrics (pure functions), folder evaluation (``summary.json``), leaderboard and plots."""

from monetpipe.evaluation.evaluator import evaluate_folders
from monetpipe.evaluation.metrics import (
    assd,
    binary_metrics,
    compute_label_metrics,
    confusion,
    dice,
    hausdorff,
    hd95,
    iou,
    precision,
    recall,
)

__all__ = [
    "assd",
    "binary_metrics",
    "compute_label_metrics",
    "confusion",
    "dice",
    "evaluate_folders",
    "hausdorff",
    "hd95",
    "iou",
    "precision",
    "recall",
]
