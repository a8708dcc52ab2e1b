"""Stage 4 as plain functions (``monet_evaluate`` and ``monet_inspect`` only parse arguments and print)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from monetpipe.evaluation.evaluator import evaluate_folders, select_cases
from monetpipe.evaluation.inspection import inspect_models
from monetpipe.paths import MonetPaths

__all__ = ["evaluate_prediction_folder", "inspect_models", "task_leaderboard"]


def evaluate_prediction_folder(
    ref_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    labels: Iterable[int] | None = None,
    output_file: str | os.PathLike | None = None,
    num_processes: int = 2,
    only_predicted: bool = False,
    split_file: str | os.PathLike | None = None,
    fold: int = 0,
) -> dict:
    """``monet_evaluate -ref -pred``: score ``pred_dir`` against ``ref_dir`` into ``summary.json``.

    Args:
        only_predicted: score only the cases that have a prediction (others are not reported missing).
        split_file: score only fold ``fold``'s ``val`` cases of this ``splits_final.json``.
        Others: as :func:`monetpipe.evaluation.evaluator.evaluate_folders`.
    """
    cases = select_cases(ref_dir, pred_dir, only_predicted, split_file, fold)
    return evaluate_folders(
        ref_dir, pred_dir, labels=labels, output_file=output_file, num_processes=num_processes, case_ids=cases
    )


def task_leaderboard(
    task: str | os.PathLike,
    paths: MonetPaths | None = None,
    models: Sequence[str] | None = None,
    num_processes: int = 2,
    make_plots: bool = True,
):
    """``monet_evaluate -t``: every trained model/fold of a task -> ``leaderboard.csv`` (+ plots); the table."""
    from monetpipe.evaluation.leaderboard import build_leaderboard

    return build_leaderboard(task, paths or MonetPaths.from_env(), models, num_processes, make_plots)
