"""Evaluation: metrics (pure functions), folder evaluation (``summary.json``), leaderboard and plots.

The names below are imported lazily (they pull in SciPy and pandas), so ``monet_evaluate --help`` and
``monet_inspect --help`` stay instant.
"""

from __future__ import annotations

_METRICS = (
    "assd",
    "binary_metrics",
    "compute_label_metrics",
    "confusion",
    "dice",
    "hausdorff",
    "hd95",
    "iou",
    "precision",
    "recall",
)

__all__ = sorted((*_METRICS, "evaluate_folders"))


def __getattr__(name: str):
    if name == "evaluate_folders":
        from monetpipe.evaluation.evaluator import evaluate_folders

        return evaluate_folders
    if name in _METRICS:
        from monetpipe.evaluation import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
